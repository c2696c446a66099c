//! The pseudonym vault: reversible, per-conversation placeholders for personal data.
//!
//! The `pseudonymize` PII action replaces a value with a typed placeholder such as
//! `<EMAIL_1>`. Within one conversation the same entity and value always get the same
//! placeholder, across turns and sidecar restarts, because the mapping is stored with
//! the conversation. The model receives only placeholders, and `restore` puts the
//! original values back into the model's output before the agent receives it.
//!
//! At rest each mapping is a [`SealedEntry`]: the placeholder in clear text (it reveals
//! only the entity type and a counter) and the value encrypted with XChaCha20-Poly1305
//! under a key derived with HKDF-SHA256 from the configured secret. The conversation id
//! and the placeholder are authenticated as associated data, so a sealed value copied to
//! another conversation or placeholder fails to open.
//!
//! Intended use per request (the guard engine and the proxy do the calls):
//! 1. `PseudonymVault::open` with the loaded conversation's `vault` entries;
//! 2. `pseudonym(entity, value)` for each match of a `pseudonymize` rule on input;
//! 3. `restore` (or `restore_json_string` inside JSON string values) on output, with
//!    `pending_placeholder_len` telling a streaming guard how many trailing bytes to hold
//!    back until the next chunk arrives;
//! 4. `take_new_entries` to store the mappings created by this request with the turn.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

/// Context string for HKDF, so the vault key differs from any other key derived from
/// the same secret.
const KEY_INFO: &[u8] = b"agent-sidecar pseudonym vault v1";
/// First byte of every sealed value; a new format would use another.
const SEALED_FORMAT: u8 = 1;
const NONCE_LEN: usize = 24;
/// Maximum length of an entity name inside a placeholder. Custom entity names are
/// policy-defined, so the limit is generous.
pub const MAX_ENTITY_NAME_LEN: usize = 64;
/// Maximum placeholder length: `<`, entity name, `_`, a `u32` counter (10 digits), `>`.
pub const MAX_PLACEHOLDER_LEN: usize = MAX_ENTITY_NAME_LEN + 13;

/// The key that seals vault values. `Debug` prints no key material.
#[derive(Clone)]
pub struct VaultKey {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(<redacted>)")
    }
}

impl VaultKey {
    /// Derives the key from a configured secret of any length.
    pub fn from_secret(secret: &[u8]) -> VaultKey {
        let mut key = [0u8; 32];
        // HKDF-SHA256 expands to at most 255 * 32 bytes, so 32 bytes cannot fail.
        let _ = Hkdf::<Sha256>::new(None, secret).expand(KEY_INFO, &mut key);
        VaultKey {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Creates a key from the operating system's random generator. Values sealed with it
    /// cannot be opened after the process exits.
    pub fn random() -> VaultKey {
        VaultKey {
            cipher: XChaCha20Poly1305::new(&XChaCha20Poly1305::generate_key(&mut OsRng)),
        }
    }

    fn seal(&self, conversation_id: &str, placeholder: &str, value: &str) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(conversation_id, placeholder);
        // Encryption fails only for inputs over about 256 GiB.
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(SEALED_FORMAT);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    fn open(&self, conversation_id: &str, entry: &SealedEntry) -> Result<String, VaultError> {
        let sealed = &entry.sealed;
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_FORMAT {
            return Err(VaultError::Malformed);
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        let aad = associated_data(conversation_id, &entry.placeholder);
        let plain = self
            .cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| VaultError::Malformed)
    }
}

fn associated_data(conversation_id: &str, placeholder: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(conversation_id.len() + 1 + placeholder.len());
    aad.extend_from_slice(conversation_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(placeholder.as_bytes());
    aad
}

/// One stored mapping: the placeholder and its sealed value.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedEntry {
    pub placeholder: String,
    pub sealed: Vec<u8>,
}

impl fmt::Debug for SealedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedEntry")
            .field("placeholder", &self.placeholder)
            .field("sealed_bytes", &self.sealed.len())
            .finish()
    }
}

/// Reason a sealed entry could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("sealed value does not open with the configured vault key")]
    WrongKey,
    #[error("sealed value or placeholder is malformed")]
    Malformed,
}

/// The decrypted vault of one conversation during one request.
///
/// `Debug` shows counts only, never values.
pub struct PseudonymVault {
    conversation_id: String,
    key: VaultKey,
    /// Placeholder to original value.
    values: HashMap<String, String>,
    /// `(entity, value)` to placeholder.
    placeholders: HashMap<(String, String), String>,
    /// Highest counter used per entity.
    counters: HashMap<String, u32>,
    /// Placeholders created since `open`, in creation order.
    created: Vec<String>,
    /// Stored entries that did not open, such as after a key change.
    unreadable: usize,
}

impl fmt::Debug for PseudonymVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PseudonymVault")
            .field("conversation_id", &self.conversation_id)
            .field("entries", &self.values.len())
            .field("created", &self.created.len())
            .field("unreadable", &self.unreadable)
            .finish()
    }
}

impl PseudonymVault {
    /// Opens the stored entries of a conversation.
    ///
    /// Entries that do not decrypt (a changed key, tampering) are skipped and counted in
    /// `unreadable`. Their counters stay reserved, so new placeholders never reuse their
    /// names.
    pub fn open(key: VaultKey, conversation_id: &str, stored: &[SealedEntry]) -> PseudonymVault {
        let mut vault = PseudonymVault {
            conversation_id: conversation_id.to_owned(),
            key,
            values: HashMap::new(),
            placeholders: HashMap::new(),
            counters: HashMap::new(),
            created: Vec::new(),
            unreadable: 0,
        };
        for entry in stored {
            let Some((entity, counter)) = parse_placeholder(&entry.placeholder) else {
                vault.unreadable += 1;
                continue;
            };
            let highest = vault.counters.entry(entity.to_owned()).or_insert(0);
            *highest = (*highest).max(counter);
            match vault.key.open(conversation_id, entry) {
                Ok(value) => {
                    vault
                        .placeholders
                        .entry((entity.to_owned(), value.clone()))
                        .or_insert_with(|| entry.placeholder.clone());
                    vault.values.insert(entry.placeholder.clone(), value);
                }
                Err(_) => vault.unreadable += 1,
            }
        }
        vault
    }

    /// Returns the placeholder for `value` of `entity` (such as `EMAIL`), creating the
    /// next one (`<EMAIL_1>`, `<EMAIL_2>`, ...) for a value not seen before.
    ///
    /// `entity` must be an upper-case entity name (`A-Z`, digits, `_`, at most
    /// [`MAX_ENTITY_NAME_LEN`] bytes), as policy validation guarantees.
    pub fn pseudonym(&mut self, entity: &str, value: &str) -> String {
        let key = (entity.to_owned(), value.to_owned());
        if let Some(existing) = self.placeholders.get(&key) {
            return existing.clone();
        }
        let counter = self.counters.entry(entity.to_owned()).or_insert(0);
        *counter = counter.saturating_add(1);
        let placeholder = format!("<{entity}_{counter}>");
        self.values.insert(placeholder.clone(), value.to_owned());
        self.placeholders.insert(key, placeholder.clone());
        self.created.push(placeholder.clone());
        placeholder
    }

    /// Returns the original value behind `placeholder`, when the vault has it.
    pub fn value(&self, placeholder: &str) -> Option<&str> {
        self.values.get(placeholder).map(String::as_str)
    }

    /// Replaces every known placeholder in `text` with its original value. Placeholders
    /// the vault does not contain, such as ones the model invented, stay as they are.
    pub fn restore<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.restore_with(text, |value, out| out.push_str(value))
    }

    /// Like `restore`, for text that is the inside of a JSON string literal (such as a
    /// string value within tool-call arguments): restored values are escaped so the JSON
    /// stays valid.
    pub fn restore_json_string<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.restore_with(text, |value, out| {
            let quoted = serde_json::Value::String(value.to_owned()).to_string();
            out.push_str(&quoted[1..quoted.len() - 1]);
        })
    }

    fn restore_with<'a>(&self, text: &'a str, write: impl Fn(&str, &mut String)) -> Cow<'a, str> {
        if self.values.is_empty() || !text.contains('<') {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut search = 0;
        while let Some(offset) = text[search..].find('<') {
            let start = search + offset;
            let Some(len) = placeholder_len_at(&text[start..]) else {
                search = start + 1;
                continue;
            };
            let candidate = &text[start..start + len];
            match self.values.get(candidate) {
                Some(value) => {
                    out.push_str(&text[copied..start]);
                    write(value, &mut out);
                    copied = start + len;
                    search = copied;
                }
                None => search = start + 1,
            }
        }
        if copied == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    /// Replaces every original value in the vault with its placeholder, longest value
    /// first, so text restored for the client can be stored the way the model saw it.
    pub fn conceal<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut values: Vec<(&String, &String)> = self
            .values
            .iter()
            .filter(|(_, value)| !value.is_empty() && text.contains(value.as_str()))
            .collect();
        if values.is_empty() {
            return Cow::Borrowed(text);
        }
        values.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(b.0)));
        let mut out = text.to_owned();
        for (placeholder, value) in values {
            out = out.replace(value.as_str(), placeholder);
        }
        Cow::Owned(out)
    }

    /// Seals and returns the entries created since `open` (or the previous call), for
    /// `state::Append::vault`.
    pub fn take_new_entries(&mut self) -> Vec<SealedEntry> {
        std::mem::take(&mut self.created)
            .into_iter()
            .filter_map(|placeholder| {
                let value = self.values.get(&placeholder)?;
                let sealed = self.key.seal(&self.conversation_id, &placeholder, value);
                Some(SealedEntry {
                    placeholder,
                    sealed,
                })
            })
            .collect()
    }

    /// Number of mappings the vault can restore.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Number of stored entries that did not open with the current key.
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }
}

/// Returns the length in bytes of the placeholder at the start of `text`, if `text`
/// starts with one (`<`, an entity name, `_`, a counter without leading zeros, `>`).
fn placeholder_len_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let limit = bytes.len().min(MAX_PLACEHOLDER_LEN);
    let close = bytes[..limit].iter().position(|&b| b == b'>')?;
    parse_placeholder(&text[..=close]).map(|_| close + 1)
}

/// Splits a whole placeholder such as `<CREDIT_CARD_12>` into its entity and counter.
pub fn parse_placeholder(placeholder: &str) -> Option<(&str, u32)> {
    let inner = placeholder.strip_prefix('<')?.strip_suffix('>')?;
    let (entity, digits) = inner.rsplit_once('_')?;
    let valid_entity = entity.len() <= MAX_ENTITY_NAME_LEN
        && entity
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_uppercase())
        && entity
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let valid_digits = !digits.is_empty()
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !(valid_entity && valid_digits) {
        return None;
    }
    Some((entity, digits.parse().ok()?))
}

/// Returns how many bytes at the end of `text` could be the start of a placeholder that
/// the next chunk completes, so a streaming guard holds them back before `restore`.
///
/// The held tail starts at the last `<` when everything after it can still grow into a
/// placeholder: an entity name, then `_` and digits. A complete placeholder is not held.
pub fn pending_placeholder_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let window_start = bytes.len().saturating_sub(MAX_PLACEHOLDER_LEN - 1);
    let Some(offset) = bytes[window_start..].iter().rposition(|&b| b == b'<') else {
        return 0;
    };
    let start = window_start + offset;
    let rest = &bytes[start + 1..];
    let could_grow = match rest.first() {
        None => true,
        Some(first) => {
            first.is_ascii_uppercase()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }
    };
    if could_grow { bytes.len() - start } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VaultKey {
        VaultKey::from_secret(b"test secret with enough entropy for a test")
    }

    #[test]
    fn same_value_gets_same_placeholder() {
        let mut vault = PseudonymVault::open(key(), "c1", &[]);
        let first = vault.pseudonym("EMAIL", "jane@example.com");
        let other = vault.pseudonym("EMAIL", "joe@example.com");
        let again = vault.pseudonym("EMAIL", "jane@example.com");
        let phone = vault.pseudonym("PHONE", "+1 415 555 2671");
        assert_eq!(first, "<EMAIL_1>");
        assert_eq!(other, "<EMAIL_2>");
        assert_eq!(again, "<EMAIL_1>");
        assert_eq!(phone, "<PHONE_1>");
    }

    #[test]
    fn mappings_survive_sealing_and_reopening() {
        let mut vault = PseudonymVault::open(key(), "c1", &[]);
        vault.pseudonym("EMAIL", "jane@example.com");
        vault.pseudonym("CREDIT_CARD", "4111 1111 1111 1111");
        let stored = vault.take_new_entries();
        assert_eq!(stored.len(), 2);
        assert!(
            vault.take_new_entries().is_empty(),
            "entries are taken once"
        );
        assert!(
            !stored[0]
                .sealed
                .windows(4)
                .any(|w| w == b"jane" || w == b"4111"),
            "values are encrypted"
        );

        let mut reopened = PseudonymVault::open(key(), "c1", &stored);
        assert_eq!(reopened.pseudonym("EMAIL", "jane@example.com"), "<EMAIL_1>");
        assert_eq!(reopened.pseudonym("EMAIL", "new@example.com"), "<EMAIL_2>");
        assert_eq!(
            reopened.value("<CREDIT_CARD_1>"),
            Some("4111 1111 1111 1111")
        );
    }

    #[test]
    fn entries_do_not_open_elsewhere() {
        let mut vault = PseudonymVault::open(key(), "c1", &[]);
        vault.pseudonym("EMAIL", "jane@example.com");
        let stored = vault.take_new_entries();

        let other_conversation = PseudonymVault::open(key(), "c2", &stored);
        assert_eq!(other_conversation.len(), 0);
        assert_eq!(other_conversation.unreadable(), 1);

        let other_key = PseudonymVault::open(VaultKey::from_secret(b"another"), "c1", &stored);
        assert_eq!(other_key.unreadable(), 1);

        let mut moved = stored[0].clone();
        moved.placeholder = "<EMAIL_2>".to_owned();
        let mut reopened = PseudonymVault::open(key(), "c1", &[moved]);
        assert_eq!(reopened.unreadable(), 1);
        assert_eq!(
            reopened.pseudonym("EMAIL", "x@example.com"),
            "<EMAIL_3>",
            "an unreadable entry's counter stays reserved"
        );
    }

    #[test]
    fn conceal_reverses_restore() {
        let mut vault = PseudonymVault::open(key(), "c", &[]);
        let email = vault.pseudonym("EMAIL", "jo@example.com");
        let phone = vault.pseudonym("PHONE", "+1 415 555 2671");
        let text = format!("mail {email} or call {phone}");
        let restored = vault.restore(&text).into_owned();
        assert_eq!(restored, "mail jo@example.com or call +1 415 555 2671");
        assert_eq!(vault.conceal(&restored), text);
        assert!(matches!(vault.conceal("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn restore_replaces_known_placeholders_only() {
        let mut vault = PseudonymVault::open(key(), "c1", &[]);
        vault.pseudonym("EMAIL", "jane@example.com");
        vault.pseudonym("CREDIT_CARD", "4111");
        let text = "Mail <EMAIL_1>, card <CREDIT_CARD_1>, not <EMAIL_9> or <EMAIL_01> or <a>.";
        assert_eq!(
            vault.restore(text),
            "Mail jane@example.com, card 4111, not <EMAIL_9> or <EMAIL_01> or <a>."
        );
        assert!(matches!(vault.restore("no placeholders"), Cow::Borrowed(_)));
        assert_eq!(vault.restore("<<EMAIL_1>>"), "<jane@example.com>");
    }

    #[test]
    fn restore_in_json_escapes_values() {
        let mut vault = PseudonymVault::open(key(), "c1", &[]);
        vault.pseudonym("CUSTOM_ID", "a\"b\\c");
        let arguments = r#"{"id":"<CUSTOM_ID_1>"}"#;
        let restored = vault.restore_json_string(arguments);
        let parsed: serde_json::Value = serde_json::from_str(&restored).expect("valid JSON");
        assert_eq!(parsed["id"], "a\"b\\c");
    }

    #[test]
    fn placeholders_parse_strictly() {
        assert_eq!(parse_placeholder("<EMAIL_1>"), Some(("EMAIL", 1)));
        assert_eq!(
            parse_placeholder("<CREDIT_CARD_12>"),
            Some(("CREDIT_CARD", 12))
        );
        for invalid in [
            "<EMAIL_0>",
            "<EMAIL_>",
            "<email_1>",
            "<_1>",
            "EMAIL_1",
            "<EMAIL_1",
            "<1_1>",
        ] {
            assert_eq!(parse_placeholder(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn pending_tail_covers_a_partial_placeholder() {
        for (text, held) in [
            ("Write to <", 1),
            ("Write to <EM", 3),
            ("Write to <EMAIL_", 7),
            ("Write to <EMAIL_1", 8),
            ("Write to <CREDIT_CARD_12", 15),
            ("Write to <EMAIL_1>", 0),
            ("a < b", 0),
            ("x <email", 0),
            ("no bracket", 0),
            ("", 0),
        ] {
            assert_eq!(pending_placeholder_len(text), held, "{text:?}");
        }
        let long = format!("<{}", "A".repeat(MAX_PLACEHOLDER_LEN));
        assert_eq!(
            pending_placeholder_len(&long),
            0,
            "longer than any placeholder"
        );
    }

    #[test]
    fn debug_output_hides_values() {
        let mut vault = PseudonymVault::open(key(), "c1", &[]);
        vault.pseudonym("EMAIL", "jane@example.com");
        let entries = vault.take_new_entries();
        assert!(!format!("{vault:?}{entries:?}{:?}", key()).contains("jane"));
    }
}
