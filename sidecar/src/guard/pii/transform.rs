//! Replacements for matched values, used by the redact, mask and hash actions.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Number of HMAC bytes shown in a hash token (12 hex characters, 48 bits).
const TOKEN_BYTES: usize = 6;

/// Returns the typed placeholder for a redacted value, such as `[EMAIL]`.
pub fn redact_placeholder(entity_name: &str) -> String {
    format!("[{entity_name}]")
}

/// Replaces every alphanumeric character of `value` with `mask_char`, except the last
/// `keep_trailing_chars` alphanumeric characters.
///
/// Separators and other non-alphanumeric characters stay in place, so the shape of the
/// value survives (`4111-1111-1111-1111` with 4 kept becomes `****-****-****-1111`).
/// Counts are in chars, not bytes, and "alphanumeric" follows [`char::is_alphanumeric`].
pub fn mask(value: &str, keep_trailing_chars: usize, mask_char: char) -> String {
    let alphanumeric = value.chars().filter(|c| c.is_alphanumeric()).count();
    let to_mask = alphanumeric.saturating_sub(keep_trailing_chars);
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !c.is_alphanumeric() {
                return c;
            }
            seen += 1;
            if seen <= to_mask { mask_char } else { c }
        })
        .collect()
}

/// Secret key for hash tokens: HMAC-SHA256 keyed with bytes from the deployment.
///
/// `Debug` prints no key material.
#[derive(Clone)]
pub struct HashKey(Hmac<Sha256>);

impl HashKey {
    /// Creates a key from secret bytes of any length.
    pub fn new(key: &[u8]) -> Self {
        let mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        Self(mac)
    }

    /// Returns a stable keyed token for `value`, such as `[EMAIL:3f9a1c2b7d4e]`.
    ///
    /// The hex part is the first 6 bytes of HMAC-SHA256(key, value). It depends on the
    /// value only, so one value gets the same hex under every entity name. Without the
    /// key, the token does not reveal the value, but 48 bits can collide across many
    /// distinct values.
    pub fn token(&self, entity_name: &str, value: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("[{entity_name}:{}]", hex::encode(&digest[..TOKEN_BYTES]))
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_placeholder_wraps_name() {
        assert_eq!(redact_placeholder("EMAIL"), "[EMAIL]");
        assert_eq!(redact_placeholder("EMPLOYEE_ID"), "[EMPLOYEE_ID]");
    }

    #[test]
    fn mask_cases() {
        let cases = [
            ("4111-1111-1111-1111", 4, '*', "****-****-****-1111"),
            ("a.b@example.com", 3, '#', "#.#@#######.com"),
            ("415 555 2671", 0, '*', "*** *** ****"),
            ("ab", 5, '*', "ab"),
            ("", 2, '*', ""),
            ("日本語テキスト42", 2, '×', "×××××××42"),
            ("(415) 555-2671", 4, '•', "(•••) •••-2671"),
            ("😀a1", 1, '*', "😀*1"),
        ];
        for (value, keep, mask_char, expected) in cases {
            assert_eq!(
                mask(value, keep, mask_char),
                expected,
                "{value:?} keep {keep}"
            );
        }
    }

    #[test]
    fn hash_token_format_and_stability() {
        let key = HashKey::new(b"test key");
        let token = key.token("EMAIL", "a.b@example.com");
        assert_eq!(token, key.token("EMAIL", "a.b@example.com"));
        let hex_part = token
            .strip_prefix("[EMAIL:")
            .and_then(|rest| rest.strip_suffix(']'))
            .expect("token has the form [EMAIL:<hex>]");
        assert_eq!(hex_part.len(), 12);
        assert!(
            hex_part
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn hash_token_matches_hmac_sha256() {
        // HMAC-SHA256 test case 2 of RFC 4231: key "Jefe", data
        // "what do ya want for nothing?", digest 5bdcc146bf60754e6a042426089575c7...
        let key = HashKey::new(b"Jefe");
        assert_eq!(
            key.token("SECRET", "what do ya want for nothing?"),
            "[SECRET:5bdcc146bf60]"
        );
    }

    #[test]
    fn hash_token_depends_on_key_and_value() {
        let key = HashKey::new(b"key one");
        let other_key = HashKey::new(b"key two");
        let token = key.token("EMAIL", "a@example.com");
        assert_ne!(token, other_key.token("EMAIL", "a@example.com"));
        assert_ne!(token, key.token("EMAIL", "b@example.com"));
        assert_eq!(
            key.token("PHONE", "a@example.com")
                .trim_start_matches("[PHONE"),
            token.trim_start_matches("[EMAIL")
        );
    }

    #[test]
    fn hash_key_debug_hides_key() {
        let key = HashKey::new(b"super-secret-key-material");
        let printed = format!("{key:?}");
        assert_eq!(printed, "HashKey(<redacted>)");
        assert!(!printed.contains("super-secret"));
    }
}
