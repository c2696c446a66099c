//! Streamed chat completions: the upstream's event stream flows through the streaming
//! guard to the client, one released piece at a time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::conversation::{self, Compaction, TurnContext};
use super::error::ProxyError;
use super::{ProxyState, VERDICT_HEADER};
use crate::context::tokens::TokenCounter;
use crate::dialect::openai::{self as dialect, ChatRequest};
use crate::guard::Guard;
use crate::policy::spec::{Direction, StreamGuardMode};
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, Decoder};
use crate::stream::StreamMode;
use crate::stream::openai::{Flow, OpenAiStream};
use crate::telemetry::metrics::GenAiCall;

/// Released pieces queued for the client before the reader waits; a slow client slows
/// the upstream read instead of growing memory.
const CLIENT_QUEUE_DEPTH: usize = 32;

/// Request state that a stream needs after the response headers are sent.
pub(super) struct StreamContext {
    pub guard: Arc<Guard>,
    pub model: String,
    /// Conversation the turn is recorded in; `None` for a request without one.
    pub turn: Option<TurnContext>,
    /// The guarded request messages in the common model, before any context fitting.
    pub request_messages: Vec<crate::dialect::Message>,
    /// The model call, as GenAI metrics describe it.
    pub call: GenAiCall,
}

/// Asks the upstream for usage in the stream. Returns true when the sidecar added the
/// option, so the extra usage chunk must not reach the client.
pub(super) fn request_usage(chat: &mut ChatRequest) -> bool {
    let already = chat
        .body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    if already {
        return false;
    }
    match chat.body.get_mut("stream_options") {
        Some(Value::Object(options)) => {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        }
        _ => {
            chat.body
                .insert("stream_options".to_owned(), json!({"include_usage": true}));
        }
    }
    true
}

/// Sends a streamed request and returns the client's response: a guarded event stream,
/// or the upstream's response as it came when it is an error or not a stream. After a
/// context overflow error the request is compacted and sent once more.
pub(super) async fn stream_chat(
    state: &ProxyState,
    body: Bytes,
    query: Option<&str>,
    headers: &HeaderMap,
    strip_usage: bool,
    compaction: Option<Compaction>,
    context: StreamContext,
) -> Result<Response, ProxyError> {
    let call_started = Instant::now();
    let opened = state
        .openai
        .open(
            Method::POST,
            "chat/completions",
            query,
            headers,
            body.clone(),
        )
        .await;
    let mut response = match opened {
        Ok(response) => response,
        Err(error) => {
            super::openai::record_call(state, &context.call, call_started, Err(&error));
            return Err(error);
        }
    };
    let mut retried = false;
    loop {
        let is_event_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if response.status().is_success() && is_event_stream {
            break;
        }
        let whole = state.openai.read_whole(response).await;
        let retry = match (&whole, retried) {
            (Ok(whole), false) => {
                super::openai::overflow_retry(state, whole, compaction.as_ref(), &body)
            }
            _ => None,
        };
        let Some(retry) = retry else {
            super::openai::record_call(state, &context.call, call_started, whole.as_ref());
            return super::openai::finish_whole(state, whole?, &context).await;
        };
        retried = true;
        response = state
            .openai
            .open(Method::POST, "chat/completions", query, headers, retry)
            .await?;
    }

    let provider_headers = response.headers().clone();
    let policy = context.guard.policy().clone();
    let mode = match policy.stream.mode {
        StreamGuardMode::Guarded => StreamMode::Guarded,
        StreamGuardMode::Monitor => StreamMode::Monitor,
    };
    let guarded = OpenAiStream::new(
        context.guard.clone(),
        mode,
        policy.stream.max_hold_back_bytes,
        strip_usage,
    );
    let (sender, receiver) = mpsc::channel::<Bytes>(CLIENT_QUEUE_DEPTH);
    tokio::spawn(pump(
        state.clone(),
        response,
        guarded,
        sender,
        context,
        call_started,
    ));

    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), receiver))
    });
    let mut client_response = Response::new(Body::from_stream(body));
    let out = client_response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of the client not to buffer the stream.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    out.insert(VERDICT_HEADER, HeaderValue::from_static("streaming"));
    super::reply::copy_provider_headers(&provider_headers, out);
    Ok(client_response)
}

/// Reads the upstream body, guards it, and sends each released piece to the client at
/// once. Ends when the stream completes, fails, or the client goes away.
async fn pump(
    state: ProxyState,
    response: reqwest::Response,
    mut guarded: OpenAiStream,
    sender: mpsc::Sender<Bytes>,
    context: StreamContext,
    call_started: Instant,
) {
    let policy = context.guard.policy().clone();
    let idle = state.openai.stream_idle_timeout;
    let mut decoder = Decoder::new(DEFAULT_MAX_EVENT_BYTES);
    let mut upstream = response.bytes_stream();
    let mut frames = Vec::new();
    let mut out = String::new();
    let mut client_gone = false;
    let mut first_chunk = true;
    // Upstream failure code for the GenAI duration metric; a guardrail block is not one.
    let mut error_type: Option<&'static str> = None;
    // Time spent in the streaming guard, summed over the stream's events.
    let mut evaluation = Duration::ZERO;

    let flow = loop {
        let next = tokio::time::timeout(idle, upstream.next()).await;
        if first_chunk && matches!(next, Ok(Some(Ok(_)))) {
            first_chunk = false;
            state
                .metrics
                .record_time_to_first_chunk(&context.call, call_started.elapsed());
        }
        let evaluation_started = Instant::now();
        let flow = match next {
            Err(_) => {
                tracing::warn!(provider = state.openai.name, "upstream stream went idle");
                error_type = Some("upstream_timeout");
                guarded.fail(
                    &mut out,
                    "upstream sent nothing within the idle timeout",
                    "upstream_timeout",
                )
            }
            Ok(None) => {
                if decoder.finish() {
                    tracing::debug!("upstream stream ended inside an event");
                }
                guarded.on_upstream_end(&mut out)
            }
            Ok(Some(Err(error))) => {
                tracing::warn!(provider = state.openai.name, error = %error, "upstream stream failed");
                error_type = Some("upstream_unavailable");
                guarded.fail(
                    &mut out,
                    "upstream connection failed during the stream",
                    "upstream_unavailable",
                )
            }
            Ok(Some(Ok(bytes))) => match decoder.feed(&bytes, &mut frames) {
                Err(error) => {
                    tracing::warn!(provider = state.openai.name, error = %error, "upstream stream is not a valid event stream");
                    error_type = Some("upstream_invalid_response");
                    guarded.fail(
                        &mut out,
                        &format!("upstream stream is invalid: {error}"),
                        "upstream_invalid_response",
                    )
                }
                Ok(()) => {
                    let mut flow = Flow::Continue;
                    for frame in frames.drain(..) {
                        flow = guarded.on_frame(frame, &mut out);
                        if flow != Flow::Continue {
                            break;
                        }
                    }
                    frames.clear();
                    flow
                }
            },
        };
        evaluation += evaluation_started.elapsed();
        state
            .metrics
            .record_findings(&policy.identity, &guarded.take_findings());
        if flow != Flow::Continue {
            // The last piece (with `[DONE]` or the error event) is sent after the turn is
            // stored, so a client's next request always finds this turn and its
            // pseudonyms in the store.
            break flow;
        }
        if !out.is_empty()
            && sender
                .send(Bytes::from(std::mem::take(&mut out)))
                .await
                .is_err()
        {
            client_gone = true;
            break Flow::Failed;
        }
    };

    state
        .metrics
        .record_gen_ai_call(&context.call, call_started.elapsed(), error_type);
    state
        .metrics
        .record_guard_evaluation(&policy.identity, Direction::Output, evaluation);
    let overflows = guarded.hold_back_overflows();
    if overflows > 0 {
        state
            .metrics
            .record_hold_back_overflows(&policy.identity.name, overflows);
    }
    if client_gone {
        tracing::debug!(model = %context.model, "client closed the stream");
        return;
    }
    let completion = guarded.released_completion();
    record_usage(&state, &context, guarded.usage(), &completion);
    // A failed or blocked stream is not stored as a complete turn.
    let complete = flow == Flow::Finished && guarded.error.is_none();
    if let (true, Some(turn)) = (complete, &context.turn) {
        conversation::record_turn(
            &state,
            &context.guard,
            turn,
            &context.model,
            &context.request_messages,
            dialect::response_message(&completion),
        )
        .await;
    }
    if !out.is_empty() && sender.send(Bytes::from(out)).await.is_err() {
        tracing::debug!(model = %context.model, "client closed the stream before its end");
    }
}

/// Records token usage: the upstream's figures when it reported them, else the sidecar's
/// own count with the model's tokenizer (an estimate for models whose tokenizer is not
/// public, and for unknown models, which use the default encoding).
pub(super) fn record_usage(
    state: &ProxyState,
    context: &StreamContext,
    usage: Option<&Value>,
    completion: &Value,
) {
    let reported = usage.and_then(|u| {
        let input = u.get("prompt_tokens")?.as_u64()?;
        let output = u.get("completion_tokens")?.as_u64()?;
        Some((input, output))
    });
    if let Some((input, output)) = reported {
        state
            .metrics
            .record_tokens(&context.call, input, output, "upstream");
        return;
    }
    let counter = TokenCounter::for_model(&context.model);
    let input = counter.messages(&context.request_messages);
    let output: u32 = dialect::response_message(completion)
        .map(|message| counter.message(&message))
        .unwrap_or(0);
    state.metrics.record_tokens(
        &context.call,
        u64::from(input),
        u64::from(output),
        "sidecar",
    );
}
