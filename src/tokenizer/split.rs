//! Meta's pre-split regex, hand-compiled.
//!
//! Llama 3 cuts text into pieces with
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! before byte-pair merging. A backtracking engine spends most of the encode time on that pattern
//! (the look-ahead rules out the fast DFA engines), so this module walks the text once and decides
//! each alternative by looking at one to three characters. The character classes come from
//! `regex-syntax`, the same Unicode tables the regex engines use, so `\p{L}`, `\p{N}` and `\s` agree
//! with them character for character; the golden tests compare against Meta's tokenizer.
use std::sync::OnceLock;

const OTHER: u8 = 0;
const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 3;

/// Class of every code point below this bound is in a flat table; above it, a range search.
const TABLE_LEN: usize = 0x40000;

struct Classes {
    table: Vec<u8>,
    /// Sorted, disjoint `(first, last, class)` ranges for code points at or above `TABLE_LEN`.
    high: Vec<(u32, u32, u8)>,
}

fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    // The patterns are constants of this module, so parsing cannot fail on user input.
    let hir = match regex_syntax::Parser::new().parse(pattern) {
        Ok(h) => h,
        Err(e) => unreachable!("built-in class {pattern}: {e}"),
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => unreachable!("built-in class {pattern} parsed to {other:?}"),
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut table = vec![OTHER; TABLE_LEN];
        let mut high = Vec::new();
        for (pattern, class) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (lo, hi) in unicode_ranges(pattern) {
                for cp in lo..=hi.min(TABLE_LEN as u32 - 1) {
                    table[cp as usize] = class;
                }
                if hi >= TABLE_LEN as u32 {
                    high.push((lo.max(TABLE_LEN as u32), hi, class));
                }
            }
        }
        high.sort_unstable();
        Classes { table, high }
    })
}

impl Classes {
    #[inline]
    fn of(&self, c: char) -> u8 {
        let cp = c as usize;
        if cp < TABLE_LEN {
            return self.table[cp];
        }
        let cp = cp as u32;
        match self.high.binary_search_by(|&(lo, hi, _)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => self.high[i].2,
            Err(_) => OTHER,
        }
    }
}

/// Python's `str.isspace()`, which Meta's long-input rule uses (it differs from Unicode White_Space:
/// U+001C..U+001F count, for one).
pub fn py_isspace(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\x1c'..='\x20'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `str.strip()` (no arguments).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// A cursor over one piece of text that reads a char and its class at a byte offset.
struct Text<'a> {
    s: &'a str,
    classes: &'static Classes,
}

impl Text<'_> {
    /// The char starting at byte `i`, its class and its length; `None` at the end.
    #[inline]
    fn at(&self, i: usize) -> Option<(char, u8, usize)> {
        let b = *self.s.as_bytes().get(i)?;
        if b < 0x80 {
            return Some((b as char, self.classes.table[b as usize], 1));
        }
        let c = self.s[i..].chars().next()?;
        Some((c, self.classes.of(c), c.len_utf8()))
    }

    /// End of the run of chars of `class` starting at `i`.
    #[inline]
    fn run_end(&self, mut i: usize, class: u8) -> usize {
        while let Some((_, k, n)) = self.at(i) {
            if k != class {
                break;
            }
            i += n;
        }
        i
    }

    /// End of the run of '\r' / '\n' bytes starting at `i`.
    #[inline]
    fn newlines_end(&self, mut i: usize) -> usize {
        let b = self.s.as_bytes();
        while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
            i += 1;
        }
        i
    }

    /// The end of the match that starts at `p` (`p` < len). Alternatives are tried in the
    /// pattern's order and the first that matches wins, as in a backtracking engine.
    fn match_end(&self, p: usize) -> usize {
        let Some((c0, k0, n0)) = self.at(p) else {
            return p;
        };
        let after0 = p + n0;
        let next = self.at(after0);

        // (?i:'s|'t|'re|'ve|'m|'ll|'d): simple case folding also maps U+017F (long s) to s.
        if c0 == '\'' {
            if let Some((c1, _, n1)) = next {
                match c1 {
                    's' | 'S' | '\u{17f}' | 't' | 'T' | 'm' | 'M' | 'd' | 'D' => {
                        return after0 + n1
                    }
                    'r' | 'R' | 'v' | 'V' | 'l' | 'L' => {
                        let want_l = matches!(c1, 'l' | 'L');
                        if let Some((c2, _, n2)) = self.at(after0 + n1) {
                            let ok = if want_l {
                                matches!(c2, 'l' | 'L')
                            } else {
                                matches!(c2, 'e' | 'E')
                            };
                            if ok {
                                return after0 + n1 + n2;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if k0 == LETTER {
            return self.run_end(after0, LETTER);
        }
        if k0 != NUMBER && c0 != '\r' && c0 != '\n' {
            if let Some((_, LETTER, n1)) = next {
                return self.run_end(after0 + n1, LETTER);
            }
        }

        // \p{N}{1,3}
        if k0 == NUMBER {
            let mut end = after0;
            for _ in 0..2 {
                match self.at(end) {
                    Some((_, NUMBER, n)) => end += n,
                    _ => break,
                }
            }
            return end;
        }

        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        if c0 == ' ' {
            if let Some((_, OTHER, n1)) = next {
                let end = self.run_end(after0 + n1, OTHER);
                return self.newlines_end(end);
            }
        }
        if k0 == OTHER {
            let end = self.run_end(after0, OTHER);
            return self.newlines_end(end);
        }

        // k0 == SPACE from here on.
        let run_end = self.run_end(after0, SPACE);
        // \s*[\r\n]+ : the greedy \s* gives back chars until the last '\r' or '\n' of the run.
        let bytes = self.s.as_bytes();
        if let Some(last_nl) = bytes[p..run_end]
            .iter()
            .rposition(|&b| b == b'\r' || b == b'\n')
        {
            return p + last_nl + 1;
        }
        // \s+(?!\S) : the whole run at the end of text, else the run minus its last char.
        if run_end == self.s.len() {
            return run_end;
        }
        let last_start = self.s[..run_end]
            .char_indices()
            .next_back()
            .map_or(p, |(i, _)| i);
        if last_start > p {
            return last_start;
        }
        // \s+
        run_end
    }
}

/// Calls `f` with each piece of `text`, in order; the pieces concatenate to `text`.
pub(super) fn for_each_piece<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let t = Text {
        s: text,
        classes: classes(),
    };
    let mut p = 0;
    while p < text.len() {
        let end = t.match_end(p);
        debug_assert!(end > p);
        f(&text[p..end]);
        p = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<&str> {
        let mut v = Vec::new();
        for_each_piece(s, |p| v.push(p));
        v
    }

    #[test]
    fn agrees_with_the_regex_engine() {
        // fancy-regex runs Meta's pattern as written; the hand-compiled walk must cut identically.
        let re = fancy_regex::Regex::new(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
        .unwrap();
        let samples = [
            "Hello world! It's 12345 o'clock, WE'LL SEE'S 'ſ 'Ll 'rE 've'd",
            "  leading spaces\t\ttabs \r\n\r\n  x \n \n\n  ",
            "中文字符，日本語のテキスト、한국어 텍스트 مرحبا بالعالم 🎉👍🏽",
            "fn main() {\n    let x = vec![1, 2, 3];\n}\n",
            "\u{a0}\u{2003}word\u{3000}\u{1c}\u{85}x ...!!!\r\r\n?",
            "x\u{10FFFF}\u{E0001}\u{1F600}\u{20000}z 123456789 ٣٤٥ Ⅻ ½",
            "'",
            " ",
            "a",
            "\n",
            "   ",
            "' s' S'tT'M'D'LL'VE'RE",
        ];
        for s in samples {
            let want: Vec<&str> = re.find_iter(s).map(|m| m.unwrap().as_str()).collect();
            assert_eq!(pieces(s), want, "{s:?}");
        }
    }

    #[test]
    fn agrees_with_the_regex_engine_on_random_text() {
        let re = fancy_regex::Regex::new(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )
        .unwrap();
        // An alphabet dense in the characters where the alternatives interact.
        let alphabet: Vec<char> = " \t\r\n'sStTrReEvVlLmMdDx1٣.!,é中\u{a0}\u{2003}\u{1c}ſ🎉\u{300}"
            .chars()
            .collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let want: Vec<&str> = re.find_iter(&s).map(|m| m.unwrap().as_str()).collect();
            assert_eq!(pieces(&s), want, "{s:?}");
        }
    }

    #[test]
    fn python_isspace_set() {
        assert!(py_isspace('\x1c') && py_isspace('\u{3000}') && py_isspace('\u{85}'));
        assert!(!py_isspace('\u{200b}') && !py_isspace('\u{180e}') && !py_isspace('x'));
        assert_eq!(py_strip("\u{1f} hi \u{a0}\n"), "hi");
    }
}
