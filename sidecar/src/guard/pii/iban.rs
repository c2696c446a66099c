//! IBAN: international bank account numbers.
//!
//! Accepts a country code with a known IBAN length, two check digits and the BBAN in
//! upper-case letters and digits, written compact (`DE89370400440532013000`) or in groups
//! of four separated by single spaces (`DE89 3704 0044 0532 0130 00`). The country's
//! length decides where the IBAN ends, and a boundary must follow, so upper-case words
//! after an IBAN are never absorbed. The mod-97 checksum must hold. Lower-case IBANs are
//! not recognized.

use super::boundary::is_word_byte;
use super::validators::{MAX_IBAN_LEN, iban_checksum_valid, iban_length};

/// Returns whether the digit run at `run_start` can hold the check digits of an IBAN: it
/// has at least two digits and follows two upper-case letters that start a token.
pub(super) fn check_digits_at(bytes: &[u8], run_start: usize, run_end: usize) -> bool {
    let Some(country_start) = run_start.checked_sub(2) else {
        return false;
    };
    run_end - run_start >= 2
        && bytes[country_start].is_ascii_uppercase()
        && bytes[country_start + 1].is_ascii_uppercase()
        && !country_start
            .checked_sub(1)
            .is_some_and(|i| is_word_byte(bytes[i]))
}

/// Returns the end of a valid IBAN whose country code starts at `start`.
pub(super) fn iban_at(bytes: &[u8], start: usize) -> Option<usize> {
    let length = iban_length(bytes.get(start..start + 2)?)?;
    let mut compact = [0u8; MAX_IBAN_LEN];
    compact[..4].copy_from_slice(bytes.get(start..start + 4)?);
    let mut count = 4;
    let mut pos = start + 4;

    if bytes.get(pos) == Some(&b' ') {
        while count < length {
            if bytes.get(pos) != Some(&b' ') {
                return None;
            }
            pos += 1;
            let group_len = (length - count).min(4);
            let group = bytes.get(pos..pos + group_len)?;
            if !group.iter().all(|&b| is_bban_byte(b)) {
                return None;
            }
            compact[count..count + group_len].copy_from_slice(group);
            count += group_len;
            pos += group_len;
        }
    } else {
        let rest = bytes.get(pos..start + length)?;
        if !rest.iter().all(|&b| is_bban_byte(b)) {
            return None;
        }
        compact[4..length].copy_from_slice(rest);
        pos = start + length;
    }

    let boundary_after = !bytes.get(pos).is_some_and(|&b| is_word_byte(b));
    (boundary_after && iban_checksum_valid(&compact[..length])).then_some(pos)
}

fn is_bban_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `iban_at` at the first upper-case letter of `text` and returns the match.
    fn iban_in(text: &str) -> Option<&str> {
        let start = text.find(|c: char| c.is_ascii_uppercase())?;
        iban_at(text.as_bytes(), start).map(|end| &text[start..end])
    }

    #[test]
    fn iban_at_cases() {
        let cases = [
            (
                "AL47212110090000000235698741 ALL CAPS",
                Some("AL47212110090000000235698741"),
            ),
            (
                "AL47 2121 1009 0000 0002 3569 8741 ALL CAPS",
                Some("AL47 2121 1009 0000 0002 3569 8741"),
            ),
            ("DE89370400440532013000", Some("DE89370400440532013000")),
            (
                "DE89 3704 0044 0532 0130 00.",
                Some("DE89 3704 0044 0532 0130 00"),
            ),
            (
                "GB82 WEST 1234 5698 7654 32",
                Some("GB82 WEST 1234 5698 7654 32"),
            ),
            ("NO93 8601 1117 947", Some("NO93 8601 1117 947")),
            (
                "FR1420041010050500013M02606",
                Some("FR1420041010050500013M02606"),
            ),
            ("DE89370400440532013001", None),
            ("DE893704004405320130001", None),
            ("DE89370400440532013000A", None),
            ("DE89 3704 0044 0532 0130 0012", None),
            ("DE89 370 4004 4053 2013 000", None),
            ("DE89  3704 0044 0532 0130 00", None),
            ("DE8937040044053201300", None),
            ("US89370400440532013000", None),
            ("GB82 west 1234 5698 7654 32", None),
        ];
        for (text, expected) in cases {
            assert_eq!(iban_in(text), expected, "{text:?}");
        }
    }

    #[test]
    fn check_digits_position() {
        let text = b"xDE89 DE89 D89 DE8";
        assert!(!check_digits_at(text, 3, 5), "country code inside a word");
        assert!(check_digits_at(text, 8, 10));
        assert!(!check_digits_at(text, 12, 14), "one letter");
        assert!(!check_digits_at(text, 17, 18), "one check digit");
    }
}
