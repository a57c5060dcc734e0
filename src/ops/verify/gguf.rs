//! `verify FILE.gguf`: the header parses; every tensor has a valid type and size, an aligned
//! offset, no overlap with another, and its bytes inside the file. A GGUF file carries no
//! checksum, so that is all there is to check.
use super::{CheckState, Kind, Report};
use crate::formats::gguf::GgufFile;
use crate::human::human_bytes;
use anyhow::Result;
use std::path::Path;

/// The report of the GGUF file at `path`: one check, `gguf`, and a problem per layout fault.
/// Err only when the file cannot be opened as GGUF at all.
pub(super) fn gguf_report(path: &Path) -> Result<Report> {
    let g = GgufFile::open(path)?;
    let mut r = Report::new("gguf", path);
    for detail in g.problems() {
        r.problem(Kind::CorruptShard, None, None, detail);
    }
    r.ok = r.problems.is_empty();
    let detail = format!(
        "GGUF v{}: {} metadata keys, {} tensors, data at byte {}, {}",
        g.version,
        g.kvs.len(),
        g.tensors.len(),
        g.data_offset,
        human_bytes(g.file_len)
    );
    let status = if r.ok {
        CheckState::Ok
    } else {
        CheckState::Failed
    };
    r.check("gguf", status, detail);
    Ok(r)
}
