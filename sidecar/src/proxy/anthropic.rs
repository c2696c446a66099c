//! Handlers for the Anthropic Messages API (`ANTHROPIC_BASE_URL=http://127.0.0.1:14100`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::conversation::{self, TurnContext};
use super::error::ProxyError;
use super::openai::{GEN_AI_OPERATION_CHAT, record_call};
use super::pipeline::{self, ProviderDialect, record_evaluation};
use super::reply::{json_response, set_header};
use super::routing::{Call, Opened};
use super::stream::{self, StreamContext};
use super::upstream::Upstream;
use super::{ProxyState, VERDICT_HEADER, read_body};
use crate::config::routing::Dialect;
use crate::context::window::SUMMARY_INTRO;
use crate::context::{FitPlan, TokenCounter};
use crate::dialect::anthropic::{self as dialect, Endpoint, MessagesRequest, ParseError};
use crate::dialect::guarding::Evaluation;
use crate::dialect::{Message, Role};
use crate::guard::Guard;
use crate::policy::spec::Direction;
use crate::state::Summary;
use crate::stream::anthropic::AnthropicStream;
use crate::telemetry::metrics::GenAiCall;
use crate::telemetry::traces;
use tracing::{Instrument, Span};

const ROUTE_MESSAGES: &str = "messages";
const ROUTE_COUNT_TOKENS: &str = "count_tokens";
/// Path of the Messages API below the upstream's base URL.
const MESSAGES_PATH: &str = "v1/messages";

/// `POST /v1/messages`.
pub async fn messages(State(state): State<ProxyState>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let span = traces::server_span("POST /v1/messages", "/v1/messages", request.headers());
    let response = match handle_messages(&state, request)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(error) => {
            let _entered = span.enter();
            tracing::debug!(code = error.classify().2, "messages request failed");
            error.into_anthropic_response()
        }
    };
    span.record("http.response.status_code", response.status().as_u16());
    traces::log_request_finished(&span, &response, started.elapsed());
    state.metrics.record_request(
        ROUTE_MESSAGES,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn parse(body: &[u8], endpoint: Endpoint) -> Result<MessagesRequest, ProxyError> {
    dialect::parse_request(body, endpoint).map_err(|e| match e {
        ParseError::Json(message) => ProxyError::InvalidJson(message),
        ParseError::Schema(invalid) => ProxyError::InvalidRequest(invalid),
    })
}

async fn handle_messages(
    state: &ProxyState,
    request: Request<Body>,
) -> Result<Response, ProxyError> {
    let query = request.uri().query().map(str::to_owned);
    let headers = request.headers().clone();
    let body = read_body(request, state.max_request_body_bytes).await?;
    let mut messages = parse(&body, Endpoint::Messages)?;

    // One snapshot for the whole request: a policy reload while it runs does not change
    // the rules it is checked against.
    let enforced = state.guard.current();
    let policy = enforced.policy().clone();
    let conversation = conversation::open(state, &policy, &headers, &messages.body).await?;
    let guard = Arc::new(conversation::request_guard(state, &enforced, &conversation));
    traces::record_request(
        &Span::current(),
        &policy.identity,
        &messages.model,
        conversation.id.as_deref(),
    );
    let started = Instant::now();
    let guard_span = traces::guardrail_span(Direction::Input);
    let input = guard_span.in_scope(|| dialect::guard_request(&guard, &mut messages));
    traces::record_guardrail(&guard_span, &input.verdict, &input.findings);
    drop(guard_span);
    record_evaluation(
        state,
        &policy,
        Direction::Input,
        &messages.model,
        started,
        &input,
    );
    if let Some(block) = input.verdict.blocking_rule() {
        return pipeline::blocked::<Anthropic>(
            &policy,
            &messages.model,
            messages.stream,
            block,
            None,
            None,
        );
    }

    // The turn records the whole guarded history. The window below may send less.
    let request_messages = dialect::request_messages(&messages);
    let summary = conversation
        .stored
        .as_ref()
        .and_then(|c| c.summary.as_ref());
    let budget =
        conversation::fit_request::<Anthropic>(state, &policy, &mut messages.body, summary)?;
    let compaction = conversation::Compaction::for_policy(&policy, summary);
    let turn = conversation.id.clone().map(|id| TurnContext {
        id,
        stored: conversation.stored,
        budget,
    });
    let call = GenAiCall {
        operation: GEN_AI_OPERATION_CHAT,
        provider: state.anthropic.name,
        model: messages.model.clone(),
    };
    let context = StreamContext {
        guard,
        model: messages.model.clone(),
        turn,
        request_messages,
        input_verdict: input.verdict.clone(),
        input_estimate: Some(estimate_input_tokens(&messages)),
        span: traces::model_call_span(&call),
        call,
    };
    // The provider's spans join the agent's trace as children of the model call span.
    let headers = traces::propagate(&headers, &context.span);
    let forwarded = Bytes::from(serde_json::to_vec(&messages.body).map_err(|e| {
        ProxyError::InvalidRequest(crate::dialect::InvalidRequest {
            param: None,
            message: format!("cannot encode the guarded request: {e}"),
        })
    })?);
    let call_started = Instant::now();
    let open = |body: Bytes| {
        let model = context.model.clone();
        let span = context.span.clone();
        let (query, headers) = (query.as_deref(), &headers);
        async move {
            let call = Call {
                method: &Method::POST,
                path: MESSAGES_PATH,
                query,
                headers,
                body: &body,
                stream: messages.stream,
            };
            state
                .routes
                .dispatch(&state.metrics, Dialect::Anthropic, &model, call)
                .instrument(span)
                .await
        }
    };
    let mut routed = match open(forwarded.clone()).await {
        Ok(routed) => routed,
        Err(error) => {
            record_call(state, &context, call_started, Err(&error));
            return Err(error);
        }
    };
    // A response read whole may be a context overflow error, which is retried once with
    // a compacted request.
    let mut retried = false;
    let (target, response) = loop {
        traces::record_server(&context.span, routed.target.upstream.base_url());
        let whole = match routed.response {
            Opened::Headers(response) if messages.stream && stream::is_event_stream(&response) => {
                break (routed.target, response);
            }
            Opened::Headers(response) => routed.target.upstream.read_whole(response).await,
            Opened::Whole(whole) => Ok(whole),
        };
        let retry = match (&whole, retried) {
            (Ok(whole), false) => conversation::overflow_retry::<Anthropic>(
                state,
                whole,
                compaction.as_ref(),
                &forwarded,
            ),
            _ => None,
        };
        let Some(retry) = retry else {
            record_call(state, &context, call_started, whole.as_ref());
            return pipeline::finish_whole::<Anthropic>(state, whole?, &context).await;
        };
        retried = true;
        routed = match open(retry).await {
            Ok(routed) => routed,
            Err(error) => {
                record_call(state, &context, call_started, Err(&error));
                return Err(error);
            }
        };
    };
    {
        let guarded = AnthropicStream::new(
            context.guard.clone(),
            stream::mode(&policy),
            policy.stream.max_hold_back_bytes,
        );
        Ok(stream::serve(
            state,
            &target,
            response,
            guarded,
            context,
            call_started,
        ))
    }
}

/// The Anthropic Messages dialect of the shared request steps.
pub(super) struct Anthropic;

impl ProviderDialect for Anthropic {
    fn upstream(state: &ProxyState) -> &Upstream {
        &state.anthropic
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
        let usage = dialect::read_usage(response.get("usage")?)?;
        Some((usage.input, usage.output))
    }

    fn refusal(model: &str, refusal: &str, blocked: Option<Value>) -> Value {
        match blocked {
            Some(mut message) => {
                dialect::replace_with_refusal(&mut message, refusal);
                message
            }
            None => dialect::refusal_message(model, refusal),
        }
    }

    fn assemble_stream(body: &str) -> Result<(Value, Option<Value>), String> {
        let events = crate::sse::parse(body, crate::sse::DEFAULT_MAX_EVENT_BYTES)
            .map_err(|e| e.to_string())?;
        let mut assembly = dialect::MessageAssembly::default();
        for event in events {
            let payload: Value = serde_json::from_str(&event.data)
                .map_err(|e| format!("stream event is not JSON: {e}"))?;
            assembly.push(&payload);
        }
        let error = assembly.error.take();
        Ok((assembly.to_message(), error))
    }

    /// Encodes the message as events ending with `message_stop`, or with the upstream's
    /// error event in place of `message_delta` and `message_stop`.
    fn encode_stream(message: &Value, error: Option<Value>) -> String {
        let mut events = dialect::message_to_events(message);
        if error.is_some() {
            events.truncate(events.len().saturating_sub(2));
        }
        let mut body = String::new();
        for (name, payload) in events {
            crate::sse::encode_named(name, &payload.to_string(), &mut body);
        }
        if let Some(error) = error {
            crate::sse::encode_named("error", &error.to_string(), &mut body);
        }
        body
    }

    const FIRST_KEPT_ROLE: Option<Role> = Some(Role::User);

    fn context_messages(body: &Map<String, Value>) -> Vec<Message> {
        dialect::body_messages(body)
    }

    fn extra_tokens(counter: &TokenCounter, body: &Map<String, Value>) -> u32 {
        tool_tokens(counter, body)
    }

    /// Keeps the planned entries of `messages` as sent and appends the summary to the
    /// top-level `system`, because the Messages API takes no `system` role in `messages`.
    fn apply_fit(body: &mut Map<String, Value>, plan: &FitPlan, summary: Option<&Summary>) {
        // `context_messages` puts the system prompt first, as one message when present.
        let system_messages = usize::from(has_system_prompt(body));
        if let Some(Value::Array(messages)) = body.get("messages") {
            let kept: Vec<Value> = plan
                .kept
                .iter()
                .filter_map(|&index| index.checked_sub(system_messages))
                .filter_map(|index| messages.get(index).cloned())
                .collect();
            body.insert("messages".to_owned(), Value::Array(kept));
        }
        if let (Some(_), Some(summary)) = (plan.summary_at, summary) {
            append_to_system(body, &format!("{SUMMARY_INTRO}{}", summary.text));
        }
    }
}

/// Returns whether [`dialect::body_messages`] starts with a `system` message.
fn has_system_prompt(body: &Map<String, Value>) -> bool {
    match body.get("system") {
        Some(Value::String(_)) => true,
        Some(Value::Array(blocks)) => !blocks.is_empty(),
        _ => false,
    }
}

/// Appends `text` to the top-level `system`: as a text block when it is a list of
/// blocks, after a blank line when it is a string, or as the whole prompt when absent.
fn append_to_system(body: &mut Map<String, Value>, text: &str) {
    match body.get_mut("system") {
        Some(Value::Array(blocks)) => blocks.push(json!({"type": "text", "text": text})),
        Some(Value::String(system)) if !system.is_empty() => {
            system.push_str("\n\n");
            system.push_str(text);
        }
        _ => {
            body.insert("system".to_owned(), Value::String(text.to_owned()));
        }
    }
}

/// Estimates the tokens of a request's tool definitions, counted as Chat Completions
/// functions.
fn tool_tokens(counter: &TokenCounter, body: &Map<String, Value>) -> u32 {
    let tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .map(|tool| {
                    json!({"function": {
                        "name": tool.get("name"),
                        "description": tool.get("description"),
                        "parameters": tool.get("input_schema"),
                    }})
                })
                .collect()
        })
        .unwrap_or_default();
    counter.openai_tools(&tools)
}

/// Estimates a request's input tokens: its system prompt and messages in the common
/// model, plus its tool definitions counted as Chat Completions functions. Anthropic's
/// tokenizer is not public, so this is an estimate with cl100k_base.
pub(super) fn estimate_input_tokens(request: &MessagesRequest) -> u32 {
    let counter = TokenCounter::for_model(&request.model);
    let messages = counter.messages(&dialect::request_messages(request));
    messages.saturating_add(tool_tokens(&counter, &request.body))
}

/// `POST /v1/messages/count_tokens`, counted by the sidecar itself without calling the
/// upstream, so the request's content never leaves the pod. The count is an estimate.
pub async fn count_tokens(State(state): State<ProxyState>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let response = match handle_count_tokens(&state, request).await {
        Ok(response) => response,
        Err(error) => error.into_anthropic_response(),
    };
    state.metrics.record_request(
        ROUTE_COUNT_TOKENS,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn handle_count_tokens(
    state: &ProxyState,
    request: Request<Body>,
) -> Result<Response, ProxyError> {
    let body = read_body(request, state.max_request_body_bytes).await?;
    let request = parse(&body, Endpoint::CountTokens)?;
    let tokens = estimate_input_tokens(&request);
    let mut response = json_response(StatusCode::OK, &json!({"input_tokens": tokens}));
    set_header(response.headers_mut(), VERDICT_HEADER, "allow");
    Ok(response)
}

/// A method other than POST on an Anthropic path.
pub async fn method_not_allowed(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
) -> Response {
    let response = ProxyError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
    .into_anthropic_response();
    state.metrics.record_request(
        "other",
        response.status().as_u16(),
        std::time::Duration::ZERO,
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Strategy;
    use crate::proxy::conversation::fit_body;

    const MODEL: &str = "claude-sonnet-4-5";
    const LAST: &str = "And the last one?";

    fn request(system: Value, messages: Vec<Value>) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("model".to_owned(), json!(MODEL));
        body.insert("max_tokens".to_owned(), json!(256));
        if !system.is_null() {
            body.insert("system".to_owned(), system);
        }
        body.insert("messages".to_owned(), Value::Array(messages));
        body
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    fn assistant(text: &str) -> Value {
        json!({"role": "assistant", "content": text})
    }

    fn tool_use(id: &str) -> Value {
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Looking it up."},
            {"type": "tool_use", "id": id, "name": "track_parcel", "input": {"parcel": 7}},
        ]})
    }

    fn tool_result(id: &str, text: &str) -> Value {
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": id, "content": text},
        ]})
    }

    /// Builds a history whose oldest message alone is over any budget the tests use, with a
    /// tool round trip in the middle.
    fn history(result_text: &str) -> Vec<Value> {
        vec![
            user(&"Where is parcel 1? ".repeat(300)),
            assistant("Parcel 1 left."),
            user("Look up parcel 7."),
            tool_use("toolu_7"),
            tool_result("toolu_7", result_text),
            assistant("Parcel 7 is in Lyon."),
            user(LAST),
        ]
    }

    fn messages(body: &Map<String, Value>) -> &Vec<Value> {
        body["messages"].as_array().expect("messages array")
    }

    /// Returns the ids of `tool_use` or `tool_result` blocks (by `field`) in a message.
    fn block_ids<'a>(message: &'a Value, kind: &str, field: &str) -> Vec<&'a str> {
        message["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|block| block["type"] == kind)
                    .filter_map(|block| block[field].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn summary() -> Summary {
        Summary {
            text: "Parcel 1 left.".to_owned(),
            first_turn: 0,
            end_turn: 1,
            covered_messages: 2,
            tokens: 8,
            model: MODEL.to_owned(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn fit_keeps_tool_use_with_result() {
        let mut body = request(json!("You track parcels."), history("In Lyon."));
        let fitted = fit_body::<Anthropic>(&mut body, 400, Strategy::Truncate, None).expect("fits");

        assert_eq!(fitted.action, Some("truncated"));
        assert!(fitted.tokens <= 400, "{fitted:?}");
        let kept = messages(&body);
        assert_eq!(kept.len(), 5, "{kept:?}");
        assert_eq!(kept[0], user("Look up parcel 7."));
        assert_eq!(block_ids(&kept[1], "tool_use", "id"), ["toolu_7"]);
        assert_eq!(
            block_ids(&kept[2], "tool_result", "tool_use_id"),
            ["toolu_7"]
        );
        assert_eq!(kept[4], user(LAST));
        assert_eq!(
            body["system"], "You track parcels.",
            "system is kept unchanged"
        );
    }

    #[test]
    fn fit_drops_tool_pair_together() {
        // The tool result alone is over the budget, so its tool_use goes with it.
        let result = "Scan event at the Lyon depot. ".repeat(100);
        let mut body = request(json!("You track parcels."), history(&result));
        fit_body::<Anthropic>(&mut body, 300, Strategy::Truncate, None).expect("fits");

        let kept = messages(&body);
        for message in kept {
            assert!(block_ids(message, "tool_use", "id").is_empty(), "{kept:?}");
            assert!(
                block_ids(message, "tool_result", "tool_use_id").is_empty(),
                "{kept:?}"
            );
        }
        assert_eq!(kept.last(), Some(&user(LAST)));
    }

    #[test]
    fn fit_starts_kept_messages_with_user() {
        // The assistant reply before the newest input fits, but the user message before
        // it does not, so the reply is dropped as well.
        let mut body = request(
            json!("You track parcels."),
            vec![
                user(&"Where is parcel 1? ".repeat(300)),
                assistant("Parcel 1 left."),
                user(LAST),
            ],
        );
        fit_body::<Anthropic>(&mut body, 200, Strategy::Truncate, None).expect("fits");

        assert_eq!(messages(&body), &vec![user(LAST)]);
    }

    #[test]
    fn fit_without_user_start_is_over_budget() {
        // An assistant prefill is the newest message, and its user message is too long.
        let mut body = request(
            Value::Null,
            vec![
                user(&"Where is parcel 1? ".repeat(300)),
                assistant("Parcel 1"),
            ],
        );
        let error = fit_body::<Anthropic>(&mut body, 200, Strategy::Truncate, None)
            .expect_err("no user message fits");

        let ProxyError::ContextOverBudget { tokens, budget, .. } = error else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(budget, 200);
        assert!(tokens > 200, "{tokens}");
    }

    #[test]
    fn summary_joins_system_string() {
        let mut body = request(json!("You track parcels."), history("In Lyon."));
        let fitted = fit_body::<Anthropic>(&mut body, 400, Strategy::Summarize, Some(&summary()))
            .expect("fits");

        assert_eq!(fitted.action, Some("summarized"));
        assert_eq!(
            body["system"],
            format!("You track parcels.\n\n{SUMMARY_INTRO}Parcel 1 left.")
        );
        let kept = messages(&body);
        assert_eq!(kept[0], user("Look up parcel 7."));
        assert!(
            kept.iter().all(|message| message["role"] != "system"),
            "{kept:?}"
        );
    }

    #[test]
    fn summary_appended_as_system_block() {
        let blocks = json!([{"type": "text", "text": "You track parcels.", "cache_control": {"type": "ephemeral"}}]);
        let mut body = request(blocks, history("In Lyon."));
        fit_body::<Anthropic>(&mut body, 400, Strategy::Summarize, Some(&summary())).expect("fits");

        let system = body["system"].as_array().expect("system blocks");
        assert_eq!(system.len(), 2);
        assert_eq!(system[0]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            system[1],
            json!({"type": "text", "text": format!("{SUMMARY_INTRO}Parcel 1 left.")})
        );
    }

    #[test]
    fn summary_becomes_missing_system() {
        let mut body = request(Value::Null, history("In Lyon."));
        fit_body::<Anthropic>(&mut body, 400, Strategy::Summarize, Some(&summary())).expect("fits");

        assert_eq!(body["system"], format!("{SUMMARY_INTRO}Parcel 1 left."));
        assert_eq!(messages(&body)[0], user("Look up parcel 7."));
    }

    #[test]
    fn compaction_keeps_newest_user_input() {
        let compaction = conversation::Compaction {
            strategy: Strategy::Truncate,
            summary: None,
        };
        let sent = request(json!("You track parcels."), history("In Lyon."));
        let sent = Bytes::from(serde_json::to_vec(&sent).expect("encode"));
        let retry = compaction
            .compact::<Anthropic>(&sent)
            .expect("a smaller request");

        let Ok(Value::Object(retry)) = serde_json::from_slice::<Value>(&retry) else {
            panic!("retry body is not a JSON object");
        };
        let kept = messages(&retry);
        assert!(kept.len() < 7, "{kept:?}");
        assert_eq!(kept[0]["role"], "user");
        assert_eq!(kept.last(), Some(&user(LAST)));
        assert_eq!(retry["system"], "You track parcels.");
    }
}
