//! checklist.chk: every listed file hashed (in parallel, pipelined), unlisted files reported.
use super::{CheckState, DirKind, FileState, FileStatus, Kind, Report};
use crate::checkpoint::{checklist, hashing};
use crate::error::one_line;
use crate::human::human_bytes;
use crate::progress::Reporter;
use anyhow::Result;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub(super) fn checksums(
    dir: &Path,
    kind: DirKind,
    jobs: usize,
    progress: &dyn Reporter,
    r: &mut Report,
) {
    let mark = r.problems.len();
    let chk = dir.join("checklist.chk");
    if !chk.exists() {
        if kind == DirKind::Meta {
            r.problem(
                Kind::NoChecklist,
                Some("checklist.chk"),
                None,
                "checklist.chk is missing; file integrity cannot be proven (pass --no-md5 to skip)"
                    .into(),
            );
            r.settle("checksums", mark, String::new());
        } else {
            r.check(
                "checksums",
                CheckState::Skipped,
                "no checklist.chk in this HF directory".into(),
            );
        }
        return;
    }
    let (entries, bad) = match checklist::read(&chk) {
        Ok(v) => v,
        Err(e) => {
            r.problem(Kind::Unreadable, Some("checklist.chk"), None, one_line(&e));
            r.settle("checksums", mark, String::new());
            return;
        }
    };
    for b in &bad {
        r.problem(
            Kind::BadChecklistLine,
            Some("checklist.chk"),
            None,
            format!("checklist.chk line {}: {}", b.line, b.reason),
        );
    }
    // Hash each listed file once, even if the checklist names it twice.
    let mut names: Vec<&str> = Vec::new();
    for e in &entries {
        if !names.contains(&e.name.as_str()) {
            names.push(&e.name);
        }
    }
    let total = hash_listed(dir, &entries, &names, jobs, progress, r);
    unlisted(dir, &names, r);
    let ok = r.files.iter().filter(|f| f.status == FileState::Ok).count();
    r.settle(
        "checksums",
        mark,
        format!("{ok} files, {} hashed", human_bytes(total)),
    );
}

/// Hash the listed files that exist and compare each with its checklist line; returns the bytes hashed.
fn hash_listed(
    dir: &Path,
    entries: &[checklist::Entry],
    names: &[&str],
    jobs: usize,
    progress: &dyn Reporter,
    r: &mut Report,
) -> u64 {
    let present: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| dir.join(n).is_file())
        .collect();
    let paths: Vec<PathBuf> = present.iter().map(|n| dir.join(n)).collect();
    let total: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let task = progress.task("md5", Some(total));
    let digests = hashing::md5_files(&paths, jobs, &|n| task.advance(n));
    task.finish();
    r.hashed_bytes = total;
    let mut got: HashMap<&str, Result<String>> = present.into_iter().zip(digests).collect();
    for e in entries {
        let (status, md5) = match got.get_mut(e.name.as_str()) {
            None => {
                r.problem(
                    Kind::MissingFile,
                    Some(&e.name),
                    None,
                    format!("{}: listed in checklist.chk but absent", e.name),
                );
                (FileState::Missing, None)
            }
            Some(Err(err)) => {
                r.problem(Kind::Unreadable, Some(&e.name), None, one_line(err));
                (FileState::Missing, None)
            }
            Some(Ok(d)) if *d == e.md5 => (FileState::Ok, Some(d.clone())),
            Some(Ok(d)) => {
                r.problem(
                    Kind::Md5Mismatch,
                    Some(&e.name),
                    None,
                    format!("{}: md5 is {d}, checklist.chk says {}", e.name, e.md5),
                );
                (FileState::Mismatch, Some(d.clone()))
            }
        };
        r.files.push(FileStatus {
            name: e.name.clone(),
            status,
            md5,
            expected: Some(e.md5.clone()),
        });
    }
    total
}

/// Files in the directory that the checklist does not name (hidden files aside).
fn unlisted(dir: &Path, names: &[&str], r: &mut Report) {
    let listed: BTreeSet<&str> = names.iter().copied().collect();
    let mut unlisted: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && n != "checklist.chk")
                .filter(|n| !listed.contains(n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    unlisted.sort();
    for n in unlisted {
        r.problem(
            Kind::UnlistedFile,
            Some(&n),
            None,
            format!("{n}: present but not listed in checklist.chk"),
        );
        r.files.push(FileStatus {
            name: n,
            status: FileState::Unlisted,
            md5: None,
            expected: None,
        });
    }
}
