//! Temporary outputs named after the process that writes them, so that one left by a killed run
//! can be told from one still being written.
use crate::human::human_bytes;
use crate::util::parent_or_dot;
use std::path::{Path, PathBuf};

/// Who created a temporary output: a process id and that process's start time (clock ticks
/// after boot, field 22 of `/proc/PID/stat`). Together they never name two processes, so a
/// reused pid is not mistaken for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub pid: u32,
    start: u64,
}

impl Owner {
    pub(crate) fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    /// Still running. Without `/proc` (not Linux) nothing can be told, so every owner counts as
    /// alive and nothing is ever removed.
    fn alive(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        process_start(self.pid) == Some(self.start)
    }
}

/// Field 22 (`starttime`) of `/proc/PID/stat`; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The temp-dir name for `name`: `.NAME.tmp-PID-START-RANDOM`.
pub(crate) fn temp_name(name: &str, owner: Owner) -> String {
    format!(
        ".{name}.tmp-{}-{}-{:08x}",
        owner.pid,
        owner.start,
        rand::random::<u32>()
    )
}

/// The owner recorded in a temp-dir name, and the destination name it was for.
fn parse_temp_name(file_name: &str) -> Option<(&str, Owner)> {
    let body = file_name.strip_prefix('.')?;
    let at = body.rfind(".tmp-")?;
    let mut parts = body[at + 5..].split('-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let rand = parts.next()?;
    if rand.is_empty() || parts.next().is_some() {
        return None;
    }
    Some((&body[..at], Owner { pid, start }))
}

/// A temporary output left by a run that was killed (its owner is gone).
#[derive(Debug, Clone)]
pub(crate) struct StaleTemp {
    pub path: PathBuf,
    pub bytes: u64,
    pub owner: Owner,
}

impl std::fmt::Display for StaleTemp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, left by process {}, which is gone)",
            self.path.display(),
            human_bytes(self.bytes),
            self.owner.pid
        )
    }
}

/// Temporary outputs in `dir` whose owner is gone; only those for destination `name` if given.
pub(crate) fn stale_temps(dir: &Path, name: Option<&str>) -> Vec<StaleTemp> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<StaleTemp> = entries
        .flatten()
        .filter_map(|e| {
            let file_name = e.file_name();
            let (for_name, owner) = parse_temp_name(file_name.to_str()?)?;
            let wanted = name.is_none_or(|n| n == for_name);
            (wanted && e.file_type().ok()?.is_dir() && !owner.alive()).then(|| StaleTemp {
                path: e.path(),
                bytes: crate::signal::tree_bytes(&e.path()),
                owner,
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The stale temporary outputs of destination `dst` (beside it, in its parent).
pub(crate) fn stale_temps_of(dst: &Path) -> Vec<StaleTemp> {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned());
    stale_temps(parent_or_dot(dst), name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::AtomicDir;

    #[test]
    fn stale_temp_dirs_are_found_by_owner() {
        let root = tempfile::tempdir().unwrap();
        let dst = root.path().join("out");
        let live = AtomicDir::new(&dst, false).unwrap();
        let name = live
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(parse_temp_name(&name).unwrap(), ("out", Owner::current()));
        // A pid that cannot exist, and our own pid with a start time that is not ours.
        let dead = [
            root.path().join(".out.tmp-4294967295-1-aa"),
            root.path()
                .join(format!(".out.tmp-{}-1-bb", std::process::id())),
        ];
        for d in &dead {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("f"), b"12345").unwrap();
        }
        std::fs::create_dir(root.path().join(".other.tmp-4294967295-1-cc")).unwrap();
        let found = stale_temps_of(&dst);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|s| s.bytes == 5));
        assert_eq!(stale_temps(root.path(), None).len(), 3);
        let next = AtomicDir::new(&root.path().join("out"), false).unwrap();
        assert_eq!(next.removed_stale().len(), 2);
        assert!(dead.iter().all(|d| !d.exists()));
        assert!(live.path().exists(), "a live owner's temp dir stays");
    }
}
