//! SECRET: credentials with a recognizable prefix or structure.
//!
//! One Aho-Corasick search finds the prefixes, and a check per kind validates the rest.
//! Every secret must start and end on a boundary of its own character set, so a prefix
//! inside a longer token (`xAKIA…`, `task-…`) does not match.
//!
//! Accepted forms:
//!
//! - AWS access key id: `AKIA`, `ASIA`, `ABIA` or `ACCA`, then exactly 16 of `[A-Z0-9]`.
//! - GitHub token: `ghp_`, `gho_`, `ghu_`, `ghs_` or `ghr_`, then exactly 36 of
//!   `[A-Za-z0-9]`.
//! - GitHub fine-grained token: `github_pat_`, then exactly 82 of `[A-Za-z0-9_]`.
//! - PEM private key: `-----BEGIN <label>-----` whose label contains `PRIVATE KEY`,
//!   through the matching `-----END <label>-----`. The whole block is the match.
//! - JWT (and JWE): 3 to 5 base64url segments joined by dots, the first starting with
//!   `eyJ` and at least 10 long.
//! - Bearer token: the token after `Bearer`, `bearer` or `BEARER` and spaces or tabs, at
//!   least 16 of `[A-Za-z0-9._~+/-]` plus `=` padding and not all lower-case letters. The
//!   keyword stays outside the match.
//! - Slack token: `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-` or `xoxs-`, then at least 10 of
//!   `[A-Za-z0-9-]` with a digit among them.
//! - OpenAI-style key: `sk-`, then at least 20 of `[A-Za-z0-9_-]` with an upper-case
//!   letter, a lower-case letter and a digit among them. This keeps words such as
//!   `sk-learn-compatible-estimators` out.
//! - Stripe live key: `sk_live_` or `rk_live_`, then at least 20 of `[A-Za-z0-9]`.
//! - Google API key: `AIza`, then exactly 35 of `[A-Za-z0-9_-]`.
//!
//! Unsigned JWTs, whose last segment is empty, are not matched.

use aho_corasick::{AhoCorasick, BuildError, Input, MatchKind};
use memchr::memmem;

use super::boundary::{is_word_byte, run_end};
use super::{BuiltinEntity, Candidate};

/// Maximum length in bytes of a PEM block, header and footer included. An RSA 8192-bit
/// private key from `openssl genrsa -traditional 8192` (OpenSSL 3) is 6,363 bytes.
pub(super) const MAX_PEM_LEN: usize = 16 * 1024;
const MAX_PEM_LABEL_LEN: usize = 64;
const PEM_BEGIN: &[u8] = b"-----BEGIN ";
const PEM_END: &[u8] = b"-----END ";
const PEM_DASHES: &[u8] = b"-----";
const MIN_JWT_HEADER_LEN: usize = 10;
const MAX_JWT_SEGMENTS: usize = 5;
const MIN_BEARER_TOKEN_LEN: usize = 16;

#[derive(Clone, Copy, Debug)]
enum SecretKind {
    AwsAccessKeyId,
    GitHubToken,
    GitHubFineGrainedToken,
    PemPrivateKey,
    Jwt,
    BearerToken,
    SlackToken,
    OpenAiKey,
    StripeLiveKey,
    GoogleApiKey,
}

const PREFIXES: [(&str, SecretKind); 24] = [
    ("AKIA", SecretKind::AwsAccessKeyId),
    ("ASIA", SecretKind::AwsAccessKeyId),
    ("ABIA", SecretKind::AwsAccessKeyId),
    ("ACCA", SecretKind::AwsAccessKeyId),
    ("ghp_", SecretKind::GitHubToken),
    ("gho_", SecretKind::GitHubToken),
    ("ghu_", SecretKind::GitHubToken),
    ("ghs_", SecretKind::GitHubToken),
    ("ghr_", SecretKind::GitHubToken),
    ("github_pat_", SecretKind::GitHubFineGrainedToken),
    ("-----BEGIN ", SecretKind::PemPrivateKey),
    ("eyJ", SecretKind::Jwt),
    ("Bearer", SecretKind::BearerToken),
    ("bearer", SecretKind::BearerToken),
    ("BEARER", SecretKind::BearerToken),
    ("xoxb-", SecretKind::SlackToken),
    ("xoxa-", SecretKind::SlackToken),
    ("xoxp-", SecretKind::SlackToken),
    ("xoxr-", SecretKind::SlackToken),
    ("xoxs-", SecretKind::SlackToken),
    ("sk-", SecretKind::OpenAiKey),
    ("sk_live_", SecretKind::StripeLiveKey),
    ("rk_live_", SecretKind::StripeLiveKey),
    ("AIza", SecretKind::GoogleApiKey),
];

/// Prefix search for all secret kinds, built once per scanner.
#[derive(Debug)]
pub(super) struct SecretFinder {
    prefixes: AhoCorasick,
}

impl SecretFinder {
    pub(super) fn new() -> Result<Self, BuildError> {
        let prefixes = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(PREFIXES.iter().map(|(prefix, _)| prefix))?;
        Ok(Self { prefixes })
    }

    /// Appends the secrets in `bytes` to `out`.
    pub(super) fn find(&self, bytes: &[u8], out: &mut Vec<Candidate>) {
        let mut pos = 0;
        while pos < bytes.len() {
            let input = Input::new(bytes).span(pos..bytes.len());
            let Some(found) = self.prefixes.find(input) else {
                break;
            };
            pos = found.end();
            let kind = PREFIXES[found.pattern().as_usize()].1;
            if let Some((start, end)) = validate(kind, bytes, found.start()) {
                out.push(Candidate::builtin(BuiltinEntity::Secret, start, end));
                // Prefixes inside a found secret (`eyJ` in a bearer token) would only
                // yield shorter, overlapping candidates.
                pos = pos.max(end);
            }
        }
    }
}

/// Returns the span of a secret of `kind` whose prefix starts at `start`.
fn validate(kind: SecretKind, bytes: &[u8], start: usize) -> Option<(usize, usize)> {
    let whole = |end: Option<usize>| end.map(|end| (start, end));
    match kind {
        SecretKind::AwsAccessKeyId => whole(fixed_token(
            bytes,
            start,
            4,
            16,
            |b| b.is_ascii_uppercase() || b.is_ascii_digit(),
            is_word_byte,
        )),
        SecretKind::GitHubToken => whole(fixed_token(
            bytes,
            start,
            4,
            36,
            |b| b.is_ascii_alphanumeric(),
            is_word_byte,
        )),
        SecretKind::GitHubFineGrainedToken => whole(fixed_token(
            bytes,
            start,
            11,
            82,
            is_word_byte,
            is_word_byte,
        )),
        SecretKind::GoogleApiKey => whole(fixed_token(
            bytes,
            start,
            4,
            35,
            is_base64url_byte,
            is_base64url_byte,
        )),
        SecretKind::PemPrivateKey => whole(pem_private_key(bytes, start)),
        SecretKind::Jwt => whole(jwt(bytes, start)),
        SecretKind::BearerToken => bearer_token(bytes, start),
        SecretKind::SlackToken => {
            let (body, end) = open_token(bytes, start, 5, 10, is_slack_byte, is_word_byte)?;
            let body = &bytes[body..end];
            body.iter().any(u8::is_ascii_digit).then_some((start, end))
        }
        SecretKind::OpenAiKey => {
            let (body, end) =
                open_token(bytes, start, 3, 20, is_base64url_byte, is_base64url_byte)?;
            let body = &bytes[body..end];
            let mixed = body.iter().any(u8::is_ascii_uppercase)
                && body.iter().any(u8::is_ascii_lowercase)
                && body.iter().any(u8::is_ascii_digit);
            mixed.then_some((start, end))
        }
        SecretKind::StripeLiveKey => {
            let (_, end) = open_token(
                bytes,
                start,
                8,
                20,
                |b| b.is_ascii_alphanumeric(),
                is_word_byte,
            )?;
            Some((start, end))
        }
    }
}

/// Returns the end of a `prefix_len`-byte prefix followed by exactly `body_len` bytes in
/// `body`, when no `edge` byte touches either end.
fn fixed_token(
    bytes: &[u8],
    start: usize,
    prefix_len: usize,
    body_len: usize,
    body: fn(u8) -> bool,
    edge: fn(u8) -> bool,
) -> Option<usize> {
    let body_start = start + prefix_len;
    let end = body_start + body_len;
    let valid = !preceded_by(bytes, start, edge)
        && bytes.get(body_start..end)?.iter().all(|&b| body(b))
        && !bytes.get(end).is_some_and(|&b| edge(b));
    valid.then_some(end)
}

/// Returns the body start and end of a `prefix_len`-byte prefix followed by at least
/// `min_body_len` bytes in `body`, when no `edge` byte touches either end.
fn open_token(
    bytes: &[u8],
    start: usize,
    prefix_len: usize,
    min_body_len: usize,
    body: fn(u8) -> bool,
    edge: fn(u8) -> bool,
) -> Option<(usize, usize)> {
    let body_start = start + prefix_len;
    let end = run_end(bytes, body_start, body);
    let valid = !preceded_by(bytes, start, edge)
        && end - body_start >= min_body_len
        && !bytes.get(end).is_some_and(|&b| edge(b));
    valid.then_some((body_start, end))
}

/// Returns the end of a PEM private key block whose `-----BEGIN ` starts at `start`.
///
/// Without a matching footer within [`MAX_PEM_LEN`] bytes the block is taken to be
/// truncated, and the match covers the header and the base64 lines after it.
fn pem_private_key(bytes: &[u8], start: usize) -> Option<usize> {
    let label_start = start + PEM_BEGIN.len();
    let label_len = bytes[label_start..]
        .iter()
        .take(MAX_PEM_LABEL_LEN + 1)
        .take_while(|&&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
        .count();
    let label_end = label_start + label_len;
    let label = &bytes[label_start..label_end];
    let header_end = label_end + PEM_DASHES.len();
    if label_len > MAX_PEM_LABEL_LEN
        || memmem::find(label, b"PRIVATE KEY").is_none()
        || bytes.get(label_end..header_end) != Some(PEM_DASHES)
    {
        return None;
    }

    let limit = (start + MAX_PEM_LEN).min(bytes.len());
    let mut footer = Vec::with_capacity(PEM_END.len() + label_len + PEM_DASHES.len());
    footer.extend_from_slice(PEM_END);
    footer.extend_from_slice(label);
    footer.extend_from_slice(PEM_DASHES);
    let end = match memmem::find(&bytes[header_end..limit], &footer) {
        Some(offset) => header_end + offset + footer.len(),
        None => truncated_pem_end(bytes, header_end, limit),
    };
    Some(end)
}

/// Returns the end of the lines that can belong to a PEM body without footer: optional
/// `Name: value` header lines, one blank line after them, then base64 lines. Lines end at
/// a line feed, a carriage return, or an escaped `\n` or `\r` as in JSON text.
fn truncated_pem_end(bytes: &[u8], header_end: usize, limit: usize) -> usize {
    let mut end = header_end;
    let mut pos = header_end;
    let mut in_headers = true;
    let mut blank_allowed = false;
    while let Some(line_start) = line_break_end(bytes, pos, limit) {
        let line_end = line_start
            + bytes[line_start..limit]
                .iter()
                .take_while(|&&b| !matches!(b, b'\n' | b'\r' | b'\\'))
                .count();
        let line = bytes[line_start..line_end].trim_ascii_end();
        if line.is_empty() {
            if !blank_allowed {
                break;
            }
            blank_allowed = false;
        } else if in_headers && is_pem_header_line(line) {
            end = line_start + line.len();
            blank_allowed = true;
        } else if line.iter().all(|&b| is_base64_byte(b)) {
            end = line_start + line.len();
            in_headers = false;
            blank_allowed = false;
        } else {
            break;
        }
        pos = line_end;
    }
    end
}

/// Returns the position after the line break at `pos`, if there is one before `limit`.
fn line_break_end(bytes: &[u8], pos: usize, limit: usize) -> Option<usize> {
    let rest = &bytes[pos..limit];
    let break_len = [&b"\r\n"[..], b"\n", b"\r", b"\\r\\n", b"\\n", b"\\r"]
        .iter()
        .find(|line_break| rest.starts_with(line_break))?
        .len();
    Some(pos + break_len)
}

fn is_pem_header_line(line: &[u8]) -> bool {
    line.contains(&b':') && line.iter().all(|&b| b.is_ascii_graphic() || b == b' ')
}

/// Returns the start of a `-----BEGIN ` in the last [`MAX_PEM_LEN`] bytes that no
/// complete `-----END …-----` line follows yet.
pub(super) fn unterminated_pem_start(bytes: &[u8]) -> Option<usize> {
    let region_start = bytes.len().saturating_sub(MAX_PEM_LEN);
    let begin = region_start + memmem::rfind(&bytes[region_start..], PEM_BEGIN)?;
    let after_begin = begin + PEM_BEGIN.len();
    let terminated = memmem::find(&bytes[after_begin..], PEM_END).is_some_and(|offset| {
        let label_start = after_begin + offset + PEM_END.len();
        memmem::find(&bytes[label_start..], PEM_DASHES).is_some()
    });
    (!terminated).then_some(begin)
}

/// Returns the end of a JWT (or JWE) whose `eyJ` header starts at `start`.
fn jwt(bytes: &[u8], start: usize) -> Option<usize> {
    if preceded_by(bytes, start, is_base64url_byte) {
        return None;
    }
    let mut end = run_end(bytes, start, is_base64url_byte);
    if end - start < MIN_JWT_HEADER_LEN {
        return None;
    }
    let mut segments = 1;
    while segments < MAX_JWT_SEGMENTS && bytes.get(end) == Some(&b'.') {
        let segment_end = run_end(bytes, end + 1, is_base64url_byte);
        if segment_end == end + 1 {
            break;
        }
        end = segment_end;
        segments += 1;
    }
    (segments >= 3).then_some(end)
}

/// Returns the span of the token after the `Bearer` keyword at `start`. The keyword
/// itself stays outside the match.
fn bearer_token(bytes: &[u8], start: usize) -> Option<(usize, usize)> {
    if preceded_by(bytes, start, is_word_byte) {
        return None;
    }
    let keyword_end = start + "Bearer".len();
    let token_start = run_end(bytes, keyword_end, |b| b == b' ' || b == b'\t');
    if token_start == keyword_end {
        return None;
    }
    let mut token_end = run_end(bytes, token_start, is_b64token_byte);
    // A dot at the end is sentence punctuation.
    while token_end > token_start && bytes[token_end - 1] == b'.' {
        token_end -= 1;
    }
    if token_end - token_start < MIN_BEARER_TOKEN_LEN {
        return None;
    }
    let token = &bytes[token_start..token_end];
    if token.iter().all(u8::is_ascii_lowercase) {
        return None;
    }
    let end = run_end(bytes, token_end, |b| b == b'=');
    (!bytes.get(end).is_some_and(|&b| is_word_byte(b))).then_some((token_start, end))
}

fn preceded_by(bytes: &[u8], start: usize, class: fn(u8) -> bool) -> bool {
    start.checked_sub(1).is_some_and(|i| class(bytes[i]))
}

fn is_base64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// Returns whether `b` belongs to the `b64token` syntax of RFC 6750 (without padding).
fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

fn is_slack_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM_BLOCK: &str = "-----BEGIN RSA PRIVATE KEY-----\n\
        MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n\
        KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n\
        -----END RSA PRIVATE KEY-----";

    fn secrets_in(text: &str) -> Vec<&str> {
        let finder = SecretFinder::new().expect("the fixed prefix list builds");
        let mut out = Vec::new();
        finder.find(text.as_bytes(), &mut out);
        out.iter().map(|c| &text[c.start..c.end]).collect()
    }

    #[test]
    fn accepted_secrets() {
        let github = format!("ghp_{}", "aB3".repeat(12));
        let github_pat = format!("github_pat_{}", "A1_b".repeat(20) + "Zz");
        let google = format!("AIza{}", "Sy-_0".repeat(7));
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let cases: Vec<(String, String)> = vec![
            (
                "key AKIAIOSFODNN7EXAMPLE".into(),
                "AKIAIOSFODNN7EXAMPLE".into(),
            ),
            (
                "ASIAY34FZKBOKMUTVV7A,".into(),
                "ASIAY34FZKBOKMUTVV7A".into(),
            ),
            (format!("token={github}"), github.clone()),
            (format!("\"{github_pat}\""), github_pat.clone()),
            (format!("key: {google}"), google.clone()),
            (format!("jwt {jwt}."), jwt.into()),
            (format!("Authorization: Bearer {jwt}"), jwt.into()),
            (
                "Authorization: Bearer abcDEF1234567890xyz=".into(),
                "abcDEF1234567890xyz=".into(),
            ),
            (
                "bearer  mF_9.B5f-4.1JqM_extra.".into(),
                "mF_9.B5f-4.1JqM_extra".into(),
            ),
            (
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx".into(),
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx".into(),
            ),
            (
                "OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5q".into(),
                "sk-proj-Ab3dEf6hIj9kLm2nOp5q".into(),
            ),
            (
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc".into(),
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc".into(),
            ),
            (format!("key:\n{PEM_BLOCK}\nthanks"), PEM_BLOCK.into()),
        ];
        for (text, expected) in &cases {
            assert_eq!(secrets_in(text), [expected.as_str()], "{text:?}");
        }
    }

    #[test]
    fn rejected_secrets() {
        let cases = [
            "xAKIAIOSFODNN7EXAMPLE",
            "AKIAIOSFODNN7EXAMPLEX",
            "AKIAiosfodnn7example",
            "ASIAN MARKETS",
            "ghp_short",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.",
            "eyJhbG.eyJzdWIiOiIxIn0.sig",
            "Bearer short123",
            "bearer bonds",
            "Bearer authenticationmechanisms",
            "Bearer\nabcDEF1234567890xyz",
            "Bearer abcDEF1234567890xyz=x",
            "xoxb-abcdefghijkl",
            "sk-learn-compatible-estimators",
            "task-Ab3dEf6hIj9kLm2nOp5q7",
            "sk-Ab3dEf6",
            "sk_live_short",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "AIzaTooShort",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----",
        ];
        for text in cases {
            assert_eq!(secrets_in(text), Vec::<&str>::new(), "{text:?}");
        }
    }

    #[test]
    fn pem_truncated_block() {
        let cases = [
            (
                "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQ\n\nThanks for the help",
                "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQ",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIB\\nAwEHoUQDQgAE\\n\"}",
                "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIB\\nAwEHoUQDQgAE",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17\n\nMIIEpAIBAAK\nNote: done",
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17\n\nMIIEpAIBAAK",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----",
                "-----BEGIN OPENSSH PRIVATE KEY-----",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(secrets_in(text), [expected], "{text:?}");
        }
    }

    #[test]
    fn pem_footer_must_match_label() {
        let text = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END EC PRIVATE KEY-----\nok";
        assert_eq!(secrets_in(text), ["-----BEGIN RSA PRIVATE KEY-----\nMIIB"]);
    }

    #[test]
    fn unterminated_pem_start_cases() {
        let cases = [
            ("text -----BEGIN RSA PRIVATE KEY-----\nMIIB", Some(5)),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
                None,
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIV",
                Some(0),
            ),
            ("no key here", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                unterminated_pem_start(text.as_bytes()),
                expected,
                "{text:?}"
            );
        }
    }
}
