//! Streamed responses of either dialect: the upstream's event stream flows through the
//! dialect's streaming guard to the client, one released piece at a time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::ProxyState;
use super::conversation::{self, TurnContext};
use super::reply::{copy_provider_headers, event_stream_headers};
use super::routing::Target;
use crate::context::tokens::TokenCounter;
use crate::dialect::Message;
use crate::guard::{Guard, Verdict};
use crate::policy::Policy;
use crate::policy::spec::{Direction, StreamGuardMode};
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, Decoder};
use crate::stream::{Flow, GuardedStream, StreamMode};
use crate::telemetry::metrics::GenAiCall;
use crate::telemetry::traces;
use tracing::Span;

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
    pub request_messages: Vec<Message>,
    /// The input guardrails' verdict, merged with the output's into the response's
    /// verdict header, so a request whose PII was redacted reads `transform`.
    pub input_verdict: Verdict,
    /// The model call, as GenAI metrics describe it.
    pub call: GenAiCall,
    /// The sidecar's estimate of the request's input tokens, compared with the
    /// upstream's count in the token estimate drift metric; `None` where not estimated.
    pub input_estimate: Option<u32>,
    /// Client span of the model call. It ends when the context is dropped, which for a
    /// stream is after its last event.
    pub span: Span,
}

/// Returns the streaming guard's release mode under `policy`.
pub(super) fn mode(policy: &Policy) -> StreamMode {
    match policy.stream.mode {
        StreamGuardMode::Guarded => StreamMode::Guarded,
        StreamGuardMode::Monitor => StreamMode::Monitor,
    }
}

/// Starts guarding an upstream event stream and returns the client's response, whose
/// body carries each released piece as soon as the guard releases it. `call_started`
/// is when the request was sent, for the GenAI duration metrics.
pub(super) fn serve<S: GuardedStream>(
    state: &ProxyState,
    target: &Arc<Target>,
    response: reqwest::Response,
    guarded: S,
    context: StreamContext,
    call_started: Instant,
) -> Response {
    let provider_headers = response.headers().clone();
    let (sender, receiver) = mpsc::channel::<Bytes>(CLIENT_QUEUE_DEPTH);
    tokio::spawn(pump(
        state.clone(),
        target.clone(),
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
    let headers = client_response.headers_mut();
    event_stream_headers(headers, "streaming", None);
    copy_provider_headers(&provider_headers, headers);
    client_response
}

/// Returns whether an upstream response is an event stream the guard can read.
pub(super) fn is_event_stream(response: &reqwest::Response) -> bool {
    let content_type = response.headers().get(axum::http::header::CONTENT_TYPE);
    response.status().is_success()
        && content_type
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Reads the upstream body, guards it, and sends each released piece to the client at
/// once. Ends when the stream completes, fails, or the client goes away.
async fn pump<S: GuardedStream>(
    state: ProxyState,
    target: Arc<Target>,
    response: reqwest::Response,
    mut guarded: S,
    sender: mpsc::Sender<Bytes>,
    context: StreamContext,
    call_started: Instant,
) {
    let policy = context.guard.policy().clone();
    let idle = target.upstream.stream_idle_timeout;
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
    // One span covers the guard over the whole stream, because a span per event would
    // cost more than the guard itself.
    let guard_span = context
        .span
        .in_scope(|| traces::guardrail_span(Direction::Output));
    let mut stream_findings = Vec::new();
    let mut stream_verdict = Verdict::Allow;

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
                tracing::warn!(target.name = target.name, "upstream stream went idle");
                target.health.record_late_failure("stream idle timeout");
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
                tracing::warn!(target.name = target.name, error = %error, "upstream stream failed");
                target.health.record_late_failure("stream broken");
                error_type = Some("upstream_unavailable");
                guarded.fail(
                    &mut out,
                    "upstream connection failed during the stream",
                    "upstream_unavailable",
                )
            }
            Ok(Some(Ok(bytes))) => match decoder.feed(&bytes, &mut frames) {
                Err(error) => {
                    tracing::warn!(target.name = target.name, error = %error, "upstream stream is not a valid event stream");
                    target.health.record_late_failure("invalid event stream");
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
        let findings = guarded.take_findings();
        state.metrics.record_findings(&policy.identity, &findings);
        if !guard_span.is_disabled() {
            for finding in &findings {
                stream_verdict.merge(Verdict::from_finding(finding));
            }
            stream_findings.extend(findings);
        }
        if flow != Flow::Continue {
            // The last piece (with the stream's last event or the error event) is sent
            // after the turn is stored, so a client's next request always finds this turn
            // and its pseudonyms in the store.
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

    traces::record_guardrail(&guard_span, &stream_verdict, &stream_findings);
    drop(guard_span);
    if let Some(error_type) = error_type {
        traces::record_error(&context.span, error_type);
    }
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
    // Escalations the guard raised in this stream are stored before the error event that
    // names them is sent, so an agent that lists them at once finds them.
    if let Some(escalations) = context.guard.escalations() {
        state.escalations.store_raised(escalations).await;
    }
    if client_gone {
        tracing::debug!(model = %context.model, "client closed the stream");
        return;
    }
    let response_message = guarded.response_message();
    record_usage(
        &state,
        &context,
        guarded.reported_usage(),
        response_message.as_ref(),
    );
    // A failed or blocked stream is not stored as a complete turn.
    let complete = flow == Flow::Finished && !guarded.failed();
    if let (true, Some(turn)) = (complete, &context.turn) {
        conversation::record_turn(
            &state,
            &context.guard,
            turn,
            &context.model,
            &context.request_messages,
            response_message,
        )
        .await;
    }
    if !out.is_empty() && sender.send(Bytes::from(out)).await.is_err() {
        tracing::debug!(model = %context.model, "client closed the stream before its end");
    }
}

/// Records token usage: the upstream's figures (input, output) when it reported them,
/// else the sidecar's own count with the model's tokenizer (an estimate for models whose
/// tokenizer is not public, and for unknown models, which use the default encoding).
/// With both the upstream's input count and the sidecar's estimate, it also records how
/// far the estimate was off.
pub(super) fn record_usage(
    state: &ProxyState,
    context: &StreamContext,
    reported: Option<(u64, u64)>,
    response: Option<&Message>,
) {
    if let Some((input, output)) = reported {
        traces::record_usage(&context.span, input, output);
        state
            .metrics
            .record_tokens(&context.call, input, output, "upstream");
        if let Some(estimate) = context.input_estimate {
            state
                .metrics
                .record_token_estimate(&context.model, estimate, input);
        }
        return;
    }
    let counter = TokenCounter::for_model(&context.model);
    let input = counter.messages(&context.request_messages);
    let output: u32 = response.map_or(0, |message| counter.message(message));
    traces::record_usage(&context.span, u64::from(input), u64::from(output));
    state.metrics.record_tokens(
        &context.call,
        u64::from(input),
        u64::from(output),
        "sidecar",
    );
}
