//! GPT-2's byte alphabet: Hugging Face's byte-level BPE writes each token's bytes as printable
//! characters, one per byte. Both the runtime backend (decoding) and the tokenizer files that
//! `convert` writes (encoding) use it.
use rustc_hash::FxHashMap;

/// GPT-2's printable stand-in for a byte: printable Latin-1 bytes stand for themselves, the
/// other 68 are mapped in order to U+0100 onwards.
pub(super) fn byte_to_unicode(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let k = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + k).unwrap_or('\u{FFFD}')
}

/// The inverse of [`byte_to_unicode`].
pub(super) fn unicode_to_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<FxHashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| (0..=255u8).map(|b| (byte_to_unicode(b), b)).collect())
        .get(&c)
        .copied()
}

/// A token's bytes in the byte alphabet.
pub(super) fn to_unicode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_unicode(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_gpt2s() {
        assert_eq!(byte_to_unicode(b' '), 'Ġ');
        assert_eq!(byte_to_unicode(b'\n'), 'Ċ');
        assert_eq!(byte_to_unicode(0), '\u{100}');
        assert_eq!(byte_to_unicode(0xAD), '\u{143}');
        assert_eq!(byte_to_unicode(b'A'), 'A');
        for b in 0..=255u8 {
            assert_eq!(unicode_to_byte(byte_to_unicode(b)), Some(b));
        }
    }
}
