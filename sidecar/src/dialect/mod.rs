//! Provider wire formats and the common message model.
//!
//! A request body is kept as the JSON the client sent, so fields the sidecar does not
//! know are forwarded untouched; the dialect reads the parts it guards out of that JSON
//! and writes transformed text back in place. The common model below is the normalized
//! form used for stored conversation turns.

pub mod anthropic;
pub mod guarding;
pub mod openai;

use serde::Serialize;

/// Who produced a message, normalized across providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One piece of a message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    ToolCall {
        id: String,
        name: String,
        /// The call's arguments as the JSON text the model produced.
        arguments: String,
    },
    ToolResult {
        call_id: String,
        text: String,
    },
    /// A part the sidecar forwards without reading, such as an image.
    Other {
        value: serde_json::Value,
    },
}

/// A message in the common model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// A request that does not fit the dialect's schema. `param` names the offending field
/// in the provider's own notation, such as `messages[2].content`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub param: Option<String>,
    pub message: String,
}

impl InvalidRequest {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidRequest {
            param: Some(param.into()),
            message: message.into(),
        }
    }
}
