use clap::Parser;

fn main() {
    let cli = llamactl::cli::Cli::parse();
    let code = match llamactl::commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, with every context joined: "reading X: tensor Y: what is wrong".
            eprintln!("error: {}", llamactl::error::one_line(&err));
            llamactl::error::exit_code(&err)
        }
    };
    std::process::exit(code);
}
