//! Streaming hold-back: how many bytes at the end of a text could still become part of a
//! match, or the context that confirms one, once more text arrives.
//!
//! The estimate is conservative. It covers the trailing run of token bytes (ASCII letters,
//! digits and `@ . - _ + ( ) : / = % ~`), which may contain single spaces between groups
//! of digits or upper-case letters (`4111 1111`, `DE89 3704`, `(415) 555`). The hold-back
//! then extends back over a preceding `Bearer` keyword and over an unterminated PEM
//! block. When the text ends in a digit run that could grow into a bare SSN, it also
//! covers the SSN context window. Custom matches that touch the end, or whose context
//! window is still open, are held with the window before them.
//!
//! NOTE: a custom pattern that matches across spaces or newlines is held back only when
//! it already matches the text, so a partial match that contains a space may be split.

use super::boundary::{floor_char_boundary, starts_token};
use super::custom::{CONTEXT_WINDOW, CustomRecognizer};
use super::numbers::SSN_CONTEXT_WINDOW;
use super::secrets::unterminated_pem_start;
use super::{BuiltinEntity, Scanner};

/// Maximum length in bytes of the trailing token run that is held back. Emails (at most
/// 318 bytes), card numbers, IBANs and API keys fit with room to spare. PEM blocks are
/// held up to `secrets::MAX_PEM_LEN` instead.
///
/// NOTE: a JWT or bearer token longer than this is split, and its first part is not
/// recognized.
pub(super) const MAX_TOKEN_TAIL: usize = 8 * 1024;
/// Maximum number of spaces or tabs between `Bearer` and the held-back run.
const MAX_BEARER_GAP: usize = 8;

pub(super) fn pending_tail_len(scanner: &Scanner, text: &str) -> usize {
    let bytes = text.as_bytes();
    let run_start = token_run_start(bytes);
    let mut start = run_start;

    if scanner.builtins.contains(BuiltinEntity::Secret) {
        start = start.min(bearer_keyword_start(bytes, run_start));
        if let Some(begin) = unterminated_pem_start(bytes) {
            start = start.min(begin);
        }
    }
    if scanner.builtins.contains(BuiltinEntity::UsSsn) {
        let digits_start = bytes.len()
            - bytes
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_digit())
                .count();
        let may_become_bare_ssn =
            (1..=9).contains(&(bytes.len() - digits_start)) && starts_token(bytes, digits_start);
        if may_become_bare_ssn {
            start = start.min(digits_start.saturating_sub(SSN_CONTEXT_WINDOW));
        }
    }
    for custom in &scanner.custom {
        if let Some(held) = custom_pending_start(custom, text) {
            start = start.min(held);
        }
    }
    text.len() - floor_char_boundary(text, start)
}

/// Returns the start of the trailing run of token bytes, at most [`MAX_TOKEN_TAIL`] long.
fn token_run_start(bytes: &[u8]) -> usize {
    let limit = bytes.len().saturating_sub(MAX_TOKEN_TAIL);
    let mut start = bytes.len();
    while start > limit {
        let b = bytes[start - 1];
        let joins = is_tail_token_byte(b) || (b == b' ' && space_joins_groups(bytes, start - 1));
        if !joins {
            break;
        }
        start -= 1;
    }
    start
}

/// Returns whether the space at `space` separates groups of a grouped number or IBAN: a
/// digit, upper-case letter or `)` before it, and a digit, upper-case letter, `(` or the
/// end of the text after it.
fn space_joins_groups(bytes: &[u8], space: usize) -> bool {
    let before = space.checked_sub(1).map(|i| bytes[i]);
    let after = bytes.get(space + 1).copied();
    let joins_before =
        before.is_some_and(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b')');
    let joins_after =
        after.is_none_or(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b'(');
    joins_before && joins_after
}

fn is_tail_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'@' | b'.' | b'-' | b'_' | b'+' | b'(' | b')' | b':' | b'/' | b'=' | b'%' | b'~'
        )
}

/// Returns the start of a `Bearer` keyword that precedes `run_start` after spaces or
/// tabs, or `run_start` when there is none.
fn bearer_keyword_start(bytes: &[u8], run_start: usize) -> usize {
    let gap_limit = run_start.saturating_sub(MAX_BEARER_GAP);
    let mut keyword_end = run_start;
    while keyword_end > gap_limit && matches!(bytes[keyword_end - 1], b' ' | b'\t') {
        keyword_end -= 1;
    }
    let Some(keyword_start) = keyword_end.checked_sub("bearer".len()) else {
        return run_start;
    };
    let is_keyword = keyword_end < run_start
        && bytes[keyword_start..keyword_end].eq_ignore_ascii_case(b"bearer");
    if is_keyword { keyword_start } else { run_start }
}

/// Returns where to hold back from for a custom match near the end of `text`: one that
/// ends at the end (it may grow) or, with context words, one whose window after it is
/// not complete yet. The hold-back then includes the window before the match.
fn custom_pending_start(custom: &CustomRecognizer, text: &str) -> Option<usize> {
    let region_start = floor_char_boundary(text, text.len().saturating_sub(MAX_TOKEN_TAIL));
    let reach = if custom.has_context_words() {
        CONTEXT_WINDOW
    } else {
        0
    };
    custom
        .pattern
        .find_iter(&text[region_start..])
        .filter(|found| !found.is_empty())
        .map(|found| (region_start + found.start(), region_start + found.end()))
        .find(|&(_, end)| end + reach >= text.len())
        .map(|(start, _)| start.saturating_sub(reach))
}

#[cfg(test)]
mod tests {
    use super::super::{BuiltinEntity, CustomEntity, Scanner};

    fn all_builtins() -> Scanner {
        Scanner::new(&BuiltinEntity::ALL, &[]).expect("builtin scanner builds")
    }

    /// Returns the held-back suffix of `text`.
    fn held<'a>(scanner: &Scanner, text: &'a str) -> &'a str {
        let len = scanner.pending_tail_len(text);
        &text[text.len() - len..]
    }

    #[test]
    fn holds_partial_entities() {
        // Without US_SSN, so that trailing digits do not extend the hold-back by the SSN
        // context window.
        let no_ssn: Vec<BuiltinEntity> = BuiltinEntity::ALL
            .into_iter()
            .filter(|&entity| entity != BuiltinEntity::UsSsn)
            .collect();
        let scanner = Scanner::new(&no_ssn, &[]).expect("scanner builds");
        let cases = [
            ("write to jane.doe@exam", "jane.doe@exam"),
            ("card 4111 1111 1111 ", "4111 1111 1111 "),
            ("card 4111-1111-11", "4111-1111-11"),
            ("iban DE89 3704 0044 05", "DE89 3704 0044 05"),
            ("call (415) 555-26", "(415) 555-26"),
            ("call +44 20 79", "+44 20 79"),
            ("token ghp_abc", "ghp_abc"),
            ("ip 2001:db8:", "2001:db8:"),
            ("Authorization: Bearer ", "Bearer "),
            ("Authorization: Bearer eyJhbGciOi", "Bearer eyJhbGciOi"),
            ("Hello world.", "world."),
            ("Hello world. ", ""),
            ("", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(held(&scanner, text), expected, "{text:?}");
        }
    }

    #[test]
    fn holds_ssn_context_before_digits() {
        let scanner = all_builtins();
        let text = "my ssn is 1234";
        assert_eq!(held(&scanner, text), text);
        let only_email = Scanner::new(&[BuiltinEntity::Email], &[]).expect("scanner builds");
        assert_eq!(held(&only_email, text), "1234");
        let grouped = format!("{} 4111-1111-11", "x".repeat(40));
        assert_eq!(held(&scanner, &grouped), "4111-1111-11", "not a bare SSN");
        let long_digits = format!("{} 1234567890", "x".repeat(40));
        assert_eq!(
            held(&scanner, &long_digits),
            "1234567890",
            "too long for an SSN"
        );
    }

    #[test]
    fn holds_unterminated_pem_block() {
        let scanner = all_builtins();
        let text = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcN\nLYLInFEX6";
        assert_eq!(held(&scanner, text), &text[5..]);
        let closed = format!("{text}\n-----END RSA PRIVATE KEY-----\nDone.");
        assert_eq!(held(&scanner, &closed), "Done.");
    }

    #[test]
    fn caps_long_runs() {
        let scanner = Scanner::new(&[BuiltinEntity::Email], &[]).expect("scanner builds");
        let text = format!("blob {}", "A".repeat(super::MAX_TOKEN_TAIL + 100));
        assert_eq!(scanner.pending_tail_len(&text), super::MAX_TOKEN_TAIL);
    }

    #[test]
    fn tail_is_char_boundary() {
        let scanner = all_builtins();
        let cases = [
            "价格 1234",
            "日本語",
            "emoji 😀",
            "ssn 😀😀😀😀😀😀😀😀 123",
        ];
        for text in cases {
            let len = scanner.pending_tail_len(text);
            assert!(len <= text.len(), "{text:?}");
            assert!(text.is_char_boundary(text.len() - len), "{text:?}");
        }
    }

    #[test]
    fn holds_custom_context_window() {
        let custom = CustomEntity {
            name: "ORDER_ID".to_owned(),
            pattern: r"\bORD \d{4}\b".to_owned(),
            context_words: vec!["order".to_owned()],
        };
        let scanner = Scanner::new(&[], &[custom]).expect("scanner builds");
        let text = format!("{} ORD 1234 and then", "x".repeat(100));
        let match_start = 101;
        assert_eq!(
            scanner.pending_tail_len(&text),
            text.len() - (match_start - 64)
        );

        let without_context = CustomEntity {
            name: "ORDER_ID".to_owned(),
            pattern: r"ORD \d+".to_owned(),
            context_words: Vec::new(),
        };
        let scanner = Scanner::new(&[], &[without_context]).expect("scanner builds");
        assert_eq!(held(&scanner, "see ORD 12"), "ORD 12");
        assert_eq!(held(&scanner, "see ORD 12, ok"), "ok");
    }
}
