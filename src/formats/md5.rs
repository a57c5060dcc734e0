//! MD5 at the speed of GNU `md5sum`.
//!
//! The `md-5` crate (soft or `asm` feature) hashes about 15-20% slower than coreutils here: LLVM
//! folds each round's constant into the *last* addition, which puts it on the critical dependency
//! chain. [`Md5`] adds message word and constant to the accumulator before the round function is
//! known, keeping the chain at 4-5 operations per step (the classic fast-MD5 schedule); tests
//! cross-check it against the crate. md5 is the slowest step of every streamed copy (checklists
//! are md5), so all of llamactl hashes with this one implementation.

const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

// `t` = a + message word + constant, computed off the critical path; only the round function of
// the newest word `b` and the rotate remain on it. G splits its OR into two additions (the halves
// have no bits in common) so `!d & c` is ready before `b` is.
#[inline(always)]
fn step_f(t: u32, b: u32, c: u32, d: u32, s: u32) -> u32 {
    t.wrapping_add(d ^ (b & (c ^ d)))
        .rotate_left(s)
        .wrapping_add(b)
}
#[inline(always)]
fn step_g(t: u32, b: u32, c: u32, d: u32, s: u32) -> u32 {
    t.wrapping_add(!d & c)
        .wrapping_add(d & b)
        .rotate_left(s)
        .wrapping_add(b)
}
#[inline(always)]
fn step_h(t: u32, b: u32, c: u32, d: u32, s: u32) -> u32 {
    t.wrapping_add(b ^ c ^ d).rotate_left(s).wrapping_add(b)
}
#[inline(always)]
fn step_i(t: u32, b: u32, c: u32, d: u32, s: u32) -> u32 {
    t.wrapping_add(c ^ (b | !d)).rotate_left(s).wrapping_add(b)
}

/// Run the compression function over whole 64-byte blocks.
fn compress(state: &mut [u32; 4], blocks: &[u8]) {
    // Reading the constants through an opaque reference stops LLVM from folding them into the
    // final addition of each step (see the module comment).
    let k: &[u32; 64] = std::hint::black_box(&K);
    let [mut a, mut b, mut c, mut d] = *state;
    for blk in blocks.chunks_exact(64) {
        let mut x = [0u32; 16];
        for (w, bytes) in x.iter_mut().zip(blk.chunks_exact(4)) {
            *w = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let (a0, b0, c0, d0) = (a, b, c, d);
        macro_rules! four {
            ($step:ident, $i:expr, [$s0:expr, $s1:expr, $s2:expr, $s3:expr], [$m0:expr, $m1:expr, $m2:expr, $m3:expr]) => {
                a = $step(a.wrapping_add(x[$m0]).wrapping_add(k[$i]), b, c, d, $s0);
                d = $step(d.wrapping_add(x[$m1]).wrapping_add(k[$i + 1]), a, b, c, $s1);
                c = $step(c.wrapping_add(x[$m2]).wrapping_add(k[$i + 2]), d, a, b, $s2);
                b = $step(b.wrapping_add(x[$m3]).wrapping_add(k[$i + 3]), c, d, a, $s3);
            };
        }
        four!(step_f, 0, [7, 12, 17, 22], [0, 1, 2, 3]);
        four!(step_f, 4, [7, 12, 17, 22], [4, 5, 6, 7]);
        four!(step_f, 8, [7, 12, 17, 22], [8, 9, 10, 11]);
        four!(step_f, 12, [7, 12, 17, 22], [12, 13, 14, 15]);
        four!(step_g, 16, [5, 9, 14, 20], [1, 6, 11, 0]);
        four!(step_g, 20, [5, 9, 14, 20], [5, 10, 15, 4]);
        four!(step_g, 24, [5, 9, 14, 20], [9, 14, 3, 8]);
        four!(step_g, 28, [5, 9, 14, 20], [13, 2, 7, 12]);
        four!(step_h, 32, [4, 11, 16, 23], [5, 8, 11, 14]);
        four!(step_h, 36, [4, 11, 16, 23], [1, 4, 7, 10]);
        four!(step_h, 40, [4, 11, 16, 23], [13, 0, 3, 6]);
        four!(step_h, 44, [4, 11, 16, 23], [9, 12, 15, 2]);
        four!(step_i, 48, [6, 10, 15, 21], [0, 7, 14, 5]);
        four!(step_i, 52, [6, 10, 15, 21], [12, 3, 10, 1]);
        four!(step_i, 56, [6, 10, 15, 21], [8, 15, 6, 13]);
        four!(step_i, 60, [6, 10, 15, 21], [4, 11, 2, 9]);
        a = a.wrapping_add(a0);
        b = b.wrapping_add(b0);
        c = c.wrapping_add(c0);
        d = d.wrapping_add(d0);
    }
    *state = [a, b, c, d];
}

/// Streaming MD5 (RFC 1321).
#[derive(Clone)]
pub struct Md5 {
    state: [u32; 4],
    len: u64,
    pending: [u8; 64],
    pending_len: usize,
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

impl Md5 {
    pub fn new() -> Self {
        Self {
            state: [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476],
            len: 0,
            pending: [0; 64],
            pending_len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (64 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 64 {
                return;
            }
            let block = self.pending;
            compress(&mut self.state, &block);
            self.pending_len = 0;
        }
        let whole = data.len() / 64 * 64;
        compress(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    pub fn finalize(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        tail[self.pending_len] = 0x80;
        let total = if self.pending_len < 56 { 64 } else { 128 };
        tail[total - 8..total].copy_from_slice(&bits.to_le_bytes());
        compress(&mut self.state, &tail[..total]);
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Lowercase hex digest, as md5sum prints it.
    pub fn hex(self) -> String {
        hex::encode(self.finalize())
    }
}
