//! The digest computed while the bytes stream in: md5 (Meta's checklists) or sha256 (the Hub's
//! LFS files), on a thread of its own so hashing overlaps the network and the disk.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Size of one read from the network or the disk, and of one buffer handed to the hasher.
pub(crate) const BUF: usize = 1 << 20;

/// Which digest to compute while the bytes stream in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    None,
    Md5,
    Sha256,
}

impl HashKind {
    /// The digest's name in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HashKind::None => "digest",
            HashKind::Md5 => "md5",
            HashKind::Sha256 => "sha256",
        }
    }
}

pub(crate) enum Hasher {
    None,
    Md5(crate::formats::md5::Md5),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub(crate) fn new(kind: HashKind) -> Self {
        match kind {
            HashKind::None => Hasher::None,
            HashKind::Md5 => Hasher::Md5(crate::formats::md5::Md5::new()),
            HashKind::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
        }
    }

    /// Lower-case hex digest (`None` for [`HashKind::None`]).
    pub(crate) fn finish(self) -> Option<String> {
        match self {
            Hasher::None => None,
            Hasher::Md5(h) => Some(hex::encode(h.finalize())),
            Hasher::Sha256(h) => Some(hex::encode(sha2::Digest::finalize(h))),
        }
    }
}

/// A hasher on its own thread, so hashing overlaps the network and the disk. Buffers are hashed in
/// the order they are submitted, then handed back for reuse, so bytes are never copied on their way
/// to the hasher; `reset` starts over (the file was restarted from byte 0).
pub(crate) struct HashPipe {
    tx: Option<std::sync::mpsc::SyncSender<HashMsg>>,
    recycled: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
    /// Without a hasher, the one buffer the reader keeps reusing.
    spare: Option<Vec<u8>>,
}

enum HashMsg {
    /// A buffer and how many of its bytes to hash.
    Data(Vec<u8>, usize),
    Reset,
}

impl HashPipe {
    pub(crate) fn new(kind: HashKind) -> Self {
        if kind == HashKind::None {
            return Self {
                tx: None,
                recycled: None,
                thread: None,
                spare: None,
            };
        }
        // Bounded, so a slow hasher slows the download instead of buffering the file in memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashMsg>(4);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = std::thread::spawn(move || {
            let mut h = Hasher::new(kind);
            for msg in rx {
                match msg {
                    HashMsg::Data(buf, n) => {
                        h.update(&buf[..n]);
                        let _ = back_tx.send(buf);
                    }
                    HashMsg::Reset => h = Hasher::new(kind),
                }
            }
            h.finish()
        });
        Self {
            tx: Some(tx),
            recycled: Some(back_rx),
            thread: Some(thread),
            spare: None,
        }
    }

    /// A buffer of `BUF` bytes to read into (recycled when one is free).
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .take()
            .or_else(|| self.recycled.as_ref().and_then(|r| r.try_recv().ok()))
            .unwrap_or_else(|| vec![0u8; BUF])
    }

    /// Hash the first `n` bytes of `buf` (after everything submitted before).
    pub(crate) fn submit(&mut self, buf: Vec<u8>, n: usize) {
        match &self.tx {
            Some(tx) if n > 0 => {
                let _ = tx.send(HashMsg::Data(buf, n));
            }
            _ => self.spare = Some(buf),
        }
    }

    pub(crate) fn reset(&mut self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(HashMsg::Reset);
        }
    }

    pub(crate) fn finish(mut self) -> Option<String> {
        self.tx.take();
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }

    /// Hash the first `len` bytes of `file` (a part kept from an earlier run).
    pub(crate) fn prefix(&mut self, file: &mut File, len: u64) -> std::io::Result<()> {
        file.seek(SeekFrom::Start(0))?;
        let mut left = len;
        while left > 0 {
            let want = left.min(BUF as u64) as usize;
            let mut buf = self.buffer();
            file.read_exact(&mut buf[..want])?;
            self.submit(buf, want);
            left -= want as u64;
        }
        Ok(())
    }
}
