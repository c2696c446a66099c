//! The stored encoding of turns and summaries.
//!
//! `dialect::Message` is only `Serialize`, so stored turns use these mirror types, which
//! also pin the stored field names: renaming a field of the common model must not make
//! stored conversations unreadable. A field added to the common model needs a field here.

use serde::{Deserialize, Serialize};

use super::{StoreError, Summary, Turn};
use crate::dialect::{Message, Part, Role};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TurnRecord {
    /// Encoding version, so a later build can read what this one wrote.
    v: u8,
    messages: Vec<MessageRecord>,
    tokens: u32,
    model: String,
    policy: String,
    recorded_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct MessageRecord {
    role: RoleRecord,
    parts: Vec<PartRecord>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RoleRecord {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartRecord {
    Text {
        text: String,
    },
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    ToolResult {
        call_id: String,
        text: String,
    },
    Other {
        value: serde_json::Value,
    },
}

const TURN_RECORD_VERSION: u8 = 1;

impl From<&Message> for MessageRecord {
    fn from(message: &Message) -> Self {
        let role = match message.role {
            Role::System => RoleRecord::System,
            Role::User => RoleRecord::User,
            Role::Assistant => RoleRecord::Assistant,
            Role::Tool => RoleRecord::Tool,
        };
        let parts = message
            .parts
            .iter()
            .map(|part| match part {
                Part::Text { text } => PartRecord::Text { text: text.clone() },
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => PartRecord::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: arguments.clone(),
                },
                Part::ToolResult { call_id, text } => PartRecord::ToolResult {
                    call_id: call_id.clone(),
                    text: text.clone(),
                },
                Part::Other { value } => PartRecord::Other {
                    value: value.clone(),
                },
            })
            .collect();
        MessageRecord { role, parts }
    }
}

impl From<MessageRecord> for Message {
    fn from(record: MessageRecord) -> Self {
        let role = match record.role {
            RoleRecord::System => Role::System,
            RoleRecord::User => Role::User,
            RoleRecord::Assistant => Role::Assistant,
            RoleRecord::Tool => Role::Tool,
        };
        let parts = record
            .parts
            .into_iter()
            .map(|part| match part {
                PartRecord::Text { text } => Part::Text { text },
                PartRecord::ToolCall {
                    id,
                    name,
                    arguments,
                } => Part::ToolCall {
                    id,
                    name,
                    arguments,
                },
                PartRecord::ToolResult { call_id, text } => Part::ToolResult { call_id, text },
                PartRecord::Other { value } => Part::Other { value },
            })
            .collect();
        Message { role, parts }
    }
}

/// Encodes a turn without its id, which the stores keep beside the record.
pub fn encode_turn(turn: &Turn) -> Vec<u8> {
    let record = TurnRecord {
        v: TURN_RECORD_VERSION,
        messages: turn.messages.iter().map(MessageRecord::from).collect(),
        tokens: turn.tokens,
        model: turn.model.clone(),
        policy: turn.policy.clone(),
        recorded_at_ms: turn.recorded_at_ms,
    };
    // Serializing these plain structs to a Vec cannot fail: every map key is a string.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Decodes a turn written by `encode_turn`.
pub fn decode_turn(id: String, bytes: &[u8]) -> Result<Turn, StoreError> {
    let record: TurnRecord = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("turn {id}: {e}")))?;
    if record.v != TURN_RECORD_VERSION {
        return Err(StoreError::Corrupt(format!(
            "turn {id}: record version {} is newer than this build reads ({TURN_RECORD_VERSION})",
            record.v
        )));
    }
    Ok(Turn {
        id,
        messages: record.messages.into_iter().map(Message::from).collect(),
        tokens: record.tokens,
        model: record.model,
        policy: record.policy,
        recorded_at_ms: record.recorded_at_ms,
    })
}

/// Encodes a summary as JSON.
pub fn encode_summary(summary: &Summary) -> Vec<u8> {
    serde_json::to_vec(summary).unwrap_or_default()
}

/// Decodes a summary written by `encode_summary`.
pub fn decode_summary(bytes: &[u8]) -> Result<Summary, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("summary: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn turn_round_trips_every_part_kind() {
        let turn = Turn {
            id: "t1".to_owned(),
            messages: vec![
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::Text {
                            text: "calling".to_owned(),
                        },
                        Part::ToolCall {
                            id: "call_1".to_owned(),
                            name: "lookup".to_owned(),
                            arguments: "{\"q\":1}".to_owned(),
                        },
                    ],
                },
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult {
                        call_id: "call_1".to_owned(),
                        text: "found".to_owned(),
                    }],
                },
                Message {
                    role: Role::User,
                    parts: vec![Part::Other {
                        value: json!({"type": "image_url", "image_url": {"url": "x"}}),
                    }],
                },
            ],
            tokens: 42,
            model: "gpt-4o".to_owned(),
            policy: "p@abc".to_owned(),
            recorded_at_ms: 7,
        };
        let decoded = decode_turn("t1".to_owned(), &encode_turn(&turn)).expect("decodes");
        assert_eq!(decoded, turn);
    }

    #[test]
    fn newer_record_version_is_reported() {
        let error = decode_turn(
            "t".to_owned(),
            br#"{"v":9,"messages":[],"tokens":0,"model":"m","policy":"p","recordedAtMs":0}"#,
        )
        .expect_err("version 9 is unknown");
        assert!(error.to_string().contains("newer"), "{error}");
    }
}
