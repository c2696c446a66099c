//! Byte-level helpers shared by the recognizers: token boundaries, runs and context words.
//!
//! Every position these helpers return is next to an ASCII byte or at an end of the text,
//! so it is a UTF-8 char boundary. Non-ASCII bytes count as separators.

/// Bytes per block in [`find_digit`]. A fixed-size block lets the compiler vectorize the
/// test, which an early-exit search does not.
const DIGIT_SEARCH_BLOCK: usize = 32;

/// Returns whether `b` is an ASCII letter, digit or underscore.
pub(super) fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Returns whether a number-like token may start at `start`.
///
/// The byte before must not be an ASCII letter, digit or underscore. It also must not be
/// a `-` or `.` that follows a letter or digit (as in `a55d-453a` or `1.2`), because the
/// token would then continue a longer one.
pub(super) fn starts_token(bytes: &[u8], start: usize) -> bool {
    let Some(prev_index) = start.checked_sub(1) else {
        return true;
    };
    let prev = bytes[prev_index];
    if is_word_byte(prev) {
        return false;
    }
    let continues_token = matches!(prev, b'-' | b'.')
        && prev_index
            .checked_sub(1)
            .is_some_and(|i| bytes[i].is_ascii_alphanumeric());
    !continues_token
}

/// Returns whether a number-like token may end at `end`: the mirror image of
/// [`starts_token`].
pub(super) fn ends_token(bytes: &[u8], end: usize) -> bool {
    let Some(&next) = bytes.get(end) else {
        return true;
    };
    if is_word_byte(next) {
        return false;
    }
    let continues_token = matches!(next, b'-' | b'.')
        && bytes
            .get(end + 1)
            .is_some_and(|b| b.is_ascii_alphanumeric());
    !continues_token
}

/// Returns the end of the run of bytes in `class` that starts at `from`.
pub(super) fn run_end(bytes: &[u8], from: usize, class: impl Fn(u8) -> bool) -> usize {
    let mut end = from;
    while end < bytes.len() && class(bytes[end]) {
        end += 1;
    }
    end
}

/// Returns the end of the ASCII digit run that starts at `from`.
pub(super) fn digit_run_end(bytes: &[u8], from: usize) -> usize {
    let mut end = from;
    while let Some(word) = load_word(bytes, end) {
        let non_digits = non_digit_mask(word);
        if non_digits != 0 {
            return end + first_marked_byte(non_digits);
        }
        end += WORD_BYTES;
    }
    run_end(bytes, end, |b| b.is_ascii_digit())
}

/// Returns the position of the first ASCII digit at or after `from`.
pub(super) fn find_digit(bytes: &[u8], from: usize) -> Option<usize> {
    let from = from.min(bytes.len());
    // Digit-heavy text has the next digit a few bytes away, so look there first.
    let mut block_start = from;
    for _ in 0..2 {
        let Some(word) = load_word(bytes, block_start) else {
            break;
        };
        let digits = !non_digit_mask(word) & HIGH_BITS;
        if digits != 0 {
            return Some(block_start + first_marked_byte(digits));
        }
        block_start += WORD_BYTES;
    }
    while let Some(block) = bytes.get(block_start..block_start + DIGIT_SEARCH_BLOCK) {
        let has_digit = block
            .iter()
            .fold(false, |found, &b| found | b.is_ascii_digit());
        if has_digit {
            break;
        }
        block_start += DIGIT_SEARCH_BLOCK;
    }
    bytes[block_start..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|offset| block_start + offset)
}

const WORD_BYTES: usize = 8;
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Returns the 8 bytes at `start` as a little-endian word, so that byte `i` of the slice
/// is byte `i` of the word counted from the least significant end.
fn load_word(bytes: &[u8], start: usize) -> Option<u64> {
    let chunk: [u8; WORD_BYTES] = bytes.get(start..start + WORD_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Returns `word` with the high bit set in each byte that is not an ASCII digit and all
/// other bits clear.
///
/// XOR with `0x30` maps digits to 0..=9. Adding `0x76` to the low 7 bits sets bit 7
/// exactly when they are 10 or more, and cannot carry into the next byte because
/// `0x7F + 0x76 < 0x100`. Bytes that already had bit 7 set are not digits either.
fn non_digit_mask(word: u64) -> u64 {
    let shifted = word ^ (0x30 * LOW_BITS);
    let above_nine = (shifted & (0x7F * LOW_BITS)) + (0x76 * LOW_BITS);
    (above_nine | shifted) & HIGH_BITS
}

/// Returns the index of the lowest byte whose high bit is set in the non-zero `mask`.
fn first_marked_byte(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

/// Returns whether `word` occurs as a whole word in `bytes[from..to]`, ignoring ASCII case.
///
/// `word` is ASCII and may contain spaces ("social security"). Whole word means that the
/// bytes around the occurrence in the full text are not ASCII letters, digits or
/// underscores.
pub(super) fn contains_ascii_word(bytes: &[u8], from: usize, to: usize, word: &[u8]) -> bool {
    if word.is_empty() || to < from + word.len() {
        return false;
    }
    (from..=to - word.len()).any(|start| {
        let end = start + word.len();
        bytes[start..end].eq_ignore_ascii_case(word)
            && !start.checked_sub(1).is_some_and(|i| is_word_byte(bytes[i]))
            && !bytes.get(end).is_some_and(|&b| is_word_byte(b))
    })
}

/// Returns the largest char boundary of `text` at or below `index`.
pub(super) fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Returns the smallest char boundary of `text` at or above `index`.
pub(super) fn ceil_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_token_cases() {
        let cases: &[(&str, usize, bool)] = &[
            ("415", 0, true),
            (" 415", 1, true),
            ("a415", 1, false),
            ("_415", 1, false),
            ("9415", 1, false),
            ("a-415", 2, false),
            ("1.415", 2, false),
            (" -415", 2, true),
            ("(415", 1, true),
            ("é415", 2, true),
        ];
        for &(text, start, expected) in cases {
            assert_eq!(
                starts_token(text.as_bytes(), start),
                expected,
                "{text:?} at {start}"
            );
        }
    }

    #[test]
    fn ends_token_cases() {
        let cases: &[(&str, usize, bool)] = &[
            ("415", 3, true),
            ("415 ", 3, true),
            ("415.", 3, true),
            ("415. x", 3, true),
            ("415a", 3, false),
            ("415-1", 3, false),
            ("415.5", 3, false),
            ("415,5", 3, true),
        ];
        for &(text, end, expected) in cases {
            assert_eq!(
                ends_token(text.as_bytes(), end),
                expected,
                "{text:?} at {end}"
            );
        }
    }

    #[test]
    fn find_digit_across_blocks() {
        let mut text = "x".repeat(100);
        assert_eq!(find_digit(text.as_bytes(), 0), None);
        text.push('7');
        assert_eq!(find_digit(text.as_bytes(), 0), Some(100));
        assert_eq!(find_digit(text.as_bytes(), 100), Some(100));
        assert_eq!(find_digit(text.as_bytes(), 101), None);
        assert_eq!(find_digit(b"a1", 0), Some(1));
        assert_eq!(find_digit(b"abc", 3), None);
        assert_eq!(find_digit(b"abc", 99), None);
        assert_eq!(digit_run_end(b"12345678901234567890x", 0), 20);
        assert_eq!(digit_run_end(b"12345678", 8), 8);
    }

    #[test]
    fn digit_scans_match_scalar_for_every_byte() {
        // Each byte value at each position of an 8-byte word, between digits, so that
        // both word-at-a-time searches see it.
        for value in 0..=u8::MAX {
            for position in 0..12 {
                let mut bytes = vec![b'7'; 12];
                bytes[position] = value;
                let expected_end = bytes.iter().position(|b| !b.is_ascii_digit()).unwrap_or(12);
                assert_eq!(
                    digit_run_end(&bytes, 0),
                    expected_end,
                    "{value:#x} at {position}"
                );

                let mut gap = vec![b'x'; 20];
                gap[position] = value;
                let expected_digit = gap.iter().position(u8::is_ascii_digit);
                assert_eq!(
                    find_digit(&gap, 0),
                    expected_digit,
                    "{value:#x} at {position}"
                );
            }
        }
    }

    #[test]
    fn contains_ascii_word_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("my SSN is", "ssn", true),
            ("ssn:", "ssn", true),
            ("lessn", "ssn", false),
            ("ssns", "ssn", false),
            ("Social  Security", "social security", false),
            ("his social security no", "social security", true),
            ("", "ssn", false),
        ];
        for &(text, word, expected) in cases {
            let bytes = text.as_bytes();
            assert_eq!(
                contains_ascii_word(bytes, 0, bytes.len(), word.as_bytes()),
                expected,
                "{word:?} in {text:?}"
            );
        }
    }

    #[test]
    fn contains_ascii_word_respects_window() {
        let bytes = b"ssn then 123";
        assert!(contains_ascii_word(bytes, 0, 3, b"ssn"));
        assert!(!contains_ascii_word(bytes, 1, 12, b"ssn"));
        assert!(!contains_ascii_word(bytes, 0, 2, b"ssn"));
    }

    #[test]
    fn char_boundary_rounding() {
        let text = "a€b";
        assert_eq!(floor_char_boundary(text, 2), 1);
        assert_eq!(ceil_char_boundary(text, 2), 4);
        assert_eq!(floor_char_boundary(text, 99), text.len());
        assert_eq!(ceil_char_boundary(text, 4), 4);
    }
}
