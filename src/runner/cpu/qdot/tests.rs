//! The scale unpacking the kernels share (the kernels themselves are tested against candle's in
//! `quant`, which quantizes the activations).
use super::*;

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
