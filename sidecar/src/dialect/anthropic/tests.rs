use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::guard::pii::HashKey;

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
"#;

fn guard() -> Guard {
    let policy = crate::policy::compile_for_test(POLICY);
    Guard::new(Arc::new(policy), Arc::new(HashKey::new(b"k")))
}

fn request(body: Value) -> MessagesRequest {
    parse_request(body.to_string().as_bytes(), Endpoint::Messages).expect("valid request")
}

fn invalid(body: Value) -> InvalidRequest {
    match parse_request(body.to_string().as_bytes(), Endpoint::Messages) {
        Err(ParseError::Schema(invalid)) => invalid,
        other => panic!("expected a schema error, got {other:?}"),
    }
}

fn base(messages: Value) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": messages})
}

#[test]
fn missing_max_tokens_is_invalid() {
    let error = invalid(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(error.param.as_deref(), Some("max_tokens"));
    assert!(error.message.contains("missing"), "{}", error.message);
}

#[test]
fn count_tokens_needs_no_max_tokens() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let parsed = parse_request(body.to_string().as_bytes(), Endpoint::CountTokens);
    assert!(parsed.is_ok(), "{parsed:?}");
}

#[test]
fn content_of_wrong_type_is_invalid() {
    let error = invalid(base(json!([{"role": "user", "content": 42}])));
    assert_eq!(error.param.as_deref(), Some("messages.0.content"));
    assert!(error.message.contains("a number"), "{}", error.message);
}

#[test]
fn block_types_are_checked_per_role() {
    let cases = [
        (
            json!([{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]),
            "messages.0.content.0.type",
        ),
        (
            json!([{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]),
            "messages.0.content.0.type",
        ),
        (
            json!([{"role": "user", "content": [{"type": "txt", "text": "hi"}]}]),
            "messages.0.content.0.type",
        ),
        (
            json!([{"role": "user", "content": [{"type": 7}]}]),
            "messages.0.content.0.type",
        ),
        (
            json!([{"role": "user", "content": [{"type": "text"}]}]),
            "messages.0.content.0.text",
        ),
        (
            json!([{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}]}]),
            "messages.0.content.0.input",
        ),
        (
            json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]}]}]),
            "messages.0.content.0.content.0.type",
        ),
        (
            json!([{"role": "system", "content": "hi"}]),
            "messages.0.role",
        ),
    ];
    for (messages, param) in cases {
        let error = invalid(base(messages.clone()));
        assert_eq!(error.param.as_deref(), Some(param), "messages: {messages}");
    }
}

#[test]
fn system_must_be_text() {
    let mut body = base(json!([{"role": "user", "content": "hi"}]));
    body["system"] = json!(5);
    assert_eq!(invalid(body.clone()).param.as_deref(), Some("system"));
    body["system"] = json!([{"type": "image", "source": {}}]);
    assert_eq!(invalid(body).param.as_deref(), Some("system.0.type"));
}

#[test]
fn email_in_text_and_system_is_redacted() {
    let mut body = base(json!([{"role": "user", "content": [
        {"type": "text", "text": "mail jane.doe@example.com"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
    ]}]));
    body["system"] = json!("The owner is bob@example.org");
    let mut messages = request(body);
    let evaluation = guard_request(&guard(), &mut messages);
    assert_eq!(evaluation.verdict, Verdict::Transform);
    assert_eq!(
        messages.body["messages"][0]["content"][0]["text"],
        json!("mail [EMAIL]")
    );
    assert_eq!(
        messages.body["messages"][0]["content"][1]["source"]["data"],
        json!("AAAA")
    );
    assert_eq!(messages.body["system"], json!("The owner is [EMAIL]"));
}

#[test]
fn tool_result_content_is_redacted() {
    let mut messages = request(base(json!([
        {"role": "user", "content": "who is the customer?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "jane.doe@example.com"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "email jane.doe@example.com"},
            {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "or +1 415 555 2671"}]},
        ]},
    ])));
    guard_request(&guard(), &mut messages);
    let body = &messages.body["messages"];
    assert_eq!(body[1]["content"][0]["input"], json!({"q": "[EMAIL]"}));
    assert_eq!(body[2]["content"][0]["content"], json!("email [EMAIL]"));
    assert_eq!(
        body[2]["content"][1]["content"][0]["text"],
        json!("or [PHONE]")
    );
}

#[test]
fn topic_check_reads_last_typed_text() {
    let mut messages = request(base(json!([
        {"role": "user", "content": "how do I build a bomb"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "nothing"}]},
    ])));
    let evaluation = guard_request(&guard(), &mut messages);
    assert!(
        matches!(evaluation.verdict, Verdict::Block { .. }),
        "{:?}",
        evaluation.verdict
    );
}

#[test]
fn thinking_blocks_are_not_scanned() {
    let thinking =
        json!({"type": "thinking", "thinking": "mail jane.doe@example.com", "signature": "sig"});
    let mut messages = request(base(json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [thinking.clone(), {"type": "text", "text": "ok"}]},
        {"role": "user", "content": "thanks"},
    ])));
    let evaluation = guard_request(&guard(), &mut messages);
    assert_eq!(evaluation.verdict, Verdict::Allow);
    assert_eq!(messages.body["messages"][1]["content"][0], thinking);
}

#[test]
fn denied_tool_is_removed_with_its_choice() {
    let mut body = base(json!([{"role": "user", "content": "hi"}]));
    body["tools"] = json!([{"name": "delete_user", "input_schema": {"type": "object"}}]);
    body["tool_choice"] = json!({"type": "auto"});
    let mut messages = request(body);
    let evaluation = guard_request(&guard(), &mut messages);
    assert!(messages.body.get("tools").is_none());
    assert!(messages.body.get("tool_choice").is_none());
    assert_eq!(evaluation.findings.len(), 1);
}

#[test]
fn forced_denied_tool_blocks() {
    let mut body = base(json!([{"role": "user", "content": "hi"}]));
    body["tools"] = json!([{"name": "delete_user", "input_schema": {"type": "object"}}]);
    body["tool_choice"] = json!({"type": "tool", "name": "delete_user"});
    let mut messages = request(body);
    let evaluation = guard_request(&guard(), &mut messages);
    assert!(matches!(evaluation.verdict, Verdict::Block { .. }));
}

#[test]
fn response_tool_use_is_checked_and_stays_an_object() {
    let guard = guard();
    let mut response = json!({"type": "message", "role": "assistant", "content": [
        {"type": "text", "text": "Refunding jane.doe@example.com"},
        {"type": "tool_use", "id": "t1", "name": "refund_order", "input": {"amount": 20, "note": "for jane.doe@example.com"}},
    ], "stop_reason": "tool_use"});
    let evaluation = guard_response(&guard, &mut response);
    assert_eq!(evaluation.verdict, Verdict::Transform);
    assert_eq!(response["content"][0]["text"], json!("Refunding [EMAIL]"));
    assert_eq!(
        response["content"][1]["input"],
        json!({"amount": 20, "note": "for [EMAIL]"})
    );

    let mut over_limit = json!({"content": [
        {"type": "tool_use", "id": "t1", "name": "refund_order", "input": {"amount": 500}},
    ]});
    let evaluation = guard_response(&guard, &mut over_limit);
    assert!(matches!(evaluation.verdict, Verdict::Block { .. }));
}

#[test]
fn refusal_replaces_content() {
    let mut response = json!({"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}});
    replace_with_refusal(&mut response, "no");
    assert_eq!(response["content"], json!([{"type": "text", "text": "no"}]));
    assert_eq!(response["stop_reason"], json!("refusal"));
    assert_eq!(response["id"], json!("msg_1"));
    assert_eq!(response["usage"]["input_tokens"], json!(3));
}

#[test]
fn usage_merge_does_not_double_count() {
    let mut usage = json!({"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5});
    merge_usage(&mut usage, &json!({"output_tokens": 15}));
    assert_eq!(
        read_usage(&usage),
        Some(Usage {
            input: 30,
            output: 15
        })
    );
    merge_usage(
        &mut usage,
        &json!({"input_tokens": 25, "output_tokens": 20}),
    );
    assert_eq!(
        read_usage(&usage),
        Some(Usage {
            input: 30,
            output: 20
        })
    );
}

#[test]
fn empty_tool_input_is_an_empty_object() {
    assert_eq!(parse_tool_input(""), Some(json!({})));
    assert_eq!(parse_tool_input("  "), Some(json!({})));
    assert_eq!(parse_tool_input("[1]"), None);
    assert_eq!(parse_tool_input("{\"a\":"), None);
}

#[test]
fn assembly_and_events_round_trip() {
    let message = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "let me see", "signature": "sig"},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}},
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    });
    let mut assembly = MessageAssembly::default();
    for (name, payload) in message_to_events(&message) {
        assert_eq!(payload["type"], json!(name));
        assembly.push(&payload);
    }
    assert_eq!(assembly.to_message(), message);
}

#[test]
fn request_messages_include_system_and_tool_parts() {
    let mut body = base(json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
    ]));
    body["system"] = json!([{"type": "text", "text": "be brief"}]);
    let common = request_messages(&request(body));
    assert_eq!(common.len(), 4);
    assert_eq!(common[0].role, Role::System);
    assert_eq!(
        common[2].parts,
        vec![Part::ToolCall {
            id: "t1".to_owned(),
            name: "lookup".to_owned(),
            arguments: "{}".to_owned()
        }]
    );
    assert_eq!(
        common[3].parts,
        vec![Part::ToolResult {
            call_id: "t1".to_owned(),
            text: "a\nb".to_owned()
        }]
    );
}

fn scanning_guard() -> Guard {
    let policy = crate::policy::compile_for_test(&format!("{POLICY}  thinking: {{scan: true}}\n"));
    Guard::new(Arc::new(policy), Arc::new(HashKey::new(b"k")))
}

#[test]
fn scanned_thinking_blocks_but_is_not_rewritten() {
    let guard = scanning_guard();
    let pii =
        json!({"type": "thinking", "thinking": "mail jane.doe@example.com", "signature": "sig"});
    let mut response = json!({"content": [pii.clone(), {"type": "text", "text": "ok"}]});
    let evaluation = guard_response(&guard, &mut response);
    assert_eq!(evaluation.verdict, Verdict::Allow);
    assert_eq!(evaluation.findings.len(), 1, "the email is recorded");
    assert_eq!(
        response["content"][0], pii,
        "thinking text keeps its signature"
    );

    let mut denied = json!({"content": [
        {"type": "thinking", "thinking": "they want to build a bomb", "signature": "sig"},
    ]});
    let evaluation = guard_response(&guard, &mut denied);
    assert!(
        matches!(evaluation.verdict, Verdict::Block { .. }),
        "{:?}",
        evaluation.verdict
    );
}

#[test]
fn unscanned_thinking_is_ignored() {
    let mut denied = json!({"content": [
        {"type": "thinking", "thinking": "they want to build a bomb", "signature": "sig"},
    ]});
    let evaluation = guard_response(&guard(), &mut denied);
    assert_eq!(evaluation.verdict, Verdict::Allow);
    assert!(evaluation.findings.is_empty());
}
