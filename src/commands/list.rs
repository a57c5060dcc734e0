//! `llamactl list` (see CLI.md): the catalog and what of it is under `--dir`.
//!
//! States per model: `absent`, `partial` (some files or `.part` files), `present` (every file there,
//! not known to be verified), `verified` (see `store::catalog` for the marker rule).
use crate::cli::ListArgs;
use crate::human::human_bytes;
use crate::store::catalog::{self, Source};
use anyhow::Result;

pub(crate) fn run(args: &ListArgs) -> Result<i32> {
    super::note_stale(&crate::output::stale_temps(&args.dir, None));
    let rows: Vec<_> = catalog::MODELS
        .iter()
        .map(|m| (m, catalog::local_status(m, &args.dir)))
        .collect();
    if args.json {
        let models: Vec<_> = rows
            .iter()
            .map(|(m, st)| {
                serde_json::json!({
                    "name": m.name,
                    "family": m.family,
                    "mp": m.shards,
                    "fp8": m.fp8,
                    "approx_bytes": m.approx_bytes,
                    "source": match m.source {
                        Source::MetaSignedUrl { remote_folder } =>
                            serde_json::json!({"kind": "meta-signed-url", "remote_folder": remote_folder, "hf_repo": m.hf_repo}),
                        Source::HuggingFace =>
                            serde_json::json!({"kind": "huggingface", "hf_repo": m.hf_repo, "subfolder": "original"}),
                    },
                    "local_folder": m.local_folder,
                    "status": st.state,
                    "files_present": st.files_present,
                    "files_expected": st.files_expected,
                    "bytes_on_disk": st.bytes_on_disk,
                })
            })
            .collect();
        let doc = serde_json::json!({"dir": args.dir.display().to_string(), "models": models});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    let nw = rows.iter().map(|(m, _)| m.name.len()).max().unwrap_or(4);
    let fw = rows
        .iter()
        .map(|(m, _)| m.local_folder.len())
        .max()
        .unwrap_or(6);
    println!(
        "{:<nw$} {:<9} {:>3} {:>11}  {:<fw$} {:<13} source",
        "name", "family", "mp", "size", "folder", "local"
    );
    for (m, st) in &rows {
        let local = match st.state {
            "partial" => format!("partial {}/{}", st.files_present, st.files_expected),
            s => s.to_string(),
        };
        println!(
            "{:<nw$} {:<9} {:>3} {:>11}  {:<fw$} {:<13} {}",
            m.name,
            m.family,
            m.shards,
            format!("~{}", human_bytes(m.approx_bytes)),
            m.local_folder,
            local,
            m.source_text()
        );
    }
    eprintln!("local copies looked for under {}", args.dir.display());
    Ok(0)
}
