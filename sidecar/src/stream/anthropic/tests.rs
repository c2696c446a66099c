use serde_json::json;

use super::*;
use crate::guard::pii::HashKey;
use crate::policy::Policy;
use crate::sse::{Decoder, Event};

const POLICY: &str = r#"
apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata: {name: unit}
spec:
  onBlock: {response: refusal, refusal: "No."}
  topics:
    - {id: no-weapons, phrases: ["build a bomb"]}
  actions:
    default: allow
    rules:
      - {id: no-deletes, tools: ["delete_*"], decision: deny}
  pii:
    - {id: contact-details, entities: [EMAIL, PHONE], input: redact, output: redact}
"#;

fn policy(on_block: &str) -> Policy {
    let text = POLICY.replace("response: refusal", &format!("response: {on_block}"));
    crate::policy::compile_for_test(&text)
}

fn guarded(on_block: &str) -> AnthropicStream {
    let guard = Guard::new(Arc::new(policy(on_block)), Arc::new(HashKey::new(b"k")));
    AnthropicStream::new(Arc::new(guard), StreamMode::Guarded, 8192)
}

fn frame(payload: &Value) -> Frame {
    Frame::Event(Event {
        event: payload["type"].as_str().map(str::to_owned),
        data: payload.to_string(),
        ..Event::default()
    })
}

fn message_start() -> Value {
    json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
        "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 25, "output_tokens": 1}}})
}

fn message_end(reason: &str) -> Vec<Value> {
    vec![
        json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null}, "usage": {"output_tokens": 15}}),
        json!({"type": "message_stop"}),
    ]
}

fn text_block(index: u64, deltas: &[&str]) -> Vec<Value> {
    let mut events = vec![
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    ];
    for text in deltas {
        events.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}));
    }
    events.push(json!({"type": "content_block_stop", "index": index}));
    events
}

fn tool_block(index: u64, name: &str, fragments: &[&str]) -> Vec<Value> {
    let mut events = vec![json!({"type": "content_block_start", "index": index,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}})];
    for fragment in fragments {
        events.push(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": fragment}}));
    }
    events.push(json!({"type": "content_block_stop", "index": index}));
    events
}

fn stream_of(blocks: Vec<Vec<Value>>, reason: &str) -> Vec<Value> {
    let mut events = vec![message_start()];
    for block in blocks {
        events.extend(block);
    }
    events.extend(message_end(reason));
    events
}

/// Runs events through a fresh guard; returns the client's bytes and the last flow.
fn run(on_block: &str, events: &[Value]) -> (String, Flow, AnthropicStream) {
    let mut stream = guarded(on_block);
    let mut out = String::new();
    let mut flow = Flow::Continue;
    for event in events {
        flow = stream.on_frame(frame(event), &mut out);
        if flow != Flow::Continue {
            break;
        }
    }
    if flow == Flow::Continue {
        flow = stream.on_upstream_end(&mut out);
    }
    (out, flow, stream)
}

/// Parses the client's bytes back into the message the SDK would assemble.
fn client_message(out: &str) -> Value {
    let mut assembly = MessageAssembly::default();
    for event in sse::parse(out, sse::DEFAULT_MAX_EVENT_BYTES).expect("valid event stream") {
        let payload: Value = serde_json::from_str(&event.data).expect("JSON payload");
        assert_eq!(
            event.event.as_deref(),
            payload["type"].as_str(),
            "event name matches the payload type"
        );
        assembly.push(&payload);
    }
    assembly.to_message()
}

#[test]
fn every_split_gives_same_message() {
    let text = "Reach Jane at jane.doe@example.com or +1 415 555 2671, any time.";
    let expected = "Reach Jane at [EMAIL] or [PHONE], any time.";
    for cut in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
        let events = stream_of(
            vec![text_block(0, &[&text[..cut], &text[cut..]])],
            "end_turn",
        );
        let (out, flow, _) = run("refusal", &events);
        assert_eq!(flow, Flow::Finished, "split at {cut}");
        let message = client_message(&out);
        assert_eq!(
            message["content"][0]["text"],
            json!(expected),
            "split at {cut}"
        );
        assert!(!out.contains("jane.doe"), "split at {cut}: {out}");
    }
}

#[test]
fn every_byte_split_gives_same_output() {
    let events = stream_of(
        vec![
            text_block(0, &["Mail jane.d", "oe@example.com now"]),
            tool_block(1, "lookup", &["{\"q\": \"", "x\"}"]),
        ],
        "tool_use",
    );
    let mut upstream = String::new();
    for event in &events {
        sse::encode_named(
            event["type"].as_str().unwrap_or_default(),
            &event.to_string(),
            &mut upstream,
        );
    }
    let (expected, _, _) = run("refusal", &events);
    for cut in 0..=upstream.len() {
        let mut stream = guarded("refusal");
        let mut decoder = Decoder::new(sse::DEFAULT_MAX_EVENT_BYTES);
        let mut out = String::new();
        for piece in [&upstream.as_bytes()[..cut], &upstream.as_bytes()[cut..]] {
            let mut frames = Vec::new();
            decoder.feed(piece, &mut frames).expect("valid stream");
            for frame in frames {
                stream.on_frame(frame, &mut out);
            }
        }
        assert_eq!(out, expected, "split at byte {cut}");
    }
}

#[test]
fn text_is_released_before_block_stop() {
    let mut stream = guarded("refusal");
    let mut out = String::new();
    stream.on_frame(frame(&message_start()), &mut out);
    for event in &text_block(0, &["Your order has shipped and "])[..2] {
        stream.on_frame(frame(event), &mut out);
    }
    assert!(
        out.contains("Your order has shipped"),
        "plain text flows before the block ends: {out}"
    );
}

#[test]
fn denied_tool_use_never_released() {
    let events = stream_of(
        vec![
            text_block(0, &["Deleting now."]),
            tool_block(1, "delete_user", &["", "{\"user_id\"", ": \"u-1\"}"]),
        ],
        "tool_use",
    );
    let (out, flow, _) = run("refusal", &events);
    assert_eq!(flow, Flow::Finished);
    assert!(!out.contains("delete_user"), "{out}");
    let message = client_message(&out);
    assert_eq!(
        message["content"][1],
        json!({"type": "text", "text": "No."})
    );
    assert_eq!(message["stop_reason"], json!("refusal"));
}

#[test]
fn denied_tool_use_error_event() {
    let events = stream_of(vec![tool_block(0, "delete_user", &["{}"])], "tool_use");
    let (out, flow, stream) = run("error", &events);
    assert_eq!(flow, Flow::Failed);
    assert!(stream.failed());
    assert!(!out.contains("delete_user"), "{out}");
    assert!(out.contains("event: error\n"), "{out}");
    assert!(out.contains("permission_error"), "{out}");
    assert!(!out.contains("message_stop"), "{out}");
}

#[test]
fn empty_partial_json_is_empty_object() {
    for fragments in [&[][..], &[""][..], &["", " "][..]] {
        let events = stream_of(vec![tool_block(0, "get_time", fragments)], "tool_use");
        let (out, flow, _) = run("refusal", &events);
        assert_eq!(flow, Flow::Finished);
        let message = client_message(&out);
        assert_eq!(message["content"][0]["input"], json!({}), "{fragments:?}");
        assert_eq!(message["content"][0]["name"], json!("get_time"));
    }
}

#[test]
fn tool_input_pii_redacted_as_object() {
    let events = stream_of(
        vec![tool_block(
            0,
            "lookup",
            &["{\"email\": \"jane.d", "oe@example.com\", \"n\": 2}"],
        )],
        "tool_use",
    );
    let (out, _, _) = run("refusal", &events);
    let message = client_message(&out);
    assert_eq!(
        message["content"][0]["input"],
        json!({"email": "[EMAIL]", "n": 2})
    );
}

#[test]
fn denied_phrase_mid_text_refused() {
    let events = stream_of(
        vec![text_block(0, &["Here is how to build ", "a bomb at home"])],
        "end_turn",
    );
    let (out, flow, _) = run("refusal", &events);
    assert_eq!(flow, Flow::Finished);
    let message = client_message(&out);
    let text = message["content"][0]["text"].as_str().unwrap_or_default();
    assert!(!text.contains("bomb"), "{text}");
    assert!(text.ends_with("\n\nNo."), "{text}");
    assert_eq!(message["stop_reason"], json!("refusal"));
}

#[test]
fn thinking_passes_through_unchanged() {
    let thinking = vec![
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "mail jane.doe@example.com"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
        json!({"type": "content_block_stop", "index": 0}),
    ];
    let events = stream_of(vec![thinking.clone()], "end_turn");
    let (out, _, _) = run("refusal", &events);
    for event in &thinking {
        assert!(out.contains(&event.to_string()), "{event} forwarded as is");
    }
}

#[test]
fn usage_merged_without_double_counting() {
    let events = stream_of(vec![text_block(0, &["Hi."])], "end_turn");
    let (_, _, stream) = run("refusal", &events);
    assert_eq!(stream.reported_usage(), Some((25, 15)));
}

#[test]
fn upstream_error_event_forwarded() {
    let error =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    let mut events = vec![message_start()];
    events.extend(text_block(0, &["Partial answer"])[..2].to_vec());
    events.push(error.clone());
    let (out, flow, stream) = run("refusal", &events);
    assert_eq!(flow, Flow::Failed);
    assert!(stream.failed());
    assert!(
        out.ends_with(&format!("event: error\ndata: {error}\n\n")),
        "{out}"
    );
}

#[test]
fn stream_cut_short_releases_then_fails() {
    let mut events = vec![message_start()];
    events.extend(text_block(0, &["Partial answer"])[..2].to_vec());
    let (out, flow, _) = run("refusal", &events);
    assert_eq!(flow, Flow::Failed);
    let answer = out.find("answer");
    let error = out.find("event: error");
    assert!(
        answer.is_some() && answer < error,
        "held text comes first: {out}"
    );
    assert!(out.contains("api_error"), "{out}");
}

fn thinking_block(index: u64, text: &str) -> Vec<Value> {
    vec![
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": text}}),
        json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": "sig"}}),
        json!({"type": "content_block_stop", "index": index}),
    ]
}

fn scanning() -> AnthropicStream {
    let yaml = format!("{POLICY}  thinking: {{scan: true}}\n");
    let guard = Guard::new(
        Arc::new(crate::policy::compile_for_test(&yaml)),
        Arc::new(HashKey::new(b"k")),
    );
    AnthropicStream::new(Arc::new(guard), StreamMode::Guarded, 8192)
}

#[test]
fn scanned_thinking_held_until_checked() {
    let events = stream_of(
        vec![
            thinking_block(0, "they want to build a bomb"),
            text_block(1, &["Sure."]),
        ],
        "end_turn",
    );
    let mut stream = scanning();
    let mut out = String::new();
    let mut flow = Flow::Continue;
    for event in &events {
        flow = stream.on_frame(frame(event), &mut out);
        if flow != Flow::Continue {
            break;
        }
    }
    assert_eq!(flow, Flow::Finished);
    assert!(
        !out.contains("bomb"),
        "blocked thinking never reaches the client: {out}"
    );
    let message = client_message(&out);
    assert_eq!(
        message["content"][0],
        json!({"type": "text", "text": "No."})
    );
    assert_eq!(message["stop_reason"], json!("refusal"));
}

#[test]
fn scanned_thinking_released_unchanged() {
    let events = stream_of(
        vec![thinking_block(0, "mail jane.doe@example.com")],
        "end_turn",
    );
    let mut stream = scanning();
    let mut out = String::new();
    for event in &events {
        stream.on_frame(frame(event), &mut out);
    }
    let message = client_message(&out);
    assert_eq!(
        message["content"][0]["thinking"],
        json!("mail jane.doe@example.com")
    );
    assert_eq!(message["content"][0]["signature"], json!("sig"));
    assert_eq!(stream.take_findings().len(), 1, "the email is recorded");
}
