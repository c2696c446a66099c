//! PHONE: international numbers with a `+` country code, and North American numbers.
//!
//! International: `+`, an assigned ITU-T country calling code, and 8 to 15 digits in
//! total (the E.164 limit), in groups separated by single spaces, dots or hyphens, with
//! optional groups in parentheses (`+44 (0)20 7946 0958`). Numbers with country code 1
//! must have 10 further digits that pass the NANP rules below. A space-separated group
//! that would push the total past 15 digits ends the number before it. A dot- or
//! hyphen-separated one rejects the whole candidate, because it continues a longer token.
//!
//! North American without `+`: `(415) 555-2671` (also `(415)555-2671` and
//! `(415)-555-2671`), `415-555-2671`, `415.555.2671`, `415 555 2671`, and the same after
//! `1` plus a separator (`1-415-555-2671`, `1 (415) 555-2671`). The two separators of
//! `AAA?EEE?SSSS` must be the same character.
//! Area code and exchange code start with 2-9. A bare run of 10 digits is not a phone
//! number, so timestamps such as `1548138160707` never match.
//!
//! Every number must sit on token boundaries (see `boundary::starts_token`), which
//! rejects digit runs inside UUIDs, hex strings and longer dotted or hyphenated numbers.
//! Dates (`2024-01-15`), versions and IPv4 addresses do not have the group layout above.
//!
//! The `phonenumber` crate (a port of Google's libphonenumber) is not used, because it is
//! not a dependency of this crate. Version 0.3.10+9.0.33 is a 2.2 MB download whose build
//! script turns about 1 MB of XML metadata into a database that is deserialized on first
//! use. That database keeps its number patterns as `regex_cache::CachedRegex` values
//! that share one LRU cache of 100 regexes behind a `Mutex`.
//! TODO: check numbers against per-country plans (lengths, prefixes) as libphonenumber does.

use super::boundary::{digit_run_end, ends_token, starts_token};
use super::validators::{calling_code_len, nanp_valid};

/// Maximum number of digits in an E.164 number, country code included.
const MAX_E164_DIGITS: usize = 15;
/// Minimum number of digits accepted for an international number, country code included.
const MIN_INTERNATIONAL_DIGITS: usize = 8;
/// Maximum number of digits in a parenthesized group such as `(0)` or `(020)`.
const MAX_PARENTHESIZED_DIGITS: usize = 4;

/// Returns the span of a phone number whose first digits are the run
/// `bytes[run_start..run_end]`. A `+` or `(` right before the run belongs to the number.
pub(super) fn phone_at(bytes: &[u8], run_start: usize, run_end: usize) -> Option<(usize, usize)> {
    let prev = run_start.checked_sub(1).map(|i| bytes[i]);
    let run_len = run_end - run_start;
    match prev {
        Some(b'+') => {
            let plus = run_start - 1;
            international(bytes, plus).map(|end| (plus, end))
        }
        Some(b'(') => {
            let open = run_start - 1;
            if run_len != 3 || !starts_token(bytes, open) {
                return None;
            }
            nanp_parenthesized(bytes, open).map(|end| (open, end))
        }
        _ => {
            // The first run is the area code or the trunk prefix `1`.
            if !(run_len == 3 || run_len == 1) || !starts_token(bytes, run_start) {
                return None;
            }
            nanp_plain(bytes, run_start).map(|end| (run_start, end))
        }
    }
}

/// Parses an international number starting with the `+` at `plus` and returns its end.
fn international(bytes: &[u8], plus: usize) -> Option<usize> {
    if !starts_token(bytes, plus) || plus.checked_sub(1).is_some_and(|i| bytes[i] == b'+') {
        return None;
    }
    let mut digits = [0u8; MAX_E164_DIGITS];
    let mut count = 0;
    let mut pos = plus + 1;
    let mut end = pos;
    loop {
        let (group_start, group_end, after_group) = if bytes.get(pos) == Some(&b'(') {
            let inner_end = digit_run_end(bytes, pos + 1);
            let inner_len = inner_end - (pos + 1);
            if inner_len == 0
                || inner_len > MAX_PARENTHESIZED_DIGITS
                || bytes.get(inner_end) != Some(&b')')
            {
                break;
            }
            (pos + 1, inner_end, inner_end + 1)
        } else {
            let group_end = digit_run_end(bytes, pos);
            if group_end == pos {
                break;
            }
            (pos, group_end, group_end)
        };

        let group_len = group_end - group_start;
        if count + group_len > MAX_E164_DIGITS {
            let after_space = count > 0 && bytes[pos - 1] == b' ';
            if after_space {
                break;
            }
            return None;
        }
        for (slot, &b) in digits[count..]
            .iter_mut()
            .zip(&bytes[group_start..group_end])
        {
            *slot = b - b'0';
        }
        count += group_len;
        end = after_group;

        match bytes.get(after_group) {
            Some(b' ' | b'-' | b'.')
                if bytes
                    .get(after_group + 1)
                    .is_some_and(|&b| b.is_ascii_digit() || b == b'(') =>
            {
                pos = after_group + 1;
            }
            // A parenthesized group needs no separator: `+44(0)20` and `(0)20`.
            Some(b'(') => pos = after_group,
            Some(b) if b.is_ascii_digit() => pos = after_group,
            _ => break,
        }
    }

    if !ends_token(bytes, end) || !(MIN_INTERNATIONAL_DIGITS..=MAX_E164_DIGITS).contains(&count) {
        return None;
    }
    let digits = &digits[..count];
    calling_code_len(digits)?;
    if digits[0] == 1 && (count != 11 || !nanp_valid(&digits[1..])) {
        return None;
    }
    Some(end)
}

/// Parses `AAA?EEE?SSSS`, optionally after `1` and a separator, starting at `start`.
fn nanp_plain(bytes: &[u8], start: usize) -> Option<usize> {
    let first_end = digit_run_end(bytes, start);
    let has_trunk_prefix = first_end - start == 1 && bytes[start] == b'1';
    if !has_trunk_prefix {
        return nanp_groups(bytes, start);
    }
    if !matches!(bytes.get(first_end), Some(b' ' | b'-' | b'.')) {
        return None;
    }
    let area_start = first_end + 1;
    if bytes.get(area_start) == Some(&b'(') {
        nanp_parenthesized(bytes, area_start)
    } else {
        nanp_groups(bytes, area_start)
    }
}

/// Parses `AAA?EEE?SSSS` at `start`, where both separators are the same one of space,
/// hyphen or dot.
fn nanp_groups(bytes: &[u8], start: usize) -> Option<usize> {
    let area_end = exact_run(bytes, start, 3)?;
    let separator = *bytes.get(area_end)?;
    if !matches!(separator, b' ' | b'-' | b'.') {
        return None;
    }
    let exchange_end = exact_run(bytes, area_end + 1, 3)?;
    if bytes.get(exchange_end) != Some(&separator) {
        return None;
    }
    let end = exact_run(bytes, exchange_end + 1, 4)?;
    let mut national = [0u8; 10];
    collect_digits(bytes, start, end, &mut national);
    (ends_token(bytes, end) && nanp_valid(&national)).then_some(end)
}

/// Parses `(AAA) EEE-SSSS` with the `(` at `open`. After `)` comes an optional space or
/// hyphen, and the last separator is a space, hyphen or dot.
fn nanp_parenthesized(bytes: &[u8], open: usize) -> Option<usize> {
    let area_end = exact_run(bytes, open + 1, 3)?;
    if bytes.get(area_end) != Some(&b')') {
        return None;
    }
    let mut exchange_start = area_end + 1;
    if matches!(bytes.get(exchange_start), Some(b' ' | b'-')) {
        exchange_start += 1;
    }
    let exchange_end = exact_run(bytes, exchange_start, 3)?;
    if !matches!(bytes.get(exchange_end), Some(b' ' | b'-' | b'.')) {
        return None;
    }
    let end = exact_run(bytes, exchange_end + 1, 4)?;
    let mut national = [0u8; 10];
    collect_digits(bytes, open, end, &mut national);
    (ends_token(bytes, end) && nanp_valid(&national)).then_some(end)
}

/// Returns the end of the digit run at `start` if it has exactly `len` digits.
fn exact_run(bytes: &[u8], start: usize, len: usize) -> Option<usize> {
    let end = digit_run_end(bytes, start);
    (end - start == len).then_some(end)
}

/// Copies the digit values in `bytes[start..end]` into `out`, which must have room for
/// all of them.
fn collect_digits(bytes: &[u8], start: usize, end: usize, out: &mut [u8]) {
    let digits = bytes[start..end].iter().filter(|b| b.is_ascii_digit());
    for (slot, &b) in out.iter_mut().zip(digits) {
        *slot = b - b'0';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `phone_at` at every digit-run start of `text` and returns the matched texts.
    fn phones_in(text: &str) -> Vec<&str> {
        let bytes = text.as_bytes();
        let mut found = Vec::new();
        let mut pos = 0;
        while let Some(offset) = bytes[pos..].iter().position(u8::is_ascii_digit) {
            let start = pos + offset;
            let end = digit_run_end(bytes, start);
            if let Some((s, e)) = phone_at(bytes, start, end) {
                found.push(&text[s..e]);
            }
            pos = end;
        }
        found
    }

    #[test]
    fn north_american_formats() {
        let cases = [
            ("(415) 555-2671", "(415) 555-2671"),
            ("(415)555-2671", "(415)555-2671"),
            ("(415)-555-2671", "(415)-555-2671"),
            ("415-555-2671", "415-555-2671"),
            ("415.555.2671", "415.555.2671"),
            ("415 555 2671", "415 555 2671"),
            ("1-415-555-2671", "1-415-555-2671"),
            ("1 (415) 555-2671", "1 (415) 555-2671"),
            ("call 415-555-2671.", "415-555-2671"),
        ];
        for (text, expected) in cases {
            let found = phones_in(text);
            assert_eq!(found.first().copied(), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn international_formats() {
        let cases = [
            ("+1 415 555 2671", "+1 415 555 2671"),
            ("+14155552671", "+14155552671"),
            ("+1 (415) 555-2671", "+1 (415) 555-2671"),
            ("+44 20 7946 0958", "+44 20 7946 0958"),
            ("+44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
            ("+49 30 12345678", "+49 30 12345678"),
            ("+33 1 23 45 67 89", "+33 1 23 45 67 89"),
            ("+86 138 0013 8000", "+86 138 0013 8000"),
            ("+91-98765-43210", "+91-98765-43210"),
            ("+353.1.234.5678", "+353.1.234.5678"),
            ("+44 20 7946 0958 2024", "+44 20 7946 0958"),
        ];
        for (text, expected) in cases {
            let found = phones_in(text);
            assert_eq!(found.first().copied(), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn rejected_candidates() {
        let cases = [
            "110bcd25-a55d-453a-8046-1297901ea002",
            "1548138160707",
            "4155552671",
            "id a415-555-2671",
            "415-555-2671x",
            "415-555-2671-9",
            "9415-555-2671",
            "415-555.2671",
            "(415)  555-2671",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "DE89 3704 0044 0532 0130 00",
            "2024-01-15",
            "10.0.0.1",
            "192.168.100.200",
            "version 1.2.3",
            "(115) 555-2671",
            "015-555-2671",
            "415-155-2671",
            "+1 115 555 2671",
            "+1 415 555 267",
            "+0 4155552671",
            "+214 1234 5678",
            "+44 20 79",
            "+44-20-7946-0958-1234",
            "a+44 20 7946 0958",
            "5+44207946095",
        ];
        for text in cases {
            assert_eq!(phones_in(text), Vec::<&str>::new(), "{text:?}");
        }
    }
}
