//! EMAIL: practical addresses of the form `local@domain.tld`.
//!
//! The local part is 1 to 64 ASCII letters, digits and `. _ % + -`, without a leading,
//! trailing or doubled dot. The domain has at least two dot-separated labels of ASCII
//! letters, digits and inner hyphens (1 to 63 bytes each, 253 in all), and the last label
//! (the TLD) is at least two letters. Dots and hyphens after the domain are punctuation
//! and stay outside the match (`write to a.b@example.com.` matches `a.b@example.com`).
//!
//! Not recognized: quoted local parts, IP-literal domains (`a@[10.0.0.1]`) and
//! internationalized addresses with non-ASCII characters.

use memchr::memchr_iter;

use super::{BuiltinEntity, Candidate};

const MAX_LOCAL_LEN: usize = 64;
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Appends the email addresses in `bytes` to `out`.
pub(super) fn find(bytes: &[u8], out: &mut Vec<Candidate>) {
    for at in memchr_iter(b'@', bytes) {
        let Some(start) = local_part_start(bytes, at) else {
            continue;
        };
        if let Some(end) = domain_end(bytes, at + 1) {
            out.push(Candidate::builtin(BuiltinEntity::Email, start, end));
        }
    }
}

/// Returns the start of the local part that ends at the `@` at `at`.
fn local_part_start(bytes: &[u8], at: usize) -> Option<usize> {
    let mut start = at;
    // Walking one byte past the limit distinguishes a too-long local part from one that
    // fits exactly.
    while start > 0 && at - start <= MAX_LOCAL_LEN && is_local_byte(bytes[start - 1]) {
        start -= 1;
    }
    if at - start > MAX_LOCAL_LEN {
        return None;
    }
    while start < at && bytes[start] == b'.' {
        start += 1;
    }
    let local = &bytes[start..at];
    let well_formed = !local.is_empty() && !local.ends_with(b".") && !contains_pair(local, b"..");
    well_formed.then_some(start)
}

/// Returns the end of a valid domain that starts at `start`, without trailing dots and
/// hyphens.
fn domain_end(bytes: &[u8], start: usize) -> Option<usize> {
    let run = bytes[start..]
        .iter()
        .take(MAX_DOMAIN_LEN + 1)
        .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        .count();
    let mut domain = &bytes[start..start + run];
    if let Some(double_dot) = domain.windows(2).position(|pair| pair == b"..") {
        domain = &domain[..double_dot];
    }
    while let [rest @ .., b'.' | b'-'] = domain {
        domain = rest;
    }
    let end = start + domain.len();
    let followed_by_word = bytes.get(end).is_some_and(|&b| b == b'_' || b == b'@');
    if domain.is_empty() || domain.len() > MAX_DOMAIN_LEN || followed_by_word {
        return None;
    }

    let mut labels = domain.split(|&b| b == b'.').peekable();
    let mut label_count = 0;
    while let Some(label) = labels.next() {
        label_count += 1;
        let well_formed = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with(b"-")
            && !label.ends_with(b"-");
        if !well_formed {
            return None;
        }
        let is_tld = labels.peek().is_none();
        if is_tld && (label.len() < 2 || !label.iter().all(u8::is_ascii_alphabetic)) {
            return None;
        }
    }
    (label_count >= 2).then_some(end)
}

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn contains_pair(bytes: &[u8], pair: &[u8; 2]) -> bool {
    bytes.windows(2).any(|window| window == pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emails_in(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find(text.as_bytes(), &mut out);
        out.iter().map(|c| &text[c.start..c.end]).collect()
    }

    #[test]
    fn email_cases() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let max_local = format!("{}@example.com", "a".repeat(64));
        let cases: &[(&str, &[&str])] = &[
            ("mail me at a.b@example.com.", &["a.b@example.com"]),
            (
                "jane.doe+tag@mail.example.co.uk",
                &["jane.doe+tag@mail.example.co.uk"],
            ),
            (
                "first_last-1@sub-domain.example.org",
                &["first_last-1@sub-domain.example.org"],
            ),
            ("<bob@example.com>", &["bob@example.com"]),
            ("mailto:bob@example.com?subject=x", &["bob@example.com"]),
            ("...bob@example.com", &["bob@example.com"]),
            ("bob@example.com-", &["bob@example.com"]),
            ("bob@example.com...", &["bob@example.com"]),
            ("联系bob@example.com谢谢", &["bob@example.com"]),
            ("a@b.c", &[]),
            ("a@localhost", &[]),
            ("a@example.c0m", &[]),
            ("a@-example.com", &[]),
            ("a@example-.com", &[]),
            ("a..b@example.com", &[]),
            ("a.@example.com", &[]),
            ("@mention", &[]),
            ("user@", &[]),
            ("a@b..com", &[]),
            ("a@example.com_x", &[]),
            ("a@[10.0.0.1]", &[]),
            (&long_local, &[]),
            (&max_local, &[max_local.as_str()]),
        ];
        for &(text, expected) in cases {
            assert_eq!(emails_in(text), expected, "{text:?}");
        }
    }
}
