//! One module per subcommand. A command never imports another: shared logic lives a floor down
//! (checkpoint, formats, net, runner).
use crate::cli::{Cli, Command};
use anyhow::Result;

pub mod convert;
pub mod demo;
pub mod download;
pub mod inspect;
pub mod list;
pub mod pull;
pub mod reshard;
pub mod run;
pub mod tokenize;
pub mod verify;

/// Run the chosen command; `Ok(code)` is the exit code of a finished run (0 or 1).
pub fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Download(a) => download::run(&a),
        Command::Pull(a) => pull::run(&a),
        Command::Verify(a) => verify::run(&a),
        Command::Inspect(a) => inspect::run(&a),
        Command::Reshard(a) => reshard::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Tokenize(a) => tokenize::run(&a),
        Command::Run(a) => run::run(&a),
        Command::List(a) => list::run(&a),
        Command::Demo(a) => demo::run(&a),
    }
}
