//! Handlers for the OpenAI-compatible API.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::conversation::{self, TurnContext};
use super::error::ProxyError;
use super::openai_stream;
use super::pipeline::{self, ProviderDialect, record_evaluation};
use super::reply::passthrough;
use super::routing::{Call, Opened};
use super::stream::StreamContext;
use super::upstream::{Upstream, UpstreamResponse};
use super::{ProxyState, read_body};
use crate::config::routing::Dialect;
use crate::context::window::SUMMARY_INTRO;
use crate::context::{FitPlan, TokenCounter};
use crate::dialect::Message;
use crate::dialect::guarding::Evaluation;
use crate::dialect::openai::{self as dialect, ParseError};
use crate::guard::Guard;
use crate::policy::spec::Direction;
use crate::state::Summary;
use crate::telemetry::metrics::GenAiCall;
use crate::telemetry::traces;
use tracing::{Instrument, Span};

const ROUTE_CHAT: &str = "chat_completions";

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<ProxyState>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let span = traces::server_span(
        "POST /v1/chat/completions",
        "/v1/chat/completions",
        request.headers(),
    );
    let response = match handle_chat(&state, request).instrument(span.clone()).await {
        Ok(response) => response,
        Err(error) => {
            let _entered = span.enter();
            tracing::debug!(code = error.classify().2, "chat completion request failed");
            error.into_response()
        }
    };
    span.record("http.response.status_code", response.status().as_u16());
    traces::log_request_finished(&span, &response, started.elapsed());
    state
        .metrics
        .record_request(ROUTE_CHAT, response.status().as_u16(), started.elapsed());
    response
}

async fn handle_chat(state: &ProxyState, request: Request<Body>) -> Result<Response, ProxyError> {
    let query = request.uri().query().map(str::to_owned);
    let headers = request.headers().clone();
    let body = read_body(request, state.max_request_body_bytes).await?;
    let mut chat = dialect::parse_request(&body).map_err(|e| match e {
        ParseError::Json(message) => ProxyError::InvalidJson(message),
        ParseError::Schema(invalid) => ProxyError::InvalidRequest(invalid),
    })?;

    // One snapshot for the whole request: a policy reload while it runs does not change
    // the rules it is checked against.
    let enforced = state.guard.current();
    let policy = enforced.policy().clone();
    let conversation = conversation::open(state, &policy, &headers, &chat.body).await?;
    let guard = Arc::new(conversation::request_guard(state, &enforced, &conversation));
    traces::record_request(
        &Span::current(),
        &policy.identity,
        &chat.model,
        conversation.id.as_deref(),
    );
    let started = Instant::now();
    let guard_span = traces::guardrail_span(Direction::Input);
    let input = guard_span.in_scope(|| dialect::guard_request(&guard, &mut chat));
    traces::record_guardrail(&guard_span, &input.verdict, &input.findings);
    drop(guard_span);
    record_evaluation(
        state,
        &policy,
        Direction::Input,
        &chat.model,
        started,
        &input,
    );
    if let Some(block) = input.verdict.blocking_rule() {
        return pipeline::blocked::<OpenAi>(&policy, &chat.model, chat.stream, block, None, None);
    }

    // The whole guarded history is what the turn records; the window below may send less.
    let request_messages = dialect::request_messages(&chat);
    let summary = conversation
        .stored
        .as_ref()
        .and_then(|c| c.summary.as_ref());
    let budget = conversation::fit_request::<OpenAi>(state, &policy, &mut chat.body, summary)?;
    let compaction = conversation::Compaction::for_policy(&policy, summary);
    let turn = conversation.id.clone().map(|id| TurnContext {
        id,
        stored: conversation.stored,
        budget,
    });
    let call = GenAiCall {
        operation: GEN_AI_OPERATION_CHAT,
        provider: state.openai.name,
        model: chat.model.clone(),
    };
    let context = StreamContext {
        guard: guard.clone(),
        model: chat.model.clone(),
        turn,
        request_messages,
        input_verdict: input.verdict.clone(),
        input_estimate: None,
        span: traces::model_call_span(&call),
        call,
    };
    // The provider's spans join the agent's trace as children of the model call span.
    let headers = traces::propagate(&headers, &context.span);
    let strip_usage = chat.stream && openai_stream::request_usage(&mut chat);
    let forwarded = Bytes::from(serde_json::to_vec(&chat.body).map_err(|e| {
        ProxyError::InvalidRequest(crate::dialect::InvalidRequest {
            param: None,
            message: format!("cannot encode the guarded request: {e}"),
        })
    })?);
    if chat.stream {
        return openai_stream::stream_chat(
            state,
            forwarded,
            query.as_deref(),
            &headers,
            strip_usage,
            compaction,
            context,
        )
        .await;
    }
    let call_started = Instant::now();
    let model = context.model.as_str();
    let mut sent = send_chat(state, model, &forwarded, query.as_deref(), &headers)
        .instrument(context.span.clone())
        .await;
    if let Ok(upstream) = &sent
        && let Some(retry) =
            conversation::overflow_retry::<OpenAi>(state, upstream, compaction.as_ref(), &forwarded)
    {
        sent = send_chat(state, model, &retry, query.as_deref(), &headers)
            .instrument(context.span.clone())
            .await;
    }
    record_call(state, &context, call_started, sent.as_ref());
    pipeline::finish_whole::<OpenAi>(state, sent?, &context).await
}

/// Operation name of chat completions in the GenAI conventions (`gen_ai.operation.name`).
pub(super) const GEN_AI_OPERATION_CHAT: &str = "chat";

/// Records the duration of a model call read whole in metrics and on its span, with the
/// HTTP status or the sidecar's error code as its error type.
pub(super) fn record_call(
    state: &ProxyState,
    context: &StreamContext,
    started: Instant,
    result: Result<&UpstreamResponse, &ProxyError>,
) {
    let status;
    let error_type = match result {
        Ok(upstream) if upstream.status.is_success() => None,
        Ok(upstream) => {
            status = upstream.status.as_u16().to_string();
            Some(status.as_str())
        }
        Err(error) => Some(error.classify().2),
    };
    if let Some(error_type) = error_type {
        traces::record_error(&context.span, error_type);
    }
    traces::record_upstream_time(&Span::current(), started.elapsed());
    state
        .metrics
        .record_gen_ai_call(&context.call, started.elapsed(), error_type);
}

/// Sends a non-streamed chat completion through the model's route.
async fn send_chat(
    state: &ProxyState,
    model: &str,
    body: &Bytes,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<UpstreamResponse, ProxyError> {
    let call = Call {
        method: &Method::POST,
        path: "chat/completions",
        query,
        headers,
        body,
        stream: false,
    };
    let routed = state
        .routes
        .dispatch(&state.metrics, Dialect::OpenAi, model, call)
        .await?;
    traces::record_server(&Span::current(), routed.target.upstream.base_url());
    match routed.response {
        Opened::Whole(whole) => Ok(whole),
        Opened::Headers(response) => routed.target.upstream.read_whole(response).await,
    }
}

/// The OpenAI Chat Completions dialect of the shared request steps.
pub(super) struct OpenAi;

impl ProviderDialect for OpenAi {
    fn upstream(state: &ProxyState) -> &Upstream {
        &state.openai
    }

    fn guard_response(guard: &Guard, response: &mut Value) -> Evaluation {
        dialect::guard_response(guard, response)
    }

    fn restore_response(guard: &Guard, response: &mut Value) {
        dialect::restore_response(guard, response);
    }

    fn response_message(response: &Value) -> Option<Message> {
        dialect::response_message(response)
    }

    fn reported_usage(response: &Value) -> Option<(u64, u64)> {
        response.get("usage").and_then(dialect::read_usage)
    }

    fn refusal(model: &str, refusal: &str, blocked: Option<Value>) -> Value {
        match blocked {
            Some(mut completion) => {
                dialect::replace_with_refusal(&mut completion, refusal);
                completion
            }
            None => dialect::refusal_completion(model, refusal),
        }
    }

    fn assemble_stream(body: &str) -> Result<(Value, Option<Value>), String> {
        let mut assembly = dialect::StreamAssembly::default();
        let events = crate::sse::parse(body, crate::sse::DEFAULT_MAX_EVENT_BYTES)
            .map_err(|e| e.to_string())?;
        for event in events {
            if event.data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(&event.data)
                .map_err(|e| format!("stream event is not JSON: {e}"))?;
            assembly.push(&chunk);
        }
        let error = assembly.error.take();
        Ok((assembly.to_completion(), error))
    }

    /// Encodes the completion as chunks ending with `[DONE]`, or with the upstream's
    /// error event in its place.
    fn encode_stream(completion: &Value, error: Option<Value>) -> String {
        let mut body = String::new();
        for chunk in dialect::completion_to_chunks(completion) {
            crate::sse::encode_data(&chunk.to_string(), &mut body);
        }
        match error {
            Some(error) => crate::sse::encode_data(&error.to_string(), &mut body),
            None => crate::sse::encode_data("[DONE]", &mut body),
        }
        body
    }

    fn context_messages(body: &Map<String, Value>) -> Vec<Message> {
        match body.get("messages") {
            Some(Value::Array(messages)) => messages.iter().map(dialect::to_common).collect(),
            _ => Vec::new(),
        }
    }

    fn extra_tokens(counter: &TokenCounter, body: &Map<String, Value>) -> u32 {
        match body.get("tools") {
            Some(Value::Array(tools)) => counter.openai_tools(tools),
            _ => 0,
        }
    }

    fn request_tokens(counter: &TokenCounter, body: &Map<String, Value>) -> u32 {
        counter.openai_request(body)
    }

    /// Keeps the planned entries of `messages` as sent, so fields outside the common
    /// model survive, and inserts the summary as a `system` message.
    fn apply_fit(body: &mut Map<String, Value>, plan: &FitPlan, summary: Option<&Summary>) {
        let Some(Value::Array(messages)) = body.get("messages") else {
            return;
        };
        let fitted = plan.apply(messages, || {
            let text = summary.map_or_else(String::new, |s| format!("{SUMMARY_INTRO}{}", s.text));
            json!({"role": "system", "content": text})
        });
        body.insert("messages".to_owned(), Value::Array(fitted));
    }
}

/// `GET /v1/models` and `GET /v1/models/{model}`: listings carry no conversation
/// content, so they pass through.
pub async fn models(State(state): State<ProxyState>, uri: Uri, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let path = uri.path().trim_start_matches("/v1/");
    let response = match state
        .openai
        .send(
            Method::GET,
            path,
            uri.query(),
            &headers,
            None,
            &state.metrics,
        )
        .await
    {
        Ok(upstream) => passthrough(upstream),
        Err(error) => error.into_response(),
    };
    state
        .metrics
        .record_request("models", response.status().as_u16(), started.elapsed());
    response
}

/// Any other `/v1/` path: rejected unless the configuration passes such paths through
/// unchecked.
pub async fn other_v1_path(State(state): State<ProxyState>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let response = if state.passthrough_unknown_paths {
        forward_unchecked(&state, request)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    } else {
        ProxyError::UnknownPath {
            path: request.uri().path().to_owned(),
        }
        .into_response()
    };
    state
        .metrics
        .record_request("other", response.status().as_u16(), started.elapsed());
    response
}

async fn forward_unchecked(
    state: &ProxyState,
    request: Request<Body>,
) -> Result<Response, ProxyError> {
    let method = request.method().clone();
    let path = request.uri().path().trim_start_matches("/v1/").to_owned();
    let query = request.uri().query().map(str::to_owned);
    let headers = request.headers().clone();
    let body = read_body(request, state.max_request_body_bytes).await?;
    tracing::debug!(path = %path, "forwarding unguarded path");
    let upstream = state
        .openai
        .send(
            method,
            &path,
            query.as_deref(),
            &headers,
            Some(body),
            &state.metrics,
        )
        .await?;
    Ok(passthrough(upstream))
}

/// Paths outside `/v1/`.
pub async fn unknown_path(State(state): State<ProxyState>, uri: Uri) -> Response {
    let response = ProxyError::UnknownPath {
        path: uri.path().to_owned(),
    }
    .into_response();
    state.metrics.record_request(
        "other",
        response.status().as_u16(),
        std::time::Duration::ZERO,
    );
    response
}

pub async fn method_not_allowed(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
) -> Response {
    let response = ProxyError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
    .into_response();
    state.metrics.record_request(
        "other",
        response.status().as_u16(),
        std::time::Duration::ZERO,
    );
    response
}
