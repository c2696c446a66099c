//! Conversions between the protobuf messages and the engine's types.

use std::time::{Duration, UNIX_EPOCH};

use super::invalid::Violations;
use super::proto;
use crate::dialect::{Message, Part, Role};
use crate::guard::{Finding, FindingKind, Outcome, Verdict};
use crate::policy::spec::Mode;

/// Converts request messages to the common model, recording a violation for each
/// message without a role and each part without content. `field` is the request field
/// that contains the messages, such as `messages`.
pub fn messages_from_proto(
    field: &str,
    messages: &[proto::Message],
    violations: &mut Violations,
) -> Vec<Message> {
    let mut converted = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let role = match proto::Role::try_from(message.role) {
            Ok(proto::Role::System) => Role::System,
            Ok(proto::Role::User) => Role::User,
            Ok(proto::Role::Assistant) => Role::Assistant,
            Ok(proto::Role::Tool) => Role::Tool,
            Ok(proto::Role::Unspecified) | Err(_) => {
                violations.add(
                    format!("{field}[{index}].role"),
                    "missing or unknown role; use ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
                );
                Role::User
            }
        };
        let mut parts = Vec::with_capacity(message.parts.len());
        for (part_index, part) in message.parts.iter().enumerate() {
            let converted_part = match &part.content {
                Some(proto::part::Content::Text(text)) => Part::Text { text: text.clone() },
                Some(proto::part::Content::ToolCall(call)) => {
                    if call.name.is_empty() {
                        violations.add(
                            format!("{field}[{index}].parts[{part_index}].tool_call.name"),
                            "missing; set the tool's name",
                        );
                    }
                    Part::ToolCall {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments_json.clone(),
                    }
                }
                Some(proto::part::Content::ToolResult(result)) => Part::ToolResult {
                    call_id: result.call_id.clone(),
                    text: result.text.clone(),
                },
                None => {
                    violations.add(
                        format!("{field}[{index}].parts[{part_index}]"),
                        "empty part; set text, tool_call or tool_result",
                    );
                    continue;
                }
            };
            parts.push(converted_part);
        }
        converted.push(Message { role, parts });
    }
    converted
}

/// Converts a message of the common model. Parts the API has no field for (such as
/// images the proxy stored from a provider request) are left out.
pub fn message_to_proto(message: &Message) -> proto::Message {
    let role = match message.role {
        Role::System => proto::Role::System,
        Role::User => proto::Role::User,
        Role::Assistant => proto::Role::Assistant,
        Role::Tool => proto::Role::Tool,
    };
    let parts = message
        .parts
        .iter()
        .filter_map(|part| {
            let content = match part {
                Part::Text { text } => proto::part::Content::Text(text.clone()),
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => proto::part::Content::ToolCall(proto::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments_json: arguments.clone(),
                }),
                Part::ToolResult { call_id, text } => {
                    proto::part::Content::ToolResult(proto::ToolResult {
                        call_id: call_id.clone(),
                        text: text.clone(),
                    })
                }
                Part::Other { .. } => return None,
            };
            Some(proto::Part {
                content: Some(content),
            })
        })
        .collect();
    proto::Message {
        role: role.into(),
        parts,
    }
}

pub fn verdict_to_proto(verdict: &Verdict) -> proto::Verdict {
    match verdict {
        Verdict::Allow => proto::Verdict::Allow,
        Verdict::Transform => proto::Verdict::Transform,
        Verdict::Escalate { .. } => proto::Verdict::Escalate,
        Verdict::Block { .. } => proto::Verdict::Block,
    }
}

/// Returns the rule behind a blocking verdict, or an empty string.
pub fn verdict_rule(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Block { rule, .. } | Verdict::Escalate { rule, .. } => rule.to_string(),
        Verdict::Allow | Verdict::Transform => String::new(),
    }
}

/// Converts a finding. `message_index` is set when the request carried messages.
pub fn finding_to_proto(finding: &Finding, message_index: Option<usize>) -> proto::Finding {
    let kind = match finding.kind {
        FindingKind::Topic => proto::FindingKind::Topic,
        FindingKind::OffTopic => proto::FindingKind::OffTopic,
        FindingKind::Action => proto::FindingKind::Action,
        FindingKind::Pii => proto::FindingKind::Pii,
    };
    let outcome = match finding.outcome {
        Outcome::Allow => proto::Outcome::Allow,
        Outcome::Block => proto::Outcome::Block,
        Outcome::Redact => proto::Outcome::Redact,
        Outcome::Mask => proto::Outcome::Mask,
        Outcome::Hash => proto::Outcome::Hash,
        Outcome::Pseudonymize => proto::Outcome::Pseudonymize,
        Outcome::Escalate => proto::Outcome::Escalate,
        Outcome::Removed => proto::Outcome::Removed,
    };
    let mode = match finding.mode {
        Mode::Enforce => proto::RuleMode::Enforce,
        Mode::Monitor => proto::RuleMode::Monitor,
    };
    let span = match (finding.start, finding.end) {
        (Some(start), Some(end)) => Some(proto::Span {
            start: saturating_u32(start),
            end: saturating_u32(end),
        }),
        _ => None,
    };
    proto::Finding {
        rule_id: finding.rule.to_string(),
        kind: kind.into(),
        entity: finding.entity.as_deref().unwrap_or_default().to_owned(),
        outcome: outcome.into(),
        mode: mode.into(),
        message_index: message_index.map(saturating_u32),
        part_index: finding.part.map(saturating_u32),
        span,
        tool_name: finding.tool.clone().unwrap_or_default(),
        detail: finding.detail.clone().unwrap_or_default(),
    }
}

pub fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Converts milliseconds since the Unix epoch to a protobuf timestamp.
pub fn timestamp_from_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}
