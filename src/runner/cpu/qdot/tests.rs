//! Every path against the portable one (bit for bit) and against candle's `vec_dot` (up to float
//! summation order), on random blocks: quantized values and raw random bytes (every bit pattern
//! of the quants, negative and 6-bit scales) with sane block scales.
use super::*;
use crate::runner::cpu::quant::{self, Acts};

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    }
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| (r() % 20001) as f32 / 10000.0 - 1.0)
        .collect()
}

/// Random bytes for `rows` rows of `cols` values of `q`, with every f16 scale set to a small value.
fn random_blocks(q: Quant, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let (_, size) = q.block();
    let mut bytes: Vec<u8> = (0..rows * q.row_bytes(cols).unwrap())
        .map(|_| r() as u8)
        .collect();
    let scale_at: &[usize] = match q {
        Quant::Q8_0 => &[0],
        Quant::Q4K => &[0, 2],
        _ => &[208],
    };
    for blk in bytes.chunks_exact_mut(size) {
        for &at in scale_at {
            let v = half::f16::from_f32((r() % 1000) as f32 / 50000.0 + 1e-4);
            blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

fn paths() -> Vec<Path> {
    let mut p = vec![Path::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            p.push(Path::Avx2);
        }
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            p.push(Path::Vnni);
        }
    }
    p
}

fn check(q: Quant, w: &[u8], rn: usize, x: &[f32], cols: usize) {
    let t = x.len() / cols;
    let acts = Acts::new(x, cols, [q]);
    let mut want = vec![0f32; rn * t];
    quant::candle_dot_block(q, w, rn, &acts, &mut want);
    let mut port = vec![0f32; rn * t];
    assert!(dot_block_on(
        Path::Portable,
        q,
        w,
        rn,
        acts.bytes_for(q),
        t,
        &mut port
    ));
    for (i, (a, b)) in port.iter().zip(&want).enumerate() {
        let tol = 1e-5 * (1.0 + b.abs()) + 1e-6 * cols as f32;
        assert!(
            (a - b).abs() <= tol,
            "{q:?} portable [{i}] {a} vs candle {b}"
        );
    }
    for p in paths() {
        let mut got = vec![f32::NAN; rn * t];
        assert!(dot_block_on(p, q, w, rn, acts.bytes_for(q), t, &mut got));
        let same = got
            .iter()
            .zip(&port)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{q:?} {p:?} differs from portable: {got:?} vs {port:?}"
        );
    }
}

#[test]
fn every_path_matches_portable_and_candle() {
    // Row counts that take the 4-row tiles and the single-row tail; token counts for every tile
    // height and the decode shape.
    for q in [Quant::Q8_0, Quant::Q4K, Quant::Q6K] {
        // Q8_0 also with an odd block count (the lone last block of the 2-block steps).
        let odd: &[_] = if q == Quant::Q8_0 {
            &[(96, 5, 3), (160, 4, 1)]
        } else {
            &[]
        };
        let shapes = [
            (256, 1, 1),
            (512, 6, 1),
            (512, 9, 5),
            (768, 4, 8),
            (256, 5, 3),
        ];
        for &(cols, rn, t) in shapes.iter().chain(odd) {
            let x = values(t * cols, 11 + t as u64);
            let w = random_blocks(q, rn, cols, 3 + rn as u64);
            check(q, &w, rn, &x, cols);
            let w = quant::quantize(q, &values(rn * cols, 5));
            check(q, &w, rn, &x, cols);
        }
    }
}

#[test]
fn types_without_a_kernel_are_declined() {
    let mut res = [0f32; 1];
    assert!(!dot_block(Quant::Q5K, &[0; 176], 1, &[0; 292], 1, &mut res));
    assert!(Kind::of(Quant::Q4_0).is_none());
}

#[test]
fn q4k_scales_unpack_six_bits() {
    // Scales 0-3 / mins 0-3 from the low 6 bits; 4-7 from nibbles of bytes 8-11 plus top bits.
    let mut b = [0u8; 12];
    b[0] = 0b11_000101; // scale 0 = 5, top bits 3 -> scale 4 high
    b[4] = 0b10_000111; // min 0 = 7, top bits 2 -> min 4 high
    b[8] = 0x9a; // scale 4 low nibble 0xa, min 4 low nibble 0x9
    let (sc, mn) = q4k_scales(&b);
    assert_eq!(sc as u8, 5);
    assert_eq!(mn as u8, 7);
    assert_eq!((sc >> 32) as u8, 0xa | 3 << 4);
    assert_eq!((mn >> 32) as u8, 0x9 | 2 << 4);
}
