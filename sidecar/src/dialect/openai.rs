//! OpenAI Chat Completions: request validation, guarding of every text-bearing field in
//! place, refusal replies, and assembly of a streamed response into one completion.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub use super::guarding::{Evaluation, ParseError};
use super::guarding::{
    guard_json_strings, optional_stream, parse_object, remove_denied, required_messages,
    required_model, type_name,
};
use super::{InvalidRequest, Message, Part, Role};
use crate::guard::{ContentCheck, Guard, Verdict};
use crate::policy::spec::Direction;

/// Roles a Chat Completions message may have.
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A parsed request: the client's JSON object, kept whole, plus the fields the sidecar
/// routes on.
#[derive(Debug)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

/// Parses and validates a Chat Completions request body.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ParseError> {
    let body = parse_object(body, "chat completion")?;
    let model = required_model(&body)?;
    let stream = optional_stream(&body)?;
    let messages = required_messages(&body)?;
    for (i, message) in messages.iter().enumerate() {
        validate_message(message, &format!("messages[{i}]"))?;
    }
    if let Some(tools) = body.get("tools") {
        validate_tools(tools)?;
    }
    Ok(ChatRequest {
        body,
        model,
        stream,
    })
}

fn validate_message(message: &Value, path: &str) -> Result<(), InvalidRequest> {
    let Value::Object(message) = message else {
        return Err(InvalidRequest::new(
            path,
            format!("{path} must be an object, found {}", type_name(message)),
        ));
    };
    match message.get("role") {
        Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
        Some(Value::String(role)) => {
            return Err(InvalidRequest::new(
                format!("{path}.role"),
                format!(
                    "invalid role {role:?}; expected one of {}",
                    ROLES.join(", ")
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
    }
    match message.get("content") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let part_path = format!("{path}.content[{j}]");
                let Value::Object(part) = part else {
                    return Err(InvalidRequest::new(
                        &part_path,
                        format!("{part_path} must be an object, found {}", type_name(part)),
                    ));
                };
                match (part.get("type"), part.get("text")) {
                    (Some(Value::String(t)), text) if t == "text" => {
                        if !matches!(text, Some(Value::String(_))) {
                            return Err(InvalidRequest::new(
                                format!("{part_path}.text"),
                                format!("{part_path}.text must be a string"),
                            ));
                        }
                    }
                    (Some(Value::String(_)), _) => {}
                    _ => {
                        return Err(InvalidRequest::new(
                            format!("{part_path}.type"),
                            format!("{part_path}.type must be a string"),
                        ));
                    }
                }
            }
        }
        Some(other) => {
            return Err(InvalidRequest::new(
                format!("{path}.content"),
                format!(
                    "{path}.content must be a string, an array of content parts or null, found {}",
                    type_name(other)
                ),
            ));
        }
    }
    if let Some(calls) = message.get("tool_calls") {
        validate_tool_calls(calls, &format!("{path}.tool_calls"))?;
    }
    Ok(())
}

fn validate_tool_calls(calls: &Value, path: &str) -> Result<(), InvalidRequest> {
    let Value::Array(calls) = calls else {
        if calls.is_null() {
            return Ok(());
        }
        return Err(InvalidRequest::new(
            path,
            format!("{path} must be an array"),
        ));
    };
    for (i, call) in calls.iter().enumerate() {
        let call_path = format!("{path}[{i}]");
        let function = call.get("function");
        let name_ok = function
            .and_then(|f| f.get("name"))
            .is_some_and(Value::is_string);
        let arguments_ok = function
            .and_then(|f| f.get("arguments"))
            .is_none_or(Value::is_string);
        if !name_ok {
            return Err(InvalidRequest::new(
                format!("{call_path}.function.name"),
                format!("{call_path}.function.name must be a string"),
            ));
        }
        if !arguments_ok {
            return Err(InvalidRequest::new(
                format!("{call_path}.function.arguments"),
                format!("{call_path}.function.arguments must be a JSON-encoded string"),
            ));
        }
    }
    Ok(())
}

fn validate_tools(tools: &Value) -> Result<(), InvalidRequest> {
    let Value::Array(tools) = tools else {
        if tools.is_null() {
            return Ok(());
        }
        return Err(InvalidRequest::new(
            "tools",
            format!("tools must be an array, found {}", type_name(tools)),
        ));
    };
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) == Some("function")
            && !tool
                .get("function")
                .and_then(|f| f.get("name"))
                .is_some_and(Value::is_string)
        {
            return Err(InvalidRequest::new(
                format!("tools[{i}].function.name"),
                format!("tools[{i}].function.name must be a string"),
            ));
        }
    }
    Ok(())
}

/// Runs the input guardrails over a request and rewrites it in place: denied tools are
/// removed from `tools`, and redacted, masked or hashed text replaces the original in
/// message content, tool-call arguments and tool results.
pub fn guard_request(guard: &Guard, request: &mut ChatRequest) -> Evaluation {
    let mut evaluation = Evaluation::new();
    remove_denied_tools(guard, &mut request.body, &mut evaluation);

    let Some(Value::Array(messages)) = request.body.get_mut("messages") else {
        return evaluation;
    };
    let last_user = messages
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    for (index, message) in messages.iter_mut().enumerate() {
        if Some(index) == last_user {
            let parts = text_parts(message.get("content"));
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
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
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(Value::Array(tools)) = body.get_mut("tools") else {
        return;
    };
    if remove_denied(guard, tools, tool_name, forced.as_deref(), evaluation) {
        // The API rejects tool_choice and parallel_tool_calls without tools.
        body.remove("tools");
        body.remove("tool_choice");
        body.remove("parallel_tool_calls");
    }
}

fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
}

/// Texts of a content value: the string itself, or the `text` (and `refusal`) of each
/// part in an array.
fn text_parts(content: Option<&Value>) -> Vec<String> {
    match content {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(part_text)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn part_text(part: &Value) -> Option<&str> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => part.get("text").and_then(Value::as_str),
        Some("refusal") => part.get("refusal").and_then(Value::as_str),
        _ => None,
    }
}

fn part_text_mut(part: &mut Value) -> Option<&mut String> {
    let key = match part.get("type").and_then(Value::as_str) {
        Some("text") => "text",
        Some("refusal") => "refusal",
        _ => return None,
    };
    match part.get_mut(key) {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// Guards a message's content, its tool calls' arguments (and, for output, the calls
/// themselves against the action rules).
fn guard_message(
    guard: &Guard,
    direction: Direction,
    message: &mut Value,
    evaluation: &mut Evaluation,
) {
    if let Some(content) = message.get_mut("content") {
        guard_content(guard, direction, content, evaluation);
    }
    if let Some(Value::String(refusal)) = message.get_mut("refusal") {
        let check = guard.check_content(direction, &[refusal.as_str()]);
        if let Some(Some(text)) = check.transformed.first() {
            *refusal = text.clone();
        }
        evaluation.absorb(check.verdict, check.findings);
    }
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        for call in calls.iter_mut() {
            if let Some(function) = call.get_mut("function") {
                guard_function_call(guard, direction, function, evaluation);
            }
        }
    }
    if let Some(function) = message.get_mut("function_call")
        && function.is_object()
    {
        guard_function_call(guard, direction, function, evaluation);
    }
}

fn guard_content(
    guard: &Guard,
    direction: Direction,
    content: &mut Value,
    evaluation: &mut Evaluation,
) {
    match content {
        Value::String(text) => {
            let check = guard.check_content(direction, &[text.as_str()]);
            if let Some(Some(new_text)) = check.transformed.first() {
                *text = new_text.clone();
            }
            evaluation.absorb(check.verdict, check.findings);
        }
        Value::Array(parts) => {
            let texts: Vec<String> = parts
                .iter()
                .filter_map(part_text)
                .map(str::to_owned)
                .collect();
            if texts.is_empty() {
                return;
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let check = guard.check_content(direction, &refs);
            let mut transformed = check.transformed.iter();
            for part in parts.iter_mut() {
                if let Some(text) = part_text_mut(part)
                    && let Some(Some(new_text)) = transformed.next()
                {
                    *text = new_text.clone();
                }
            }
            evaluation.absorb(check.verdict, check.findings);
        }
        _ => {}
    }
}

/// Guards `{"name": ..., "arguments": "<json>"}`. String values inside the arguments are
/// checked one by one and rewritten inside the parsed JSON, so redaction keeps the
/// arguments valid JSON. Arguments that are not JSON are checked as plain text.
fn guard_function_call(
    guard: &Guard,
    direction: Direction,
    function: &mut Value,
    evaluation: &mut Evaluation,
) {
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(Value::String(arguments)) = function.get_mut("arguments") else {
        if direction == Direction::Output {
            let check = guard.check_action(direction, &name, Some(&Value::Object(Map::new())));
            evaluation.absorb(check.verdict, check.findings);
        }
        return;
    };
    let parsed = if arguments.trim().is_empty() {
        Some(Value::Object(Map::new()))
    } else {
        serde_json::from_str::<Value>(arguments).ok()
    };
    if direction == Direction::Output {
        let check = guard.check_action(direction, &name, parsed.as_ref());
        evaluation.absorb(check.verdict, check.findings);
    }

    evaluation.absorb_all(guard_parsed_arguments(guard, direction, arguments, parsed));
}

/// Runs the content rules over a tool call's JSON arguments (the string values inside
/// them, rewritten in place so the arguments stay valid JSON). Arguments that are not
/// JSON are checked as plain text.
pub fn guard_arguments(guard: &Guard, direction: Direction, arguments: &mut String) -> Evaluation {
    let parsed = serde_json::from_str::<Value>(arguments).ok();
    guard_parsed_arguments(guard, direction, arguments, parsed)
}

fn guard_parsed_arguments(
    guard: &Guard,
    direction: Direction,
    arguments: &mut String,
    parsed: Option<Value>,
) -> Evaluation {
    let mut evaluation = Evaluation::new();
    match parsed {
        Some(mut value) => {
            if guard_json_strings(guard, direction, &mut value, &mut evaluation) {
                *arguments = value.to_string();
            }
        }
        None => {
            let check: ContentCheck = guard.check_content(direction, &[arguments.as_str()]);
            if let Some(Some(new_text)) = check.transformed.first() {
                *arguments = new_text.clone();
            }
            evaluation.absorb(check.verdict, check.findings);
        }
    }
    evaluation
}

/// Runs the output guardrails over complete tool calls (`[{"id", "type", "function":
/// {"name", "arguments"}}]`): the action rules and PII in the arguments, rewritten in
/// place. The streaming guard calls this once a streamed call is whole.
pub fn guard_tool_calls(guard: &Guard, calls: &mut [Value]) -> Evaluation {
    let mut evaluation = Evaluation::new();
    for call in calls.iter_mut() {
        if let Some(function) = call.get_mut("function") {
            guard_function_call(guard, Direction::Output, function, &mut evaluation);
        }
    }
    evaluation
}

/// Runs the output guardrails over a `chat.completion` object and rewrites it in place.
pub fn guard_response(guard: &Guard, response: &mut Value) -> Evaluation {
    let mut evaluation = Evaluation::new();
    if let Some(Value::Array(choices)) = response.get_mut("choices") {
        for choice in choices.iter_mut() {
            if let Some(message) = choice.get_mut("message") {
                guard_message(guard, Direction::Output, message, &mut evaluation);
            }
        }
    }
    evaluation
}

/// Replaces pseudonym placeholders with the original values in every choice of a
/// `chat.completion` object: content, refusals and tool-call arguments. Runs after the
/// output guardrails, so restored values reach the client as the input contained them.
pub fn restore_response(guard: &Guard, response: &mut Value) {
    if let Some(Value::Array(choices)) = response.get_mut("choices") {
        for choice in choices.iter_mut() {
            if let Some(message) = choice.get_mut("message") {
                restore_message(guard, message);
            }
        }
    }
}

/// Replaces pseudonym placeholders in complete tool calls (`[{"function": {"arguments"}}]`),
/// keeping the arguments valid JSON.
pub fn restore_tool_calls(guard: &Guard, calls: &mut [Value]) {
    for call in calls.iter_mut() {
        if let Some(function) = call.get_mut("function") {
            restore_arguments(guard, function);
        }
    }
}

fn restore_message(guard: &Guard, message: &mut Value) {
    match message.get_mut("content") {
        Some(Value::String(text)) => restore_in_place(guard, text),
        Some(Value::Array(parts)) => {
            for part in parts.iter_mut() {
                if let Some(text) = part_text_mut(part) {
                    restore_in_place(guard, text);
                }
            }
        }
        _ => {}
    }
    if let Some(Value::String(refusal)) = message.get_mut("refusal") {
        restore_in_place(guard, refusal);
    }
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        restore_tool_calls(guard, calls);
    }
    if let Some(function) = message.get_mut("function_call") {
        restore_arguments(guard, function);
    }
}

fn restore_in_place(guard: &Guard, text: &mut String) {
    if let std::borrow::Cow::Owned(restored) = guard.restore(text) {
        *text = restored;
    }
}

fn restore_arguments(guard: &Guard, function: &mut Value) {
    if let Some(Value::String(arguments)) = function.get_mut("arguments") {
        // Placeholders contain no JSON syntax, so in valid arguments they can only sit
        // inside string literals, where restored values need JSON escaping.
        if let std::borrow::Cow::Owned(restored) = guard.restore_json_string(arguments) {
            *arguments = restored;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Builds a `chat.completion` whose only choice is the refusal, for a request blocked
/// before it reached the model.
pub fn refusal_completion(model: &str, refusal: &str) -> Value {
    json!({
        "id": format!("chatcmpl-sidecar-{:x}", unix_now_nanos()),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": refusal, "refusal": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    })
}

fn unix_now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Replaces every choice of a blocked response with the refusal, keeping the response's
/// id, model and usage.
pub fn replace_with_refusal(response: &mut Value, refusal: &str) {
    let Some(Value::Array(choices)) = response.get_mut("choices") else {
        return;
    };
    for choice in choices.iter_mut() {
        if let Value::Object(choice) = choice {
            choice.insert(
                "message".to_owned(),
                json!({"role": "assistant", "content": refusal, "refusal": null}),
            );
            choice.insert("finish_reason".to_owned(), json!("content_filter"));
        }
    }
}

/// A streamed response collected into one completion.
#[derive(Debug, Default)]
pub struct StreamAssembly {
    /// Top-level fields of the first chunk (id, created, model, system_fingerprint...).
    template: Map<String, Value>,
    choices: BTreeMap<u64, AssembledChoice>,
    usage: Option<Value>,
    /// An error object the upstream sent inside the stream.
    pub error: Option<Value>,
}

#[derive(Debug, Default)]
struct AssembledChoice {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u64, AssembledCall>,
    finish_reason: Option<Value>,
}

#[derive(Debug, Default)]
pub struct AssembledCall {
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

impl AssembledCall {
    /// Adds one `tool_calls[]` delta entry (the caller groups entries by `index`).
    pub fn absorb(&mut self, call: &Value) {
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            self.id = Some(id.to_owned());
        }
        if let Some(kind) = call.get("type").and_then(Value::as_str) {
            self.kind = Some(kind.to_owned());
        }
        let Some(function) = call.get("function") else {
            return;
        };
        // Some servers (llama.cpp among them) repeat the whole name in every delta;
        // others send it once or in pieces. A repeat is not appended.
        if let Some(name) = function.get("name").and_then(Value::as_str)
            && self.name != name
        {
            self.name.push_str(name);
        }
        if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
            self.arguments.push_str(arguments);
        }
    }

    /// Returns the whole call in the shape of a non-streamed `tool_calls[]` entry.
    pub fn to_value(&self) -> Value {
        json!({
            "id": self.id,
            "type": self.kind.as_deref().unwrap_or("function"),
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

impl StreamAssembly {
    /// Adds one `chat.completion.chunk` (or an in-stream error object).
    pub fn push(&mut self, chunk: &Value) {
        if let Some(error) = chunk.get("error") {
            self.error = Some(json!({"error": error}));
            return;
        }
        if self.template.is_empty()
            && let Value::Object(fields) = chunk
        {
            for (key, value) in fields {
                if !matches!(key.as_str(), "choices" | "usage" | "object") {
                    self.template.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage.clone());
        }
        let Some(Value::Array(choices)) = chunk.get("choices") else {
            return;
        };
        for choice in choices {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let entry = self.choices.entry(index).or_default();
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                entry.finish_reason = Some(reason.clone());
            }
            let Some(delta) = choice.get("delta") else {
                continue;
            };
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                entry.role = Some(role.to_owned());
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                entry.content.get_or_insert_with(String::new).push_str(text);
            }
            if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
                entry.refusal.get_or_insert_with(String::new).push_str(text);
            }
            if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                for call in calls {
                    let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    entry.tool_calls.entry(call_index).or_default().absorb(call);
                }
            }
        }
    }

    /// Returns the collected stream as a `chat.completion` object.
    pub fn to_completion(&self) -> Value {
        let mut completion = self.template.clone();
        completion.insert("object".to_owned(), json!("chat.completion"));
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|(index, choice)| {
                let mut message = Map::new();
                message.insert(
                    "role".to_owned(),
                    json!(choice.role.as_deref().unwrap_or("assistant")),
                );
                message.insert("content".to_owned(), json!(choice.content));
                if let Some(refusal) = &choice.refusal {
                    message.insert("refusal".to_owned(), json!(refusal));
                }
                if !choice.tool_calls.is_empty() {
                    let calls: Vec<Value> = choice
                        .tool_calls
                        .values()
                        .map(AssembledCall::to_value)
                        .collect();
                    message.insert("tool_calls".to_owned(), Value::Array(calls));
                }
                json!({
                    "index": index,
                    "message": message,
                    "finish_reason": choice.finish_reason,
                })
            })
            .collect();
        completion.insert("choices".to_owned(), Value::Array(choices));
        if let Some(usage) = &self.usage {
            completion.insert("usage".to_owned(), usage.clone());
        }
        Value::Object(completion)
    }
}

/// Turns a (guarded) completion back into stream chunks: per choice a role chunk, one
/// content chunk, one chunk per tool call and a finish chunk; then the usage chunk when
/// the stream carried one.
pub fn completion_to_chunks(completion: &Value) -> Vec<Value> {
    let mut base = Map::new();
    if let Value::Object(fields) = completion {
        for (key, value) in fields {
            if !matches!(key.as_str(), "choices" | "usage" | "object") {
                base.insert(key.clone(), value.clone());
            }
        }
    }
    base.insert("object".to_owned(), json!("chat.completion.chunk"));
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut fields = base.clone();
        fields.insert("choices".to_owned(), choices);
        if let Some(usage) = usage {
            fields.insert("usage".to_owned(), usage.clone());
        }
        Value::Object(fields)
    };

    let mut chunks = Vec::new();
    let empty = Vec::new();
    let choices = completion
        .get("choices")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for choice in choices {
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let role = message.get("role").cloned().unwrap_or(json!("assistant"));
        chunks.push(chunk(
            json!([{"index": index, "delta": {"role": role, "content": ""}, "finish_reason": null}]),
            None,
        ));
        if let Some(text) = message
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            chunks.push(chunk(
                json!([{"index": index, "delta": {"content": text}, "finish_reason": null}]),
                None,
            ));
        }
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            chunks.push(chunk(
                json!([{"index": index, "delta": {"refusal": refusal}, "finish_reason": null}]),
                None,
            ));
        }
        if let Some(Value::Array(calls)) = message.get("tool_calls") {
            for (call_index, call) in calls.iter().enumerate() {
                let mut delta_call = call.clone();
                if let Value::Object(fields) = &mut delta_call {
                    fields.insert("index".to_owned(), json!(call_index));
                }
                chunks.push(chunk(
                    json!([{"index": index, "delta": {"tool_calls": [delta_call]}, "finish_reason": null}]),
                    None,
                ));
            }
        }
        let finish_reason = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        chunks.push(chunk(
            json!([{"index": index, "delta": {}, "finish_reason": finish_reason}]),
            None,
        ));
    }
    if let Some(usage) = completion.get("usage").filter(|u| !u.is_null()) {
        chunks.push(chunk(json!([]), Some(usage)));
    }
    chunks
}

/// Reads a `usage` object as (input, output) tokens: `prompt_tokens` and
/// `completion_tokens`. `None` when either is missing.
pub fn read_usage(usage: &Value) -> Option<(u64, u64)> {
    let input = usage.get("prompt_tokens")?.as_u64()?;
    let output = usage.get("completion_tokens")?.as_u64()?;
    Some((input, output))
}

/// Converts the request's messages to the common model.
pub fn request_messages(request: &ChatRequest) -> Vec<Message> {
    let Some(Value::Array(messages)) = request.body.get("messages") else {
        return Vec::new();
    };
    messages.iter().map(to_common).collect()
}

/// Converts the first choice of a completion to the common model.
pub fn response_message(response: &Value) -> Option<Message> {
    response
        .get("choices")?
        .as_array()?
        .first()?
        .get("message")
        .map(to_common)
}

/// Converts one Chat Completions message to the common model.
pub fn to_common(message: &Value) -> Message {
    let role = match message.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => Role::System,
        Some("assistant") => Role::Assistant,
        Some("tool" | "function") => Role::Tool,
        _ => Role::User,
    };
    let mut parts = Vec::new();
    let content = message.get("content");
    if role == Role::Tool {
        parts.push(Part::ToolResult {
            call_id: message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            text: text_parts(content).join("\n"),
        });
    } else {
        match content {
            Some(Value::String(text)) => parts.push(Part::Text { text: text.clone() }),
            Some(Value::Array(items)) => {
                for item in items {
                    match part_text(item) {
                        Some(text) => parts.push(Part::Text {
                            text: text.to_owned(),
                        }),
                        None => parts.push(Part::Other {
                            value: item.clone(),
                        }),
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for call in calls {
            let function = call.get("function");
            let field = |name: &str| {
                function
                    .and_then(|f| f.get(name))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            parts.push(Part::ToolCall {
                id: call
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                name: field("name"),
                arguments: field("arguments"),
            });
        }
    }
    Message { role, parts }
}

#[cfg(test)]
mod tests;
