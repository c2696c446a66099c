//! Pieces that every dialect shares: reading a JSON request body, collecting verdicts
//! and findings, and guarding the string values inside a JSON tool input in place.

use serde_json::{Map, Value};

use super::InvalidRequest;
use crate::guard::{ContentCheck, Finding, FindingKind, Guard, Outcome, Verdict};
use crate::policy::spec::{Direction, Mode};

/// Error from reading a request body.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Json(String),
    #[error(transparent)]
    Schema(#[from] InvalidRequest),
}

/// The combined verdict and findings for a request or a response.
#[derive(Debug)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation::new()
    }
}

impl Evaluation {
    pub fn new() -> Self {
        Evaluation {
            verdict: Verdict::Allow,
            findings: Vec::new(),
        }
    }

    pub fn absorb(&mut self, verdict: Verdict, findings: Vec<Finding>) {
        self.verdict.merge(verdict);
        self.findings.extend(findings);
    }

    pub fn absorb_all(&mut self, other: Evaluation) {
        self.absorb(other.verdict, other.findings);
    }
}

/// Reads a request body as a JSON object. `what` names the expected request in the
/// error for an empty body, such as "chat completion".
pub fn parse_object(body: &[u8], what: &str) -> Result<Map<String, Value>, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Json(format!(
            "request body is empty; send a JSON {what} request"
        )));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ParseError::Json(format!(
            "request body is not valid UTF-8 (invalid byte at offset {}); send UTF-8 JSON",
            e.valid_up_to()
        )));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ParseError::Json(format!(
            "request body is not valid JSON ({e}); send a UTF-8 JSON object"
        ))
    })?;
    match value {
        Value::Object(body) => Ok(body),
        other => Err(InvalidRequest {
            param: None,
            message: format!(
                "request body must be a JSON object, found {}",
                type_name(&other)
            ),
        }
        .into()),
    }
}

/// Returns the request's non-empty string `model`.
pub fn required_model(body: &Map<String, Value>) -> Result<String, InvalidRequest> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(Value::String(_)) => Err(InvalidRequest::new("model", "model must not be empty")),
        Some(other) => Err(InvalidRequest::new(
            "model",
            format!("model must be a string, found {}", type_name(other)),
        )),
        None => Err(InvalidRequest::new(
            "model",
            "missing required parameter: model",
        )),
    }
}

/// Returns the request's non-empty `messages` array.
pub fn required_messages(body: &Map<String, Value>) -> Result<&Vec<Value>, InvalidRequest> {
    match body.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => Ok(messages),
        Some(Value::Array(_)) => Err(InvalidRequest::new(
            "messages",
            "messages must contain at least one message",
        )),
        Some(other) => Err(InvalidRequest::new(
            "messages",
            format!("messages must be an array, found {}", type_name(other)),
        )),
        None => Err(InvalidRequest::new(
            "messages",
            "missing required parameter: messages",
        )),
    }
}

/// Returns the request's optional boolean `stream`.
pub fn optional_stream(body: &Map<String, Value>) -> Result<bool, InvalidRequest> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(InvalidRequest::new(
            "stream",
            format!("stream must be a boolean, found {}", type_name(other)),
        )),
    }
}

/// Returns the JSON type of `value` with its article, for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Runs the content rules over every string value inside a JSON value (a tool's input or
/// arguments) and rewrites the changed strings in place, so the value keeps its shape.
/// Returns whether any string changed.
pub fn guard_json_strings(
    guard: &Guard,
    direction: Direction,
    value: &mut Value,
    evaluation: &mut Evaluation,
) -> bool {
    let mut leaves = Vec::new();
    collect_strings(value, &mut leaves);
    if leaves.is_empty() {
        return false;
    }
    let refs: Vec<&str> = leaves.iter().map(String::as_str).collect();
    let check: ContentCheck = guard.check_content(direction, &refs);
    let changed = check.transformed.iter().any(Option::is_some);
    if changed {
        let mut replacements = check.transformed.iter();
        replace_strings(value, &mut replacements);
    }
    evaluation.absorb(check.verdict, check.findings);
    changed
}

/// Replaces pseudonym placeholders with the original values in every string inside a
/// JSON value.
pub fn restore_json_strings(guard: &Guard, value: &mut Value) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(restored) = guard.restore(s) {
                *s = restored;
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| restore_json_strings(guard, v)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| restore_json_strings(guard, v)),
        _ => {}
    }
}

/// Checks a list of texts that form one piece of content (denied topics on the joined
/// parts, PII on each) and writes the transformed texts back through `slots`, which must
/// yield one `&mut String` per text in the same order.
pub fn guard_texts<'a>(
    guard: &Guard,
    direction: Direction,
    slots: impl IntoIterator<Item = &'a mut String>,
    evaluation: &mut Evaluation,
) {
    let mut slots: Vec<&'a mut String> = slots.into_iter().collect();
    if slots.is_empty() {
        return;
    }
    let refs: Vec<&str> = slots.iter().map(|s| s.as_str()).collect();
    let check = guard.check_content(direction, &refs);
    for (slot, new_text) in slots.iter_mut().zip(&check.transformed) {
        if let Some(new_text) = new_text {
            **slot = new_text.clone();
        }
    }
    evaluation.absorb(check.verdict, check.findings);
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Walks `value` in the same order as `collect_strings` and applies the replacements.
fn replace_strings<'a>(
    value: &mut Value,
    replacements: &mut impl Iterator<Item = &'a Option<String>>,
) {
    match value {
        Value::String(s) => {
            if let Some(Some(new_text)) = replacements.next() {
                *s = new_text.clone();
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| replace_strings(v, replacements)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| replace_strings(v, replacements)),
        _ => {}
    }
}

/// Removes the tools that the policy denies whatever their arguments from a request's
/// tool list, recording a finding for each. A removed tool that `forced` (the request's
/// tool choice) names blocks the request, because the model would reject the choice
/// anyway. Returns true when tools were removed and the list is now empty, so the caller
/// can drop the fields that the provider rejects without tools.
pub fn remove_denied(
    guard: &Guard,
    tools: &mut Vec<Value>,
    tool_name: fn(&Value) -> Option<&str>,
    forced: Option<&str>,
    evaluation: &mut Evaluation,
) -> bool {
    let mut removed = Vec::new();
    tools.retain(|tool| {
        let Some(name) = tool_name(tool) else {
            return true;
        };
        match guard.tool_denied_outright(name) {
            Some(rule) => {
                removed.push((rule, name.to_owned()));
                false
            }
            None => true,
        }
    });
    if removed.is_empty() {
        return false;
    }
    for (rule, name) in removed {
        let is_forced = forced == Some(name.as_str());
        let finding = Finding {
            rule: rule.clone(),
            kind: FindingKind::Action,
            entity: None,
            outcome: if is_forced {
                Outcome::Block
            } else {
                Outcome::Removed
            },
            mode: Mode::Enforce,
            direction: Direction::Input,
            part: None,
            start: None,
            end: None,
            tool: Some(name),
            detail: is_forced.then(|| "tool_choice forces a denied tool".to_owned()),
        };
        evaluation.absorb(Verdict::from_finding(&finding), vec![finding]);
    }
    tools.is_empty()
}
