//! Recognition of an upstream's "context too long" error, so the proxy can compact the
//! request once and retry instead of passing the error on.
//!
//! - OpenAI (and compatible servers) respond with 400 with `error.code` set to
//!   `context_length_exceeded`; some compatible servers send only the message
//!   "This model's maximum context length is N tokens ...".
//! - Anthropic responds with 400 with `error.type` `invalid_request_error` and a message such
//!   as "prompt is too long: 208310 tokens > 200000 maximum", also inside a streamed
//!   `error` event.

use serde_json::Value;

/// Provider whose overflow error matched, with the token counts when the message states
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextOverflow {
    OpenAi,
    Anthropic {
        /// Tokens the prompt had and the maximum, parsed from the message.
        tokens: Option<(u64, u64)>,
    },
}

/// Returns the overflow an upstream error body reports, if it reports one. `status` is
/// the HTTP status; an error event inside a stream passes 400 and the event's data.
pub fn context_overflow(status: u16, body: &[u8]) -> Option<ContextOverflow> {
    if status != 400 {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if code == "context_length_exceeded" || message.contains("maximum context length") {
        return Some(ContextOverflow::OpenAi);
    }
    let lowered = message.to_ascii_lowercase();
    if kind == "invalid_request_error" && lowered.starts_with("prompt is too long") {
        return Some(ContextOverflow::Anthropic {
            tokens: parse_anthropic_counts(&lowered),
        });
    }
    None
}

/// Parses `prompt is too long: 208310 tokens > 200000 maximum`.
fn parse_anthropic_counts(message: &str) -> Option<(u64, u64)> {
    let (_, rest) = message.split_once(':')?;
    let (actual, rest) = rest.trim().split_once(" tokens > ")?;
    let maximum = rest.split_whitespace().next()?;
    Some((actual.trim().parse().ok()?, maximum.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_code_is_recognized() {
        let body = br#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130001 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(context_overflow(400, body), Some(ContextOverflow::OpenAi));
    }

    #[test]
    fn compatible_server_message_is_recognized() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"BadRequestError","code":400}}"#;
        assert_eq!(context_overflow(400, body), Some(ContextOverflow::OpenAi));
    }

    #[test]
    fn anthropic_message_is_recognized_with_counts() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#;
        assert_eq!(
            context_overflow(400, body),
            Some(ContextOverflow::Anthropic {
                tokens: Some((208_310, 200_000))
            })
        );
        let without_counts =
            br#"{"error":{"type":"invalid_request_error","message":"Prompt is too long"}}"#;
        assert_eq!(
            context_overflow(400, without_counts),
            Some(ContextOverflow::Anthropic { tokens: None })
        );
    }

    #[test]
    fn other_errors_are_not_overflow() {
        for (status, body) in [
            (
                400,
                &br#"{"error":{"message":"Invalid value for temperature","code":"invalid_value"}}"#[..],
            ),
            (
                429,
                br#"{"error":{"message":"maximum context length","code":"context_length_exceeded"}}"#,
            ),
            (
                400,
                br#"{"error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#,
            ),
            (400, b"not json"),
            (400, b"{}"),
        ] {
            assert_eq!(context_overflow(status, body), None, "{status}");
        }
    }
}
