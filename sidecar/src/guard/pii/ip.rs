//! IP_ADDRESS: IPv4 dotted quads and IPv6 addresses.
//!
//! IPv4: four decimal octets of 0-255 separated by dots, without leading zeros (`0` alone
//! is fine), on token boundaries so that `1.2.3.4.5` and `v1.2.3.4` do not match. A port
//! or prefix length after the address (`10.0.0.1:8080`, `10.0.0.0/8`) stays outside.
//!
//! IPv6: a run of hex digits, colons and dots around a `:` that
//! [`std::net::Ipv6Addr`] parses, in full, compressed (`::`) or IPv4-embedded form. The
//! run needs at least two colons and one decimal digit, so times (`12:30`, `12:30:45`),
//! a lone `::`, `std::vec` and MAC addresses do not match. Python slices such as
//! `a[1::2]` and `a[::10]` parse as IPv6 too, so an address of at most two groups that
//! are all one or two decimal digits is rejected, except the loopback `::1`. Zone
//! indexes (`%eth0`) and brackets stay outside the match.

use std::net::Ipv6Addr;

use memchr::memchr_iter;

use super::boundary::{digit_run_end, ends_token, is_word_byte};
use super::{BuiltinEntity, Candidate};

/// Maximum length of a textual IPv6 address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const MAX_IPV6_LEN: usize = 45;

/// Returns the end of an IPv4 address whose first octet is the digit run at `start`. The
/// caller has checked the boundary before `start`.
pub(super) fn ipv4_at(bytes: &[u8], start: usize) -> Option<usize> {
    let mut octet_start = start;
    for index in 0..4 {
        let octet_end = digit_run_end(bytes, octet_start);
        let octet = &bytes[octet_start..octet_end];
        let leading_zero = octet.len() > 1 && octet[0] == b'0';
        if octet.is_empty() || octet.len() > 3 || leading_zero {
            return None;
        }
        let value = octet
            .iter()
            .fold(0u16, |value, &b| value * 10 + u16::from(b - b'0'));
        if value > 255 {
            return None;
        }
        if index == 3 {
            return ends_token(bytes, octet_end).then_some(octet_end);
        }
        if bytes.get(octet_end) != Some(&b'.') {
            return None;
        }
        octet_start = octet_end + 1;
    }
    None
}

/// Appends the IPv6 addresses in `bytes` to `out`.
pub(super) fn find_ipv6(bytes: &[u8], out: &mut Vec<Candidate>) {
    let mut scanned_to = 0;
    for colon in memchr_iter(b':', bytes) {
        if colon < scanned_to {
            continue;
        }
        let mut start = colon;
        while start > scanned_to && is_ipv6_byte(bytes[start - 1]) {
            start -= 1;
        }
        let end = colon
            + 1
            + bytes[colon + 1..]
                .iter()
                .take_while(|&&b| is_ipv6_byte(b))
                .count();
        scanned_to = end;
        if let Some((s, e)) = ipv6_in_run(bytes, start, end) {
            out.push(Candidate::builtin(BuiltinEntity::IpAddress, s, e));
        }
    }
}

/// Returns the span of the IPv6 address in the run `bytes[start..end]` of hex digits,
/// colons and dots, after trimming punctuation at its ends.
fn ipv6_in_run(bytes: &[u8], mut start: usize, mut end: usize) -> Option<(usize, usize)> {
    // A single leading colon is a label separator (`ip:2001:db8::1`), and dots at either
    // end are sentence punctuation.
    while start < end && bytes[start] == b'.' {
        start += 1;
    }
    if bytes[start..end].starts_with(b":") && !bytes[start..end].starts_with(b"::") {
        start += 1;
    }
    while end > start && bytes[end - 1] == b'.' {
        end -= 1;
    }
    let preceded_by_word = start.checked_sub(1).is_some_and(|i| is_word_byte(bytes[i]));
    let followed_by_word = bytes.get(end).is_some_and(|&b| is_word_byte(b));
    if preceded_by_word || followed_by_word {
        return None;
    }

    let candidate = &bytes[start..end];
    if parses_as_ipv6(candidate) {
        return Some((start, end));
    }
    // A single trailing colon is punctuation (`at 2001:db8::1: reachable`).
    if candidate.ends_with(b":") && !candidate.ends_with(b"::") {
        let trimmed = &candidate[..candidate.len() - 1];
        if parses_as_ipv6(trimmed) {
            return Some((start, end - 1));
        }
    }
    None
}

fn parses_as_ipv6(candidate: &[u8]) -> bool {
    let colons = candidate.iter().filter(|&&b| b == b':').count();
    if colons < 2
        || candidate.len() > MAX_IPV6_LEN
        || !candidate.iter().any(u8::is_ascii_digit)
        || looks_like_slice(candidate)
    {
        return false;
    }
    std::str::from_utf8(candidate)
        .ok()
        .and_then(|text| text.parse::<Ipv6Addr>().ok())
        .is_some()
}

/// Returns whether `candidate` has at most two groups, all of one or two decimal digits
/// (`1::2`, `::10`), and is not the loopback `::1`.
fn looks_like_slice(candidate: &[u8]) -> bool {
    let mut groups = candidate
        .split(|&b| b == b':')
        .filter(|group| !group.is_empty());
    let short_decimal = |group: &[u8]| group.len() <= 2 && group.iter().all(u8::is_ascii_digit);
    let small = groups.clone().count() <= 2 && groups.all(short_decimal);
    small && candidate != b"::1"
}

fn is_ipv6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

#[cfg(test)]
mod tests {
    use super::super::boundary::starts_token;
    use super::*;

    fn ipv4_in(text: &str) -> Vec<&str> {
        let bytes = text.as_bytes();
        let mut found = Vec::new();
        let mut pos = 0;
        while let Some(offset) = bytes[pos..].iter().position(u8::is_ascii_digit) {
            let start = pos + offset;
            let end = starts_token(bytes, start)
                .then(|| ipv4_at(bytes, start))
                .flatten();
            if let Some(end) = end {
                found.push(&text[start..end]);
            }
            pos = digit_run_end(bytes, start);
        }
        found
    }

    fn ipv6_in(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find_ipv6(text.as_bytes(), &mut out);
        out.iter().map(|c| &text[c.start..c.end]).collect()
    }

    #[test]
    fn ipv4_cases() {
        let cases: &[(&str, &[&str])] = &[
            ("host 192.168.1.1 is up", &["192.168.1.1"]),
            ("0.0.0.0", &["0.0.0.0"]),
            ("255.255.255.255.", &["255.255.255.255"]),
            ("10.0.0.1:8080", &["10.0.0.1"]),
            ("10.0.0.0/8", &["10.0.0.0"]),
            ("256.1.1.1", &[]),
            ("1.2.3", &[]),
            ("1.2.3.4.5", &[]),
            ("v1.2.3.4", &[]),
            ("01.2.3.4", &[]),
            ("1.02.3.4", &[]),
            ("1.2.3.4a", &[]),
            ("1.2.3.1000", &[]),
            ("1..2.3.4", &[]),
        ];
        for &(text, expected) in cases {
            assert_eq!(ipv4_in(text), expected, "{text:?}");
        }
    }

    #[test]
    fn ipv6_cases() {
        let cases: &[(&str, &[&str])] = &[
            (
                "addr 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here",
                &["2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
            ),
            ("ping 2001:db8::1.", &["2001:db8::1"]),
            ("loopback ::1", &["::1"]),
            ("fe80::1%eth0", &["fe80::1"]),
            ("[2001:db8::1]:8080", &["2001:db8::1"]),
            ("::ffff:192.168.1.1", &["::ffff:192.168.1.1"]),
            ("ip:2001:db8::1", &["2001:db8::1"]),
            ("at 2001:db8::1: reachable", &["2001:db8::1"]),
            ("FE80::ABCD:1", &["FE80::ABCD:1"]),
            ("meet at 12:30", &[]),
            ("12:30:45", &[]),
            ("::", &[]),
            ("use std::vec", &[]),
            ("a::b", &[]),
            ("00:1a:2b:3c:4d:5e", &[]),
            ("2001:db8::1x", &[]),
            ("x2001:db8::1", &[]),
            ("1:2:3:4:5:6:7:8:9", &[]),
            ("evens = a[::2]", &[]),
            ("step a[1::2] or b[10::20]", &[]),
            ("range 1::abc", &["1::abc"]),
            ("host [::1]:8080", &["::1"]),
        ];
        for &(text, expected) in cases {
            assert_eq!(ipv6_in(text), expected, "{text:?}");
        }
    }
}
