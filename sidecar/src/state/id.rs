//! Finding a request's conversation id.
//!
//! The `x-agent-conversation-id` header wins. Without it the policy may name a request
//! field: OpenAI's `user`, or a key of `metadata` (OpenAI's `metadata.<key>`, Anthropic's
//! `metadata.user_id`). Without either, the request has no conversation: guardrails
//! still apply, and nothing is stored.

use serde_json::{Map, Value};

/// Longest accepted conversation id, in bytes; longer values are ignored rather than
/// truncated, so two long ids can never collide.
pub const MAX_CONVERSATION_ID_LEN: usize = 256;

/// Request field that carries the conversation id when the header is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum IdSource {
    /// Only the header.
    #[default]
    HeaderOnly,
    /// The top-level `user` string (OpenAI).
    User,
    /// A string under `metadata`, such as `user_id` (Anthropic) or any OpenAI key.
    Metadata(String),
}

impl IdSource {
    /// Parses the policy's `idFrom` value: `user` or `metadata.<key>`.
    pub fn parse(text: &str) -> Result<IdSource, String> {
        if text == "user" {
            return Ok(IdSource::User);
        }
        match text.strip_prefix("metadata.") {
            Some(key) if !key.is_empty() && !key.contains('.') => {
                Ok(IdSource::Metadata(key.to_owned()))
            }
            _ => Err(format!(
                "invalid idFrom {text:?}; use user or metadata.<key>, such as metadata.user_id"
            )),
        }
    }
}

/// Returns the conversation id from the header value, else from the body field that
/// `source` names. Values are trimmed; empty or overlong values count as absent.
pub fn conversation_id(
    header: Option<&str>,
    body: &Map<String, Value>,
    source: &IdSource,
) -> Option<String> {
    if let Some(id) = header.and_then(usable) {
        return Some(id);
    }
    let value = match source {
        IdSource::HeaderOnly => None,
        IdSource::User => body.get("user"),
        IdSource::Metadata(key) => body.get("metadata").and_then(|m| m.get(key)),
    };
    value.and_then(Value::as_str).and_then(usable)
}

fn usable(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty() && value.len() <= MAX_CONVERSATION_ID_LEN).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn header_wins_over_body() {
        let request = body(json!({"user": "from-body"}));
        assert_eq!(
            conversation_id(Some(" conv-1 "), &request, &IdSource::User),
            Some("conv-1".to_owned())
        );
        assert_eq!(
            conversation_id(Some("  "), &request, &IdSource::User),
            Some("from-body".to_owned())
        );
    }

    #[test]
    fn body_field_is_used_only_when_named() {
        let request = body(json!({"user": "u-1", "metadata": {"user_id": "a-1", "n": 5}}));
        assert_eq!(conversation_id(None, &request, &IdSource::HeaderOnly), None);
        assert_eq!(
            conversation_id(None, &request, &IdSource::User),
            Some("u-1".to_owned())
        );
        assert_eq!(
            conversation_id(None, &request, &IdSource::Metadata("user_id".to_owned())),
            Some("a-1".to_owned())
        );
        assert_eq!(
            conversation_id(None, &request, &IdSource::Metadata("n".to_owned())),
            None,
            "non-string values are ignored"
        );
    }

    #[test]
    fn overlong_id_is_ignored() {
        let long = "x".repeat(MAX_CONVERSATION_ID_LEN + 1);
        assert_eq!(
            conversation_id(Some(&long), &Map::new(), &IdSource::User),
            None
        );
    }

    #[test]
    fn id_source_parses() {
        assert_eq!(IdSource::parse("user"), Ok(IdSource::User));
        assert_eq!(
            IdSource::parse("metadata.user_id"),
            Ok(IdSource::Metadata("user_id".to_owned()))
        );
        for invalid in ["", "metadata.", "metadata.a.b", "header", "User"] {
            assert!(IdSource::parse(invalid).is_err(), "{invalid:?}");
        }
    }
}
