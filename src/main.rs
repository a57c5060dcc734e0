//! The `llamactl` binary: install the signal handlers, parse the arguments, dispatch to the
//! command, and turn an error into one line on stderr and its exit code.
use clap::Parser;
use llamactl::signal;

fn main() {
    signal::install();
    let cli = llamactl::cli::Cli::parse();
    let code = match llamactl::commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // Whatever a loop reported while unwinding from a signal, the signal decides the end.
            if let Some(sig) = signal::received() {
                signal::finish(sig);
            }
            // One line, with every context joined: "reading X: tensor Y: what is wrong".
            eprintln!("error: {}", llamactl::error::one_line(&err));
            llamactl::error::exit_code(&err)
        }
    };
    std::process::exit(code);
}
