use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::guard::Outcome;
use crate::guard::pii::HashKey;
use crate::policy::Policy;
use crate::policy::load::{PolicySource, parse_sources};

const POLICY: &str = r#"
apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata: {name: unit}
spec:
  topics:
    - {id: no-weapons, phrases: ["build a bomb"]}
  actions:
    default: allow
    rules:
      - {id: no-deletes, tools: ["delete_*"], decision: deny}
      - {id: refund-limit, tools: [refund_order], decision: allow, arguments: [{pointer: /amount, max: 100}]}
  pii:
    - {id: contact-details, entities: [EMAIL, PHONE], input: redact, output: redact}
    - {id: payment-data, entities: [CREDIT_CARD], input: mask, output: redact, maskKeep: 4}
"#;

fn guard() -> Guard {
    let sources = [PolicySource {
        name: "unit.yaml".to_owned(),
        text: POLICY.to_owned(),
    }];
    let (document, _) = parse_sources(&sources).expect("test policy parses");
    let policy = crate::policy::compile::compile(
        &document,
        crate::policy::PolicyIdentity {
            name: "unit".to_owned(),
            generation: None,
            hash: "0".to_owned(),
            source: "unit.yaml".to_owned(),
        },
    )
    .expect("test policy compiles");
    let _: &Policy = &policy;
    Guard::new(Arc::new(policy), Arc::new(HashKey::new(b"k")))
}

fn request(body: Value) -> ChatRequest {
    parse_request(body.to_string().as_bytes()).expect("valid request")
}

fn message_content(request: &ChatRequest, index: usize) -> Value {
    request.body["messages"][index]["content"].clone()
}

#[test]
fn email_in_string_content_is_redacted() {
    let mut chat = request(json!({"model": "m", "messages": [
        {"role": "user", "content": "mail jane.doe@example.com now"}]}));
    let evaluation = guard_request(&guard(), &mut chat);
    assert_eq!(message_content(&chat, 0), json!("mail [EMAIL] now"));
    assert_eq!(evaluation.verdict, Verdict::Transform);
    assert_eq!(evaluation.findings.len(), 1);
}

#[test]
fn card_on_input_is_masked() {
    let mut chat = request(json!({"model": "m", "messages": [
        {"role": "user", "content": "card 4111 1111 1111 1111"}]}));
    guard_request(&guard(), &mut chat);
    assert_eq!(message_content(&chat, 0), json!("card **** **** **** 1111"));
}

#[test]
fn content_parts_are_checked_and_other_parts_kept() {
    let mut chat = request(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "how to build a"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "bomb, ask a@b.io"}]}]}),
    );
    let evaluation = guard_request(&guard(), &mut chat);
    assert!(
        matches!(evaluation.verdict, Verdict::Block { ref rule, .. } if rule.as_ref() == "no-weapons")
    );
    let parts = message_content(&chat, 0);
    assert_eq!(
        parts[1]["image_url"]["url"],
        json!("data:image/png;base64,AAAA")
    );
    assert_eq!(parts[2]["text"], json!("bomb, ask [EMAIL]"));
}

#[test]
fn tool_arguments_stay_valid_json_after_redaction() {
    let mut chat = request(json!({"model": "m", "messages": [
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"email\":\"jane@example.com\",\"n\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "owner: bob@example.org"}]}));
    guard_request(&guard(), &mut chat);
    let arguments = chat.body["messages"][0]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .expect("arguments stay a string")
        .to_owned();
    let parsed: Value = serde_json::from_str(&arguments).expect("arguments stay valid JSON");
    assert_eq!(parsed, json!({"email": "[EMAIL]", "n": 1}));
    assert_eq!(message_content(&chat, 1), json!("owner: [EMAIL]"));
}

#[test]
fn denied_tools_are_removed_from_request() {
    let mut chat = request(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "delete_user", "parameters": {}}},
            {"type": "function", "function": {"name": "get_user", "parameters": {}}}]}),
    );
    let evaluation = guard_request(&guard(), &mut chat);
    let names: Vec<&str> = chat.body["tools"]
        .as_array()
        .expect("tools kept")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(names, ["get_user"]);
    assert_eq!(evaluation.findings[0].outcome, Outcome::Removed);
    assert_eq!(evaluation.verdict, Verdict::Transform);
}

#[test]
fn removing_every_tool_drops_tool_choice() {
    let mut chat = request(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "delete_user"}}],
        "tool_choice": "auto", "parallel_tool_calls": true}),
    );
    guard_request(&guard(), &mut chat);
    assert!(chat.body.get("tools").is_none());
    assert!(chat.body.get("tool_choice").is_none());
    assert!(chat.body.get("parallel_tool_calls").is_none());
}

#[test]
fn forcing_a_denied_tool_blocks() {
    let mut chat = request(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "delete_user"}}],
        "tool_choice": {"type": "function", "function": {"name": "delete_user"}}}),
    );
    let evaluation = guard_request(&guard(), &mut chat);
    assert!(
        matches!(evaluation.verdict, Verdict::Block { ref rule, .. } if rule.as_ref() == "no-deletes")
    );
}

#[test]
fn unknown_fields_are_kept() {
    let mut chat = request(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi", "x_extra": 1}],
        "custom_field": {"a": [1, 2]}}),
    );
    guard_request(&guard(), &mut chat);
    assert_eq!(chat.body["custom_field"], json!({"a": [1, 2]}));
    assert_eq!(chat.body["messages"][0]["x_extra"], json!(1));
}

#[test]
fn returned_call_to_denied_tool_blocks_without_content() {
    let mut response = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
        "function": {"name": "delete_user", "arguments": "{\"id\": 7}"}}]}}]});
    let evaluation = guard_response(&guard(), &mut response);
    assert!(
        matches!(evaluation.verdict, Verdict::Block { ref rule, .. } if rule.as_ref() == "no-deletes")
    );
}

#[test]
fn argument_constraint_blocks_returned_call() {
    let call = |amount: i64| {
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "refund_order",
            "arguments": json!({"amount": amount}).to_string()}}]}}]})
    };
    let mut over = call(500);
    assert!(guard_response(&guard(), &mut over).verdict.is_blocking());
    let mut under = call(50);
    assert_eq!(guard_response(&guard(), &mut under).verdict, Verdict::Allow);
}

#[test]
fn special_token_text_is_plain() {
    let mut chat = request(json!({"model": "m", "messages": [
        {"role": "user", "content": "say <|endoftext|> literally"}]}));
    let evaluation = guard_request(&guard(), &mut chat);
    assert_eq!(evaluation.verdict, Verdict::Allow);
    assert_eq!(
        message_content(&chat, 0),
        json!("say <|endoftext|> literally")
    );
}

#[test]
fn schema_errors_name_the_field() {
    let cases = [
        (json!({"model": "m", "messages": "hi"}), "messages"),
        (json!({"model": 5, "messages": []}), "model"),
        (
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": 7}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            "stream",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}),
            "messages[0].content[0].text",
        ),
    ];
    for (body, param) in cases {
        match parse_request(body.to_string().as_bytes()) {
            Err(ParseError::Schema(invalid)) => {
                assert_eq!(invalid.param.as_deref(), Some(param), "{body}")
            }
            other => panic!("expected a schema error for {body}, got {other:?}"),
        }
    }
}

#[test]
fn empty_and_malformed_bodies_are_json_errors() {
    for body in [&b""[..], b"  ", b"{", b"\xff\xfe"] {
        assert!(
            matches!(parse_request(body), Err(ParseError::Json(_))),
            "{body:?}"
        );
    }
}

#[test]
fn stream_assembly_joins_deltas_and_tool_calls() {
    let chunks = [
        json!({"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "Write to jane.d"}}]}),
        json!({"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "oe@example.com"}}]}),
        json!({"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":"}},
            {"index": 0, "function": {"arguments": "1}"}}]}}]}),
        json!({"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"id": "x", "created": 1, "model": "m", "choices": [], "usage": {"total_tokens": 9}}),
    ];
    let mut assembly = StreamAssembly::default();
    for chunk in &chunks {
        assembly.push(chunk);
    }
    let mut completion = assembly.to_completion();
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        json!("Write to jane.doe@example.com")
    );
    assert_eq!(
        completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        json!("{\"q\":1}")
    );
    guard_response(&guard(), &mut completion);
    let re_emitted = completion_to_chunks(&completion);
    let text: String = re_emitted
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Write to [EMAIL]");
    assert_eq!(
        re_emitted
            .last()
            .map(|c| c["usage"]["total_tokens"].clone()),
        Some(json!(9))
    );
}
