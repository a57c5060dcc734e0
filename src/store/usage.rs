//! Bytes on disk with every inode counted once: a hard-linked copy of a shard, or a blob that
//! two revisions (or two snapshots' symlinks) share, is paid for once.
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

/// The inodes seen so far.
#[derive(Debug, Default, Clone)]
pub(super) struct Usage {
    seen: HashSet<(u64, u64)>,
    pub bytes: u64,
}

impl Usage {
    /// Count `meta`'s file; returns the bytes it added (0 when that inode was counted already).
    pub(super) fn add(&mut self, meta: &std::fs::Metadata) -> u64 {
        if self.seen.insert((meta.dev(), meta.ino())) {
            self.bytes += meta.len();
            meta.len()
        } else {
            0
        }
    }
}
