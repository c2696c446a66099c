//! A local stand-in for a model provider, for trying the sidecar without a provider key
//! and for load tests. It serves the OpenAI Chat Completions API and the Anthropic
//! Messages API, streaming and not, and replies to every request with one assistant message:
//!
//! - by default the message repeats the last user text as the stub received it, so a
//!   user sees what the sidecar forwarded (`[CREDIT_CARD]` in place of a card number);
//! - with `--fixed`, the message is one constant sentence, so that a load test through the
//!   sidecar measures the sidecar and not the size of an echoed request.
//!
//! Usage: `cargo run --release -p agent-sidecar --example stub_upstream -- [ADDR] [--fixed]`
//! (ADDR defaults to `127.0.0.1:18090`). Point the sidecar at it with
//! `--openai-upstream http://ADDR/v1 --anthropic-upstream http://ADDR`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

const DEFAULT_ADDRESS: &str = "127.0.0.1:18090";
const FIXED_REPLY: &str = "Your order AB-1234567 shipped yesterday and should arrive on Friday.";
/// Streams carry the reply in pieces of this many characters, so that a client sees
/// several deltas, as from a real model.
const STREAM_PIECE_CHARS: usize = 12;
/// Creation time in the responses (Unix seconds); constant so replies are reproducible.
const CREATED: u64 = 1_733_000_000;

#[derive(Debug, Clone, Copy)]
enum Reply {
    Echo,
    Fixed,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut address = DEFAULT_ADDRESS.to_owned();
    let mut reply = Reply::Echo;
    for argument in std::env::args().skip(1) {
        match argument.as_str() {
            "--fixed" => reply = Reply::Fixed,
            "--help" | "-h" => {
                eprintln!(
                    "usage: stub_upstream [ADDR] [--fixed]   (ADDR defaults to {DEFAULT_ADDRESS})"
                );
                return Ok(());
            }
            other if other.starts_with('-') => {
                eprintln!("stub_upstream: unknown option {other:?}; the only option is --fixed");
                std::process::exit(2);
            }
            other => other.clone_into(&mut address),
        }
    }
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .with_state(reply);
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!(
        "stub upstream listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}

/// Returns the reply text for a request whose last user message is `last_user_text`.
fn reply_text(reply: Reply, last_user_text: Option<String>) -> String {
    match reply {
        Reply::Fixed => FIXED_REPLY.to_owned(),
        Reply::Echo => format!(
            "The stub received: {}",
            last_user_text.unwrap_or_else(|| "(no user text)".to_owned())
        ),
    }
}

/// Concatenates the text of a message's `content`: a string, or a list of parts or blocks
/// whose `text` fields are joined (both providers use `{"type": "text", "text": ...}`).
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join(" "))
        }
        _ => None,
    }
}

fn last_user_text(request: &Value) -> Option<String> {
    request
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|message| content_text(message.get("content")?))
}

fn model_of(request: &Value) -> String {
    request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("stub-model")
        .to_owned()
}

/// Splits `text` into pieces of at most `STREAM_PIECE_CHARS` characters, on character
/// boundaries.
fn pieces(text: &str) -> Vec<String> {
    let characters: Vec<char> = text.chars().collect();
    characters
        .chunks(STREAM_PIECE_CHARS)
        .map(|chunk| chunk.iter().collect())
        .collect()
}

/// Estimates tokens for the usage fields: one token per four bytes, at least one.
fn rough_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

fn sse(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

async fn chat_completions(State(reply): State<Reply>, body: axum::body::Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not JSON");
    };
    let model = model_of(&request);
    let prompt = last_user_text(&request);
    let prompt_tokens = rough_tokens(prompt.as_deref().unwrap_or_default());
    let text = reply_text(reply, prompt);
    let completion_tokens = rough_tokens(&text);

    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return Json(json!({
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))
        .into_response();
    }

    let chunk = |delta: Value, finish_reason: Value| {
        json!({
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(
        pieces(&text)
            .into_iter()
            .map(|piece| chunk(json!({"content": piece}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    if include_usage {
        let mut last = chunk(json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last);
    }
    let mut body: String = events
        .iter()
        .map(|event| format!("data: {event}\n\n"))
        .collect();
    body.push_str("data: [DONE]\n\n");
    sse(body)
}

async fn messages(State(reply): State<Reply>, body: axum::body::Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "the request body is not JSON"}})),
        )
            .into_response();
    };
    let model = model_of(&request);
    let prompt = last_user_text(&request);
    let input_tokens = rough_tokens(prompt.as_deref().unwrap_or_default());
    let text = reply_text(reply, prompt);
    let output_tokens = rough_tokens(&text);

    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return Json(json!({
            "id": "msg_stub",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }))
        .into_response();
    }

    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    events.extend(pieces(&text).into_iter().map(|piece| {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        )
    }));
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let body = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    sse(body)
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": "stub-model", "object": "model", "created": CREATED, "owned_by": "stub"}],
    }))
}
