//! One pass over the ASCII digit runs of a text, feeding the digit-based recognizers
//! (phone, payment card, IBAN, US SSN, IPv4) with candidate starts.
//!
//! Every run is tried as the start of each entity, so a valid number preceded by other
//! numbers is still found (`ref 99 4111 1111 1111 1111`). Each recognizer reads a
//! bounded number of groups from its start, which keeps the pass linear in the text.
//!
//! US_SSN accepts `AAA-GG-SSSS` and `AAA GG SSSS` (one kind of separator) everywhere.
//! Nine bare digits count only when the word "ssn" or the phrase "social security" (any
//! case, whole words) lies within the 32 bytes before the number, because nine-digit
//! numbers are common in other roles. Numbers that cannot be issued are rejected (see
//! [`ssn_valid`]).

use super::boundary::{contains_ascii_word, digit_run_end, ends_token, find_digit, starts_token};
use super::card::card_at;
use super::iban::{check_digits_at, iban_at};
use super::ip::ipv4_at;
use super::phone::phone_at;
use super::validators::ssn_valid;
use super::{BuiltinEntity, BuiltinSet, Candidate};

/// Window in bytes before a bare nine-digit SSN in which a context word must end.
pub(super) const SSN_CONTEXT_WINDOW: usize = 32;
/// Words that make a bare nine-digit number count as an SSN.
const SSN_CONTEXT_WORDS: [&[u8]; 2] = [b"ssn", b"social security"];

/// Appends the digit-based entities in `bytes` that `entities` enables to `out`.
pub(super) fn find(bytes: &[u8], entities: BuiltinSet, out: &mut Vec<Candidate>) {
    let iban = entities.contains(BuiltinEntity::Iban);
    let phone = entities.contains(BuiltinEntity::Phone);
    let card = entities.contains(BuiltinEntity::CreditCard);
    let ssn = entities.contains(BuiltinEntity::UsSsn);
    let ipv4 = entities.contains(BuiltinEntity::IpAddress);

    let mut pos = 0;
    while let Some(start) = find_digit(bytes, pos) {
        let end = digit_run_end(bytes, start);
        pos = end;
        // Each recognizer accepts only a few lengths for its first digit run. The checks
        // below skip most runs of digit-heavy text without reading them again.
        let len = end - start;

        if iban && check_digits_at(bytes, start, end) {
            let country_start = start - 2;
            if let Some(iban_end) = iban_at(bytes, country_start) {
                out.push(Candidate::builtin(
                    BuiltinEntity::Iban,
                    country_start,
                    iban_end,
                ));
            }
        }
        let phone_span = phone.then(|| phone_at(bytes, start, end)).flatten();
        if let Some((phone_start, phone_end)) = phone_span {
            out.push(Candidate::builtin(
                BuiltinEntity::Phone,
                phone_start,
                phone_end,
            ));
        }
        if !starts_token(bytes, start) {
            continue;
        }
        let card_end = card.then(|| card_at(bytes, start, end)).flatten();
        if let Some(card_end) = card_end {
            out.push(Candidate::builtin(
                BuiltinEntity::CreditCard,
                start,
                card_end,
            ));
        }
        let ssn_end = (ssn && (len == 3 || len == 9))
            .then(|| ssn_at(bytes, start, end))
            .flatten();
        if let Some(ssn_end) = ssn_end {
            out.push(Candidate::builtin(BuiltinEntity::UsSsn, start, ssn_end));
        }
        let may_be_octet = len <= 3 && bytes.get(end) == Some(&b'.');
        let ip_end = (ipv4 && may_be_octet)
            .then(|| ipv4_at(bytes, start))
            .flatten();
        if let Some(ip_end) = ip_end {
            out.push(Candidate::builtin(BuiltinEntity::IpAddress, start, ip_end));
        }
    }
}

/// Returns the end of a US SSN whose area number is the digit run `bytes[start..end]`.
/// The caller has checked the boundary before `start`.
fn ssn_at(bytes: &[u8], start: usize, end: usize) -> Option<usize> {
    match end - start {
        3 => {
            let separator = *bytes.get(end)?;
            if !matches!(separator, b'-' | b' ') {
                return None;
            }
            let group_end = digit_run_end(bytes, end + 1);
            if group_end - (end + 1) != 2 || bytes.get(group_end) != Some(&separator) {
                return None;
            }
            let serial_end = digit_run_end(bytes, group_end + 1);
            if serial_end - (group_end + 1) != 4 || !ends_token(bytes, serial_end) {
                return None;
            }
            let area = decimal(&bytes[start..end]);
            let group = decimal(&bytes[end + 1..group_end]);
            let serial = decimal(&bytes[group_end + 1..serial_end]);
            ssn_valid(area, group, serial).then_some(serial_end)
        }
        9 => {
            let window_start = start.saturating_sub(SSN_CONTEXT_WINDOW);
            let has_context = SSN_CONTEXT_WORDS
                .iter()
                .any(|word| contains_ascii_word(bytes, window_start, start, word));
            let area = decimal(&bytes[start..start + 3]);
            let group = decimal(&bytes[start + 3..start + 5]);
            let serial = decimal(&bytes[start + 5..end]);
            (has_context && ends_token(bytes, end) && ssn_valid(area, group, serial)).then_some(end)
        }
        _ => None,
    }
}

/// Returns the value of a run of at most four ASCII digits.
fn decimal(digits: &[u8]) -> u16 {
    digits
        .iter()
        .fold(0u16, |value, &b| value * 10 + u16::from(b - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssns_in(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let only_ssn = BuiltinSet::from_slice(&[BuiltinEntity::UsSsn]);
        find(text.as_bytes(), only_ssn, &mut out);
        out.iter().map(|c| &text[c.start..c.end]).collect()
    }

    #[test]
    fn ssn_cases() {
        let cases: &[(&str, &[&str])] = &[
            ("SSN 123-45-6789", &["123-45-6789"]),
            ("no label 123-45-6789.", &["123-45-6789"]),
            ("spaced 123 45 6789", &["123 45 6789"]),
            ("ssn: 123456789", &["123456789"]),
            ("My Social Security number is 123456789", &["123456789"]),
            ("SSN#123456789", &["123456789"]),
            ("order 123456789", &[]),
            ("ssn is not in the 32 bytes before 123456789", &[]),
            ("lessn 123456789", &[]),
            ("123-45 6789", &[]),
            ("123-45-67890", &[]),
            ("123-45-6789-1", &[]),
            ("a123-45-6789", &[]),
            ("000-12-3456", &[]),
            ("666-12-3456", &[]),
            ("900-12-3456", &[]),
            ("123-00-4567", &[]),
            ("123-45-0000", &[]),
            ("078-05-1120", &[]),
            ("219-09-9999", &[]),
            ("ssn 000123456", &[]),
        ];
        for &(text, expected) in cases {
            assert_eq!(ssns_in(text), expected, "{text:?}");
        }
    }
}
