//! One module per subcommand: it resolves the flags, calls one operation and prints the result.
//! A command never imports another: shared logic lives a floor down (ops, store, checkpoint,
//! formats, net, runner).
use crate::cli::{Cli, Command};
use anyhow::Result;

pub(crate) mod convert;
pub(crate) mod demo;
pub(crate) mod download;
pub(crate) mod inspect;
pub(crate) mod list;
pub(crate) mod ls;
pub(crate) mod prune;
pub(crate) mod pull;
pub(crate) mod reporters;
pub(crate) mod reshard;
pub(crate) mod rm;
pub(crate) mod run;
pub(crate) mod show;
pub(crate) mod tokenize;
pub(crate) mod verify;

/// Say what [`crate::output::AtomicDir::new`] cleaned up from earlier, killed runs.
fn report_stale(out: &crate::output::AtomicDir) {
    for s in out.removed_stale() {
        eprintln!("removed a stale temporary output of an interrupted run: {s}");
    }
}

/// Mention temp dirs of killed runs that `verify` or `list` came across (on stderr).
fn note_stale(found: &[crate::output::StaleTemp]) {
    for s in found {
        eprintln!(
            "note: stale temporary output of an interrupted run: {s}; the next run to the same \
             destination removes it, or delete it"
        );
    }
}

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
        // Meta's `llama model list --downloaded` is `ls` here.
        Command::List(a) if a.downloaded => ls::run(&crate::cli::LsArgs {
            dir: vec![a.dir],
            json: a.json,
            revisions: false,
            verify: false,
        }),
        Command::List(a) => list::run(&a),
        Command::Ls(a) => ls::run(&a),
        Command::Show(a) => show::run(&a),
        Command::Rm(a) => rm::run(&a),
        Command::Prune(a) => prune::run(&a),
        Command::Demo(a) => demo::run(&a),
    }
}
