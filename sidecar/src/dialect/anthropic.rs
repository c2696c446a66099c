//! Anthropic Messages API: request validation, guarding of every text-bearing block in
//! place, refusal replies, and assembly of a streamed message into one response.
//!
//! `thinking` and `redacted_thinking` blocks pass through unchanged: their signature
//! covers the text, so the API rejects a thinking block the sidecar rewrote. With
//! `spec.thinking.scan` the text of `thinking` blocks is checked, and only a blocking
//! rule acts on it.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub use super::guarding::{Evaluation, ParseError};
use super::guarding::{
    guard_json_strings, guard_texts, optional_stream, parse_object, remove_denied,
    required_messages, required_model, restore_json_strings, type_name,
};
use super::{InvalidRequest, Message, Part, Role};
use crate::guard::{Guard, Verdict};
use crate::policy::spec::Direction;

/// Block types a `user` message may contain.
const USER_BLOCKS: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "tool_result",
    "container_upload",
];

/// Block types an `assistant` message may contain: the model's own output from earlier
/// turns, including the blocks of Anthropic's server-side tools.
const ASSISTANT_BLOCKS: &[&str] = &[
    "text",
    "tool_use",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
];

/// Block types inside a `tool_result`'s or a `search_result`'s content.
const NESTED_BLOCKS: &[&str] = &["text", "image", "document", "search_result"];

/// The `anthropic-version` sent upstream when the client sends none. The API requires
/// the header; 2023-06-01 introduced the streaming event format that the sidecar parses.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// A parsed request: the client's JSON object, kept whole, plus the fields the sidecar
/// routes on.
#[derive(Debug)]
pub struct MessagesRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

/// Endpoint a body is for. `count_tokens` takes no `max_tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Messages,
    CountTokens,
}

/// Parses and validates a Messages API request body.
pub fn parse_request(body: &[u8], endpoint: Endpoint) -> Result<MessagesRequest, ParseError> {
    let body = parse_object(body, "Messages API")?;
    let model = required_model(&body)?;
    let stream = optional_stream(&body)?;
    if endpoint == Endpoint::Messages {
        validate_max_tokens(body.get("max_tokens"))?;
    }
    let messages = required_messages(&body)?;
    for (i, message) in messages.iter().enumerate() {
        validate_message(message, &format!("messages.{i}"))?;
    }
    validate_system(body.get("system"))?;
    if let Some(tools) = body.get("tools") {
        validate_tools(tools)?;
    }
    Ok(MessagesRequest {
        body,
        model,
        stream,
    })
}

fn validate_max_tokens(value: Option<&Value>) -> Result<(), InvalidRequest> {
    match value {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => Ok(()),
        Some(other) => Err(InvalidRequest::new(
            "max_tokens",
            format!("max_tokens must be an integer of at least 1, found {other}"),
        )),
        None => Err(InvalidRequest::new(
            "max_tokens",
            "missing required parameter: max_tokens",
        )),
    }
}

fn validate_system(system: Option<&Value>) -> Result<(), InvalidRequest> {
    match system {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                validate_block(block, &format!("system.{i}"), &["text"])?;
            }
            Ok(())
        }
        Some(other) => Err(InvalidRequest::new(
            "system",
            format!(
                "system must be a string or an array of text blocks, found {}",
                type_name(other)
            ),
        )),
    }
}

fn validate_message(message: &Value, path: &str) -> Result<(), InvalidRequest> {
    let Value::Object(message) = message else {
        return Err(InvalidRequest::new(
            path,
            format!("{path} must be an object, found {}", type_name(message)),
        ));
    };
    let allowed = match message.get("role") {
        Some(Value::String(role)) if role == "user" => USER_BLOCKS,
        Some(Value::String(role)) if role == "assistant" => ASSISTANT_BLOCKS,
        Some(Value::String(role)) => {
            return Err(InvalidRequest::new(
                format!("{path}.role"),
                format!(
                    "invalid role {role:?}; expected user or assistant (the system prompt goes in the top-level system field)"
                ),
            ));
        }
        Some(other) => {
            return Err(InvalidRequest::new(
                format!("{path}.role"),
                format!("{path}.role must be a string, found {}", type_name(other)),
            ));
        }
        None => {
            return Err(InvalidRequest::new(
                format!("{path}.role"),
                format!("missing required parameter: {path}.role"),
            ));
        }
    };
    match message.get("content") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                validate_block(block, &format!("{path}.content.{j}"), allowed)?;
            }
            Ok(())
        }
        Some(other) => Err(InvalidRequest::new(
            format!("{path}.content"),
            format!(
                "{path}.content must be a string or an array of content blocks, found {}",
                type_name(other)
            ),
        )),
        None => Err(InvalidRequest::new(
            format!("{path}.content"),
            format!("missing required parameter: {path}.content"),
        )),
    }
}

/// Checks one content block: its type is one of `allowed`, and the fields the sidecar
/// reads have the right JSON types.
fn validate_block(block: &Value, path: &str, allowed: &[&str]) -> Result<(), InvalidRequest> {
    let Value::Object(fields) = block else {
        return Err(InvalidRequest::new(
            path,
            format!(
                "{path} must be a content block object, found {}",
                type_name(block)
            ),
        ));
    };
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => {
            return Err(InvalidRequest::new(
                format!("{path}.type"),
                format!("{path}.type must be a string, found {}", type_name(other)),
            ));
        }
        None => {
            return Err(InvalidRequest::new(
                format!("{path}.type"),
                format!("missing required parameter: {path}.type"),
            ));
        }
    };
    if !allowed.contains(&kind) {
        return Err(InvalidRequest::new(
            format!("{path}.type"),
            format!(
                "content block type {kind:?} is not allowed here; expected one of {}",
                allowed.join(", ")
            ),
        ));
    }
    let require = |field: &str, check: fn(&Value) -> bool, what: &str| {
        if fields.get(field).is_some_and(check) {
            Ok(())
        } else {
            Err(InvalidRequest::new(
                format!("{path}.{field}"),
                format!("{path}.{field} must be {what} in a {kind} block"),
            ))
        }
    };
    match kind {
        "text" => require("text", Value::is_string, "a string"),
        "image" | "document" => require("source", Value::is_object, "an object"),
        "thinking" => require("thinking", Value::is_string, "a string"),
        "redacted_thinking" => require("data", Value::is_string, "a string"),
        "tool_use" => {
            require("id", Value::is_string, "a string")?;
            require("name", Value::is_string, "a string")?;
            require("input", Value::is_object, "a JSON object")
        }
        "tool_result" => {
            require("tool_use_id", Value::is_string, "a string")?;
            validate_nested(fields.get("content"), &format!("{path}.content"))
        }
        "search_result" => {
            require("content", Value::is_array, "an array of text blocks")?;
            validate_nested(fields.get("content"), &format!("{path}.content"))
        }
        _ => Ok(()),
    }
}

/// Checks the content of a `tool_result` or `search_result`: absent, a string, or an
/// array of blocks.
fn validate_nested(content: Option<&Value>, path: &str) -> Result<(), InvalidRequest> {
    match content {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                validate_block(block, &format!("{path}.{i}"), NESTED_BLOCKS)?;
            }
            Ok(())
        }
        Some(other) => Err(InvalidRequest::new(
            path,
            format!(
                "{path} must be a string or an array of content blocks, found {}",
                type_name(other)
            ),
        )),
    }
}

fn validate_tools(tools: &Value) -> Result<(), InvalidRequest> {
    let Value::Array(tools) = tools else {
        return Err(InvalidRequest::new(
            "tools",
            format!("tools must be an array, found {}", type_name(tools)),
        ));
    };
    for (i, tool) in tools.iter().enumerate() {
        if !tool.get("name").is_some_and(Value::is_string) {
            return Err(InvalidRequest::new(
                format!("tools.{i}.name"),
                format!("tools.{i}.name must be a string"),
            ));
        }
    }
    Ok(())
}

fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("name").and_then(Value::as_str)
}

/// Runs the input guardrails over a request and rewrites it in place: denied tools are
/// removed from `tools`, and redacted, masked or hashed text replaces the original in the
/// system prompt, text blocks, `tool_use` inputs and `tool_result` contents.
pub fn guard_request(guard: &Guard, request: &mut MessagesRequest) -> Evaluation {
    let mut evaluation = Evaluation::new();
    remove_denied_tools(guard, &mut request.body, &mut evaluation);

    match request.body.get_mut("system") {
        Some(Value::String(text)) => {
            guard_texts(guard, Direction::Input, [text], &mut evaluation);
        }
        Some(Value::Array(blocks)) => {
            guard_texts(
                guard,
                Direction::Input,
                blocks.iter_mut().filter_map(block_text_mut),
                &mut evaluation,
            );
        }
        _ => {}
    }

    let Some(Value::Array(messages)) = request.body.get_mut("messages") else {
        return evaluation;
    };
    // Tool results travel in user messages, so the topic check reads the last user
    // message that the person typed text into.
    let last_user_text = messages.iter().rposition(|m| {
        m.get("role").and_then(Value::as_str) == Some("user") && !message_texts(m).is_empty()
    });
    for (index, message) in messages.iter_mut().enumerate() {
        if Some(index) == last_user_text {
            let texts = message_texts(message);
            let parts: Vec<&str> = texts.iter().map(String::as_str).collect();
            if let Some(finding) = guard.check_on_topic(&parts) {
                evaluation.absorb(Verdict::from_finding(&finding), vec![finding]);
            }
        }
        guard_message(guard, Direction::Input, message, &mut evaluation);
    }
    evaluation
}

fn remove_denied_tools(guard: &Guard, body: &mut Map<String, Value>, evaluation: &mut Evaluation) {
    let forced = body
        .get("tool_choice")
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool"))
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(Value::Array(tools)) = body.get_mut("tools") else {
        return;
    };
    if remove_denied(guard, tools, tool_name, forced.as_deref(), evaluation) {
        // The API rejects a tool_choice without tools.
        body.remove("tools");
        body.remove("tool_choice");
    }
}

/// Texts of a message's content that a person or the model wrote: the string itself,
/// or its `text` blocks.
fn message_texts(message: &Value) -> Vec<String> {
    match message.get("content") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(block_text)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn block_type(block: &Value) -> Option<&str> {
    block.get("type").and_then(Value::as_str)
}

fn block_text(block: &Value) -> Option<&str> {
    match block_type(block) {
        Some("text") => block.get("text").and_then(Value::as_str),
        _ => None,
    }
}

fn block_text_mut(block: &mut Value) -> Option<&mut String> {
    if block_type(block) != Some("text") {
        return None;
    }
    match block.get_mut("text") {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// Guards one message: its text blocks as one piece of content, each tool input and each
/// tool result. In the output direction, `tool_use` blocks are also checked by the
/// action rules.
fn guard_message(
    guard: &Guard,
    direction: Direction,
    message: &mut Value,
    evaluation: &mut Evaluation,
) {
    let blocks = match message.get_mut("content") {
        Some(Value::String(text)) => {
            guard_texts(guard, direction, [text], evaluation);
            return;
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return,
    };
    guard_texts(
        guard,
        direction,
        blocks.iter_mut().filter_map(block_text_mut),
        evaluation,
    );
    for block in blocks.iter_mut() {
        match block_type(block) {
            Some("thinking") => check_thinking(guard, direction, block, evaluation),
            Some("tool_use") => guard_tool_use(guard, direction, block, evaluation),
            Some("tool_result" | "search_result") => {
                guard_nested(guard, direction, block, evaluation);
            }
            _ => {}
        }
    }
}

/// Checks a `thinking` block's text when the policy scans thinking. The text is not
/// rewritten, so only a blocking verdict is kept.
fn check_thinking(guard: &Guard, direction: Direction, block: &Value, evaluation: &mut Evaluation) {
    if !guard.policy().thinking.scan {
        return;
    }
    if let Some(text) = block.get("thinking").and_then(Value::as_str) {
        evaluation.absorb_all(check_thinking_text(guard, direction, text));
    }
}

/// Checks thinking text with the content rules and keeps the verdict only when it
/// blocks, because the text cannot be rewritten.
///
/// NOTE: findings of transforming rules are still recorded with their outcome (such as
/// `redact`), although the thinking text keeps the value.
pub fn check_thinking_text(guard: &Guard, direction: Direction, text: &str) -> Evaluation {
    let check = guard.check_content(direction, &[text]);
    let verdict = if check.verdict.is_blocking() {
        check.verdict
    } else {
        Verdict::Allow
    };
    Evaluation {
        verdict,
        findings: check.findings,
    }
}

/// Guards a `tool_use` block: the action rules on its name and input (output only), then
/// PII in the input's string values, rewritten in place so `input` stays a JSON object.
pub fn guard_tool_use(
    guard: &Guard,
    direction: Direction,
    block: &mut Value,
    evaluation: &mut Evaluation,
) {
    let name = block
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !block.get("input").is_some_and(Value::is_object)
        && let Value::Object(fields) = block
    {
        fields.insert("input".to_owned(), json!({}));
    }
    let Some(input) = block.get_mut("input") else {
        return;
    };
    if direction == Direction::Output {
        let check = guard.check_action(direction, &name, Some(input));
        evaluation.absorb(check.verdict, check.findings);
    }
    guard_json_strings(guard, direction, input, evaluation);
}

/// Guards the content of a `tool_result` or `search_result` block: a string, or the text
/// blocks of an array, as one piece of content.
fn guard_nested(
    guard: &Guard,
    direction: Direction,
    block: &mut Value,
    evaluation: &mut Evaluation,
) {
    match block.get_mut("content") {
        Some(Value::String(text)) => guard_texts(guard, direction, [text], evaluation),
        Some(Value::Array(blocks)) => {
            guard_texts(
                guard,
                direction,
                blocks.iter_mut().filter_map(block_text_mut),
                evaluation,
            );
            for inner in blocks.iter_mut() {
                if block_type(inner) == Some("search_result") {
                    guard_nested(guard, direction, inner, evaluation);
                }
            }
        }
        _ => {}
    }
}

/// Runs the output guardrails over a `message` response and rewrites it in place.
pub fn guard_response(guard: &Guard, response: &mut Value) -> Evaluation {
    let mut evaluation = Evaluation::new();
    guard_message(guard, Direction::Output, response, &mut evaluation);
    evaluation
}

/// Replaces pseudonym placeholders with the original values in a `message` response:
/// text blocks and `tool_use` inputs. Runs after the output guardrails.
pub fn restore_response(guard: &Guard, response: &mut Value) {
    let Some(Value::Array(blocks)) = response.get_mut("content") else {
        return;
    };
    for block in blocks.iter_mut() {
        restore_block(guard, block);
    }
}

/// Replaces pseudonym placeholders in one output content block.
pub fn restore_block(guard: &Guard, block: &mut Value) {
    if let Some(text) = block_text_mut(block) {
        if let std::borrow::Cow::Owned(restored) = guard.restore(text) {
            *text = restored;
        }
    } else if block_type(block) == Some("tool_use")
        && let Some(input) = block.get_mut("input")
    {
        restore_json_strings(guard, input);
    }
}

fn unix_now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Builds a `message` whose only content is the refusal, for a request blocked before it
/// reached the model. `stop_reason` is `refusal`, the value the API uses when it
/// declines a request.
pub fn refusal_message(model: &str, refusal: &str) -> Value {
    json!({
        "id": format!("msg_sidecar_{:x}", unix_now_nanos()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": refusal}],
        "stop_reason": "refusal",
        "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    })
}

/// Replaces the content of a blocked response with the refusal, keeping its id, model
/// and usage.
pub fn replace_with_refusal(response: &mut Value, refusal: &str) {
    if let Value::Object(fields) = response {
        fields.insert(
            "content".to_owned(),
            json!([{"type": "text", "text": refusal}]),
        );
        fields.insert("stop_reason".to_owned(), json!("refusal"));
        fields.insert("stop_sequence".to_owned(), Value::Null);
    }
}

/// Token usage as the upstream reported it, merged from `message_start` and
/// `message_delta`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cache writes and cache reads included.
    pub input: u64,
    pub output: u64,
}

/// Reads a `usage` object. Input counts `input_tokens` plus the cache writes and reads,
/// which the API reports apart from it. `None` when either side is missing.
pub fn read_usage(usage: &Value) -> Option<Usage> {
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    let input = field("input_tokens")?
        + field("cache_creation_input_tokens").unwrap_or(0)
        + field("cache_read_input_tokens").unwrap_or(0);
    Some(Usage {
        input,
        output: field("output_tokens")?,
    })
}

/// Merges a `message_delta` usage object into the one from `message_start`. The delta's
/// counts are totals so far, not increments, so each field it carries replaces the
/// earlier value; adding them would count the input twice.
pub fn merge_usage(into: &mut Value, delta: &Value) {
    let (Value::Object(into), Value::Object(delta)) = (into, delta) else {
        return;
    };
    for (key, value) in delta {
        if !value.is_null() {
            into.insert(key.clone(), value.clone());
        }
    }
}

/// A streamed message collected into one `message` object.
#[derive(Debug, Default)]
pub struct MessageAssembly {
    message: Map<String, Value>,
    blocks: BTreeMap<u64, Value>,
    /// `input_json_delta` fragments per block index, parsed at `content_block_stop`.
    partial_json: BTreeMap<u64, String>,
    /// The upstream's `error` event payload.
    pub error: Option<Value>,
}

impl MessageAssembly {
    /// Adds one event's payload (whose `type` names the event).
    pub fn push(&mut self, event: &Value) {
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(Value::Object(message)) = event.get("message") {
                    self.message = message.clone();
                }
            }
            Some("content_block_start") => {
                if let Some(block) = event.get("content_block") {
                    self.blocks.insert(index, block.clone());
                }
            }
            Some("content_block_delta") => {
                let Some(delta) = event.get("delta") else {
                    return;
                };
                self.push_delta(index, delta);
            }
            Some("content_block_stop") => {
                if let Some(json) = self.partial_json.remove(&index) {
                    let input = parse_tool_input(&json).unwrap_or_else(|| json!({}));
                    if let Some(Value::Object(block)) = self.blocks.get_mut(&index) {
                        block.insert("input".to_owned(), input);
                    }
                }
            }
            Some("message_delta") => {
                if let Some(Value::Object(delta)) = event.get("delta") {
                    for (key, value) in delta {
                        self.message.insert(key.clone(), value.clone());
                    }
                }
                if let Some(usage) = event.get("usage") {
                    let merged = self.message.entry("usage").or_insert_with(|| json!({}));
                    merge_usage(merged, usage);
                }
            }
            Some("error") => self.error = Some(event.clone()),
            _ => {}
        }
    }

    fn push_delta(&mut self, index: u64, delta: &Value) {
        let append = |block: Option<&mut Value>, field: &str, text: &str| {
            if let Some(Value::Object(block)) = block {
                let entry = block
                    .entry(field)
                    .or_insert_with(|| Value::String(String::new()));
                if let Value::String(existing) = entry {
                    existing.push_str(text);
                }
            }
        };
        let text = |name: &str| delta.get(name).and_then(Value::as_str).unwrap_or_default();
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => append(self.blocks.get_mut(&index), "text", text("text")),
            Some("thinking_delta") => {
                append(self.blocks.get_mut(&index), "thinking", text("thinking"));
            }
            Some("signature_delta") => {
                if let Some(Value::Object(block)) = self.blocks.get_mut(&index) {
                    block.insert("signature".to_owned(), json!(text("signature")));
                }
            }
            Some("input_json_delta") => self
                .partial_json
                .entry(index)
                .or_default()
                .push_str(text("partial_json")),
            _ => {}
        }
    }

    /// Usage merged from `message_start` and `message_delta`.
    pub fn usage(&self) -> Option<&Value> {
        self.message.get("usage")
    }

    /// Returns the collected stream as a `message` object.
    pub fn to_message(&self) -> Value {
        let mut message = self.message.clone();
        message.insert(
            "content".to_owned(),
            Value::Array(self.blocks.values().cloned().collect()),
        );
        Value::Object(message)
    }
}

/// Parses a tool's streamed input. Empty input means `{}`: the API sends no fragment, or
/// one empty `partial_json`, for a tool called without arguments. `None` when the input
/// is not a JSON object.
pub fn parse_tool_input(json: &str) -> Option<Value> {
    if json.trim().is_empty() {
        return Some(json!({}));
    }
    serde_json::from_str::<Value>(json)
        .ok()
        .filter(Value::is_object)
}

/// Turns a (guarded) `message` back into the events of a stream: `message_start`, per
/// block a start, one delta and a stop, then `message_delta` with the stop reason and
/// usage, and `message_stop`. Returns (event name, payload) pairs.
pub fn message_to_events(message: &Value) -> Vec<(&'static str, Value)> {
    let mut start = message.clone();
    if let Value::Object(fields) = &mut start {
        fields.insert("content".to_owned(), json!([]));
        fields.insert("stop_reason".to_owned(), Value::Null);
        fields.insert("stop_sequence".to_owned(), Value::Null);
    }
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": start}),
    )];
    let empty = Vec::new();
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (index, block) in blocks.iter().enumerate() {
        events.extend(block_events(index as u64, block));
    }
    let mut delta = json!({"type": "message_delta", "delta": {
        "stop_reason": message.get("stop_reason").cloned().unwrap_or(Value::Null),
        "stop_sequence": message.get("stop_sequence").cloned().unwrap_or(Value::Null),
    }});
    if let Some(usage) = message.get("usage") {
        delta["usage"] = usage.clone();
    }
    events.push(("message_delta", delta));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events
}

/// Returns the start, delta and stop events of one whole content block.
pub fn block_events(index: u64, block: &Value) -> Vec<(&'static str, Value)> {
    let mut start = block.clone();
    let delta = match (block_type(block), &mut start) {
        (Some("text"), Value::Object(fields)) => {
            let text = fields.insert("text".to_owned(), json!(""));
            text.filter(|t| t.as_str().is_some_and(|t| !t.is_empty()))
                .map(|text| json!({"type": "text_delta", "text": text}))
        }
        (Some("tool_use"), Value::Object(fields)) => {
            let input = fields.insert("input".to_owned(), json!({}));
            let json = input.unwrap_or_else(|| json!({})).to_string();
            Some(json!({"type": "input_json_delta", "partial_json": json}))
        }
        (Some("thinking"), Value::Object(fields)) => {
            let thinking = fields.insert("thinking".to_owned(), json!(""));
            fields.insert("signature".to_owned(), json!(""));
            thinking.map(|t| json!({"type": "thinking_delta", "thinking": t}))
        }
        _ => None,
    };
    let mut events = vec![(
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": start}),
    )];
    if let Some(delta) = delta {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }
    if let Some(signature) = block
        .get("signature")
        .filter(|s| block_type(block) == Some("thinking") && s.is_string())
    {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": signature}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
    events
}

/// Converts the request's system prompt and messages to the common model.
pub fn request_messages(request: &MessagesRequest) -> Vec<Message> {
    body_messages(&request.body)
}

/// Converts a request body's system prompt and messages to the common model: the system
/// prompt first as one `system` message when it has any blocks, then the messages.
pub fn body_messages(body: &Map<String, Value>) -> Vec<Message> {
    let mut messages = Vec::new();
    let system: Vec<Part> = match body.get("system") {
        Some(Value::String(text)) => vec![Part::Text { text: text.clone() }],
        Some(Value::Array(blocks)) => blocks.iter().map(to_part).collect(),
        _ => Vec::new(),
    };
    if !system.is_empty() {
        messages.push(Message {
            role: Role::System,
            parts: system,
        });
    }
    if let Some(Value::Array(items)) = body.get("messages") {
        messages.extend(items.iter().map(to_common));
    }
    messages
}

/// Converts a `message` response to the common model.
pub fn response_message(response: &Value) -> Option<Message> {
    response.get("content")?;
    Some(to_common(response))
}

/// Converts one Messages API message to the common model.
pub fn to_common(message: &Value) -> Message {
    let role = match message.get("role").and_then(Value::as_str) {
        Some("assistant") => Role::Assistant,
        _ => Role::User,
    };
    let parts = match message.get("content") {
        Some(Value::String(text)) => vec![Part::Text { text: text.clone() }],
        Some(Value::Array(blocks)) => blocks.iter().map(to_part).collect(),
        _ => Vec::new(),
    };
    Message { role, parts }
}

fn to_part(block: &Value) -> Part {
    let field = |name: &str| {
        block
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match block_type(block) {
        Some("text") => Part::Text {
            text: field("text"),
        },
        Some("tool_use") => Part::ToolCall {
            id: field("id"),
            name: field("name"),
            arguments: block
                .get("input")
                .map_or_else(|| "{}".to_owned(), Value::to_string),
        },
        Some("tool_result") => {
            let text = match block.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(blocks)) => blocks
                    .iter()
                    .filter_map(block_text)
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            Part::ToolResult {
                call_id: field("tool_use_id"),
                text,
            }
        }
        _ => Part::Other {
            value: block.clone(),
        },
    }
}

#[cfg(test)]
mod tests;
