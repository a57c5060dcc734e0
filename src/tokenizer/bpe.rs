//! tiktoken-format byte-level BPE: loading `tokenizer.model` and merging pieces into ranks.
//!
//! In tiktoken a token's rank is also its id, and merging repeatedly joins the adjacent pair whose
//! joined bytes have the lowest rank (leftmost on ties). Any implementation of that rule gives the
//! same ids; this one scans linearly for short pieces and uses a heap for long ones, so a
//! 25,000-char run costs n·log n instead of n².
use anyhow::{bail, Context, Result};
use base64::Engine;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

/// Pieces longer than this many bytes are merged with the heap.
const HEAP_THRESHOLD: usize = 128;

/// Tokens of up to 15 bytes (nearly all of them) are looked up by a packed integer key, which
/// hashes in two multiplications and compares without touching the heap.
const SHORT: usize = 15;

#[inline]
fn pack(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a[..b.len()].copy_from_slice(b);
    a[15] = b.len() as u8;
    u128::from_le_bytes(a)
}

pub(super) struct Bpe {
    short: FxHashMap<u128, u32>,
    long: FxHashMap<Vec<u8>, u32>,
    /// Token bytes by rank.
    tokens: Vec<Vec<u8>>,
    byte_rank: [u32; 256],
}

impl Bpe {
    /// Parses tiktoken text: `base64(bytes) rank` per line; blank lines are skipped.
    /// The ranks must be exactly 0..n and every single byte must be a token, otherwise some
    /// inputs could not be encoded.
    pub(super) fn parse(data: &[u8], path: &Path) -> Result<Bpe> {
        let text = std::str::from_utf8(data)
            .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
        let mut short: FxHashMap<u128, u32> = FxHashMap::default();
        let mut long: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
        short.reserve(130_000);
        for (index, line) in text.lines().enumerate() {
            let lineno = index + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let where_ = || format!("{}: line {lineno}", path.display());
            let mut fields = line.split_whitespace();
            let (Some(tok), Some(rank), None) = (fields.next(), fields.next(), fields.next())
            else {
                bail!(
                    "{}: expected `<base64 token> <rank>`, got {:?}",
                    where_(),
                    truncate(line)
                );
            };
            let bytes = b64.decode(tok).with_context(|| {
                format!("{}: token {:?} is not base64", where_(), truncate(tok))
            })?;
            if bytes.is_empty() {
                bail!("{}: empty token", where_());
            }
            let rank: u32 = rank.parse().map_err(|_| {
                anyhow::anyhow!("{}: rank {:?} is not a number", where_(), truncate(rank))
            })?;
            if rank as usize >= 10_000_000 {
                bail!("{}: rank {rank} is implausibly large", where_());
            }
            let prev = if bytes.len() <= SHORT {
                short.insert(pack(&bytes), rank)
            } else {
                long.insert(bytes.clone(), rank)
            };
            if let Some(prev) = prev {
                bail!(
                    "{}: token {tok} appears twice (ranks {prev} and {rank})",
                    where_()
                );
            }
            let slot = rank as usize;
            if by_rank.len() <= slot {
                by_rank.resize(slot + 1, None);
            }
            if by_rank[slot].is_some() {
                bail!("{}: duplicate rank {rank}", where_());
            }
            by_rank[slot] = Some(bytes);
        }
        if by_rank.is_empty() {
            bail!("{}: no tokens (empty file?)", path.display());
        }
        let mut tokens = Vec::with_capacity(by_rank.len());
        for (rank, t) in by_rank.into_iter().enumerate() {
            match t {
                Some(t) => tokens.push(t),
                None => bail!(
                    "{}: rank {rank} is missing (ranks must run 0..{} without gaps)",
                    path.display(),
                    tokens.capacity()
                ),
            }
        }
        let mut byte_rank = [0u32; 256];
        for (b, slot) in byte_rank.iter_mut().enumerate() {
            *slot = *short.get(&pack(&[b as u8])).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: byte 0x{b:02x} has no token, so some text could not be encoded",
                    path.display()
                )
            })?;
        }
        Ok(Bpe {
            short,
            long,
            tokens,
            byte_rank,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(super) fn token_bytes(&self, rank: u32) -> Option<&[u8]> {
        self.tokens.get(rank as usize).map(|t| t.as_slice())
    }

    #[inline]
    pub(super) fn rank(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() <= SHORT {
            self.short.get(&pack(bytes)).copied()
        } else {
            self.long.get(bytes).copied()
        }
    }

    /// All tokens in rank order.
    pub(super) fn tokens(&self) -> &[Vec<u8>] {
        &self.tokens
    }

    /// Appends the ids of one pre-split piece.
    #[inline]
    pub(super) fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() == 1 {
            out.push(self.byte_rank[piece[0] as usize]);
        } else if let Some(r) = self.rank(piece) {
            out.push(r);
        } else if piece.len() <= HEAP_THRESHOLD {
            self.merge_linear(piece, out);
        } else {
            self.merge_heap(piece, out);
        }
    }

    #[inline]
    fn pair_rank(&self, piece: &[u8], start: usize, end: usize) -> u32 {
        self.rank(&piece[start..end]).unwrap_or(u32::MAX)
    }

    fn merge_linear(&self, piece: &[u8], out: &mut Vec<u32>) {
        // parts[i] = (start byte, id of the part, rank of joining it with the next part).
        let n = piece.len();
        let mut parts: Vec<(usize, u32, u32)> = (0..n)
            .map(|i| {
                let join = if i + 2 <= n {
                    self.pair_rank(piece, i, i + 2)
                } else {
                    u32::MAX
                };
                (i, self.byte_rank[piece[i] as usize], join)
            })
            .collect();
        loop {
            let mut best = u32::MAX;
            let mut at = 0;
            for (i, p) in parts.iter().enumerate() {
                if p.2 < best {
                    best = p.2;
                    at = i;
                }
            }
            if best == u32::MAX {
                break;
            }
            parts[at].1 = best;
            parts.remove(at + 1);
            let end_of = |parts: &Vec<(usize, u32, u32)>, i: usize| parts.get(i).map_or(n, |p| p.0);
            parts[at].2 = if at + 1 < parts.len() {
                self.pair_rank(piece, parts[at].0, end_of(&parts, at + 2))
            } else {
                u32::MAX
            };
            if at > 0 {
                parts[at - 1].2 = self.pair_rank(piece, parts[at - 1].0, end_of(&parts, at + 1));
            }
        }
        out.extend(parts.iter().map(|p| p.1));
    }

    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        // Parts are indexed by their start byte; `next[i]` is the start of the following part
        // (n at the end), `prev[i]` the start of the preceding one. A heap entry
        // (rank, left start, end of the pair) is stale once the left part died or its pair changed.
        let n = piece.len();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut id: Vec<u32> = piece.iter().map(|&b| self.byte_rank[b as usize]).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n.saturating_sub(1) {
            let r = self.pair_rank(piece, i, i + 2);
            if r != u32::MAX {
                heap.push(Reverse((r, i, i + 2)));
            }
        }
        while let Some(Reverse((r, i, end))) = heap.pop() {
            if !alive[i] || next[i] >= n || next[next[i]] != end {
                continue;
            }
            let j = next[i];
            alive[j] = false;
            id[i] = r;
            next[i] = end;
            if end < n {
                prev[end] = i;
                let after = next[end];
                let r2 = self.pair_rank(piece, i, after);
                if r2 != u32::MAX {
                    heap.push(Reverse((r2, i, after)));
                }
            }
            if i > 0 {
                let p = prev[i];
                let r3 = self.pair_rank(piece, p, end);
                if r3 != u32::MAX {
                    heap.push(Reverse((r3, p, end)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            out.push(id[i]);
            i = next[i];
        }
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(lines: &str) -> Result<Bpe> {
        Bpe::parse(lines.as_bytes(), Path::new("t.model"))
    }

    fn tiny() -> Bpe {
        // All 256 bytes, then merges "ab", "abc", "aa", "aaa".
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut s = String::new();
        for b in 0..=255u8 {
            s.push_str(&format!("{} {}\n", b64.encode([b]), b));
        }
        for (i, t) in ["ab", "bc", "abc", "aa", "aaaa"].iter().enumerate() {
            s.push_str(&format!("{} {}\n", b64.encode(t), 256 + i));
        }
        model(&s).unwrap()
    }

    #[test]
    fn heap_and_linear_agree() {
        let bpe = tiny();
        let mut state = 7u64;
        for len in 2..400 {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    b"abcx"[(state >> 60) as usize % 4]
                })
                .collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            bpe.merge_linear(&piece, &mut a);
            bpe.merge_heap(&piece, &mut b);
            assert_eq!(a, b, "{}", String::from_utf8_lossy(&piece));
        }
    }

    #[test]
    fn leftmost_lowest_rank_first() {
        let bpe = tiny();
        let mut out = Vec::new();
        // "aaa": "aa" joins at the left first, leaving "aa" + "a".
        bpe.merge_linear(b"aaa", &mut out);
        assert_eq!(out, vec![259, 97]);
        out.clear();
        // "abc": "ab" (256) beats "bc" (257), then "ab"+"c" is "abc" (258).
        bpe.encode_piece(b"abcab", &mut out);
        assert_eq!(out, vec![258, 256]);
    }

    #[test]
    fn bad_files_name_the_line() {
        let err = |s: &str| format!("{:#}", model(s).err().unwrap());
        assert!(err("QQ== 0\nnot-a-pair\n").contains("t.model: line 2: expected"));
        assert!(err("QQ== x\n").contains("line 1: rank \"x\" is not a number"));
        assert!(err("@@@ 0\n").contains("line 1: token \"@@@\" is not base64"));
        assert!(err("QQ== 0\nQg== 0\n").contains("line 2: duplicate rank 0"));
        assert!(err("QQ== 0\nQQ== 1\n").contains("line 2: token QQ== appears twice"));
        assert!(err("QQ== 0\nQg== 2\n").contains("rank 1 is missing"));
        assert!(err("QQ== 0\n").contains("byte 0x00 has no token"));
        assert!(err("\n\n").contains("no tokens"));
        assert!(err("QQ== 0 extra\n").contains("line 1: expected"));
    }
}
