//! `llamactl verify DIR|FILE.gguf [--json] [--deep] [--no-md5] [--jobs N]`: the checks live in
//! `ops::verify`; this renders them as a table, JSON, and GitHub Actions annotations.
use super::reporters::{FinishLines, ProgressReporter, Shown};
use crate::cli::VerifyArgs;
use crate::formats::gguf;
use crate::ops::verify::{self, CheckState, Options, Report};
use crate::store::{resolve, resolve::Want};
use anyhow::{bail, Result};

pub(crate) fn run(args: &VerifyArgs) -> Result<i32> {
    let args = &VerifyArgs {
        dir: resolve::model_path(&args.dir, Want::Any)?,
        ..args.clone()
    };
    if args.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }
    if args.dir.is_file() && !gguf::is_gguf(&args.dir) {
        bail!(
            "{}: {}",
            args.dir.display(),
            crate::formats::sniff::refusal(&args.dir, "a model directory or a GGUF file")
        );
    }
    super::note_stale(&crate::output::stale_temps_of(&args.dir));
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = Options {
        md5: !args.no_md5,
        deep: args.deep,
        jobs,
    };
    let mut progress =
        ProgressReporter::stderr(Shown::new("verify").finish_lines(FinishLines::Long));
    let report = verify::verify(&args.dir, &opts, &progress)?;
    progress.finish();
    let github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if github {
        // Annotations belong on stdout, but not inside a JSON document someone pipes to jq; the
        // runner reads workflow commands from stderr too.
        for line in annotations(&report) {
            if args.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
    Ok(if report.ok { 0 } else { 1 })
}

fn print_table(r: &Report) {
    println!("verify {} ({})", r.dir.display(), r.format);
    let width = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(5);
    for c in &r.checks {
        let status = match c.status {
            CheckState::Ok => "ok",
            CheckState::Failed => "FAILED",
            CheckState::Skipped => "skipped",
        };
        println!("  {:width$}  {status:7}  {}", c.name, c.detail);
    }
    if r.problems.is_empty() {
        println!("result: OK, no problems");
        return;
    }
    println!(
        "result: FAILED, {} problem{}",
        r.problems.len(),
        if r.problems.len() == 1 { "" } else { "s" }
    );
    let kw = r
        .problems
        .iter()
        .map(|p| p.kind.as_str().len())
        .max()
        .unwrap_or(4);
    for p in &r.problems {
        println!("  {:kw$}  {}", p.kind.as_str(), p.detail);
    }
}

/// GitHub Actions workflow commands: `::error file=PATH,title=...::MESSAGE`.
fn annotations(r: &Report) -> Vec<String> {
    r.problems
        .iter()
        .map(|p| {
            let file = p
                .file
                .as_ref()
                .map(|f| r.dir.join(f))
                .unwrap_or_else(|| r.dir.clone());
            format!(
                "::error file={},title={}::{}",
                escape_property(&file.display().to_string()),
                escape_property(&format!("llamactl verify: {}", p.kind.as_str())),
                escape_data(&p.detail)
            )
        })
        .collect()
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_escaping() {
        assert_eq!(escape_data("50%\nnext"), "50%25%0Anext");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
    }
}
