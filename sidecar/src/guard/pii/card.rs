//! CREDIT_CARD: payment card numbers.
//!
//! Accepts 13 to 19 digits, written together or in groups separated by single spaces or
//! single hyphens (one kind per number). Groups must follow a printed layout: all groups
//! of 4 digits with a last group of 1 to 4 (4-4-4-4, 4-4-4-4-3, 4-4-4-1), or 4-6-5 and
//! 4-6-4 (American Express, Diners Club). The issuer prefix must fit the length (see
//! [`card_issuer_valid`]) and the Luhn checksum must hold.
//!
//! Groups are tried as exact units, never merged or split: in `ref 99 4111 1111 1111
//! 1111 2` the number starting at `4111` is found and the neighbouring `99` and `2` stay
//! outside, because no layout allows them.

use super::boundary::{digit_run_end, ends_token};
use super::validators::{card_issuer_valid, luhn_valid};

const MIN_DIGITS: usize = 13;
const MAX_DIGITS: usize = 19;
/// Maximum number of groups in a layout (4-4-4-4-3).
const MAX_GROUPS: usize = 5;

/// Returns the end of the longest valid card number whose first digit group is the run
/// `bytes[start..first_end]`. The caller has checked the boundary before `start`.
pub(super) fn card_at(bytes: &[u8], start: usize, first_end: usize) -> Option<usize> {
    // Every layout starts with a group of 4 digits or is a single group of 13 to 19.
    let first_len = first_end - start;
    if first_len != 4 && !(MIN_DIGITS..=MAX_DIGITS).contains(&first_len) {
        return None;
    }
    let mut groups = [(0usize, 0usize); MAX_GROUPS];
    let mut count = 0;
    let mut total_digits = 0;
    let mut separator = None;
    let mut group_start = start;
    loop {
        let group_end = digit_run_end(bytes, group_start);
        groups[count] = (group_start, group_end);
        count += 1;
        total_digits += group_end - group_start;
        if count == MAX_GROUPS || total_digits >= MAX_DIGITS {
            break;
        }
        let Some(&next) = bytes.get(group_end) else {
            break;
        };
        let same_separator = separator.is_none_or(|s| s == next);
        let digit_follows = bytes.get(group_end + 1).is_some_and(u8::is_ascii_digit);
        if !matches!(next, b' ' | b'-') || !same_separator || !digit_follows {
            break;
        }
        separator = Some(next);
        group_start = group_end + 1;
    }

    (1..=count)
        .rev()
        .find(|&taken| is_valid_card(bytes, &groups[..taken]))
        .map(|taken| groups[taken - 1].1)
}

fn is_valid_card(bytes: &[u8], groups: &[(usize, usize)]) -> bool {
    let mut lengths = [0usize; MAX_GROUPS];
    for (length, &(start, end)) in lengths.iter_mut().zip(groups) {
        *length = end - start;
    }
    let lengths = &lengths[..groups.len()];
    let total: usize = lengths.iter().sum();
    let Some(&(_, end)) = groups.last() else {
        return false;
    };
    if !(MIN_DIGITS..=MAX_DIGITS).contains(&total)
        || !layout_plausible(lengths)
        || !ends_token(bytes, end)
    {
        return false;
    }

    let mut digits = [0u8; MAX_DIGITS];
    let mut count = 0;
    for &(start, end) in groups {
        for &b in &bytes[start..end] {
            digits[count] = b - b'0';
            count += 1;
        }
    }
    let digits = &digits[..count];
    card_issuer_valid(digits) && luhn_valid(digits)
}

/// Returns whether the group lengths match a layout printed on cards.
fn layout_plausible(lengths: &[usize]) -> bool {
    match lengths {
        [_] | [4, 6, 4] | [4, 6, 5] => true,
        [leading @ .., last] => {
            leading.len() >= 2 && leading.iter().all(|&l| l == 4) && (1..=4).contains(last)
        }
        [] => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `card_at` at the first digit of `text` and returns the matched text.
    fn card_in(text: &str) -> Option<&str> {
        let start = text.find(|c: char| c.is_ascii_digit())?;
        let first_end = digit_run_end(text.as_bytes(), start);
        card_at(text.as_bytes(), start, first_end).map(|end| &text[start..end])
    }

    #[test]
    fn card_at_cases() {
        let cases = [
            ("4111111111111111", Some("4111111111111111")),
            ("4111 1111 1111 1111", Some("4111 1111 1111 1111")),
            ("4111-1111-1111-1111", Some("4111-1111-1111-1111")),
            ("3782 822463 10005", Some("3782 822463 10005")),
            ("3782-822463-10005", Some("3782-822463-10005")),
            ("3056 930902 5904", Some("3056 930902 5904")),
            ("5555 5555 5555 4444", Some("5555 5555 5555 4444")),
            ("4111 1111 1111 1111 2", Some("4111 1111 1111 1111")),
            ("4111 1111 1111 1111.", Some("4111 1111 1111 1111")),
            ("1234-5678-1234-5678", None),
            ("1548138160707", None),
            ("4111-1111-1111-1111-2", None),
            ("4111 1111-1111 1111", None),
            ("4111  1111 1111 1111", None),
            ("41111 111 1111 1111", None),
            ("4111111111111111x", None),
            ("4111111111111112", None),
            ("41111111111111111111", None),
        ];
        for (text, expected) in cases {
            assert_eq!(card_in(text), expected, "{text:?}");
        }
    }

    #[test]
    fn layout_cases() {
        let cases: &[(&[usize], bool)] = &[
            (&[16], true),
            (&[4, 4, 4, 4], true),
            (&[4, 4, 4, 4, 3], true),
            (&[4, 4, 4, 1], true),
            (&[4, 6, 5], true),
            (&[4, 6, 4], true),
            (&[2, 4, 4, 4, 4], false),
            (&[4, 4, 8], false),
            (&[4, 4], false),
            (&[4, 4, 4, 5], false),
        ];
        for &(lengths, expected) in cases {
            assert_eq!(layout_plausible(lengths), expected, "{lengths:?}");
        }
    }
}
