//! The steps of a guarded request that both dialects share: recording a guardrail pass,
//! replying to a block, and guarding a response read whole. A [`ProviderDialect`] supplies the
//! provider-specific pieces (wire format, refusal shape, stream encoding, and where a
//! request's messages and summary go when it is fitted into its context budget).

use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use super::conversation;
use super::error::ProxyError;
use super::reply::{
    copy_provider_headers, event_stream_headers, json_response, passthrough, set_header,
};
use super::stream::{self, StreamContext};
use super::upstream::{Upstream, UpstreamResponse};
use super::{BLOCKED_RULE_HEADER, ESCALATION_HEADER, ProxyState, VERDICT_HEADER};
use crate::context::{FitPlan, TokenCounter};
use crate::dialect::guarding::Evaluation;
use crate::dialect::{Message, Role};
use crate::guard::{BlockingRule, Guard};
use crate::policy::Policy;
use crate::policy::spec::{BlockResponse, Direction};
use crate::state::Summary;
use crate::telemetry::traces;

/// The provider-specific pieces of the shared request steps.
pub(super) trait ProviderDialect {
    /// Returns the upstream this dialect's requests go to.
    fn upstream(state: &ProxyState) -> &Upstream;

    /// Runs the output guardrails over a whole response and rewrites it in place.
    fn guard_response(guard: &Guard, response: &mut Value) -> Evaluation;

    /// Replaces pseudonym placeholders in a guarded response.
    fn restore_response(guard: &Guard, response: &mut Value);

    /// Converts a response to the common model, for the stored turn.
    fn response_message(response: &Value) -> Option<Message>;

    /// Input and output tokens that a response reports.
    fn reported_usage(response: &Value) -> Option<(u64, u64)>;

    /// Builds the refusal reply: `blocked` (the upstream's response) with its content
    /// replaced, or a new response for a request blocked before it reached the model.
    fn refusal(model: &str, refusal: &str, blocked: Option<Value>) -> Value;

    /// Collects an event stream read whole into one response, plus the upstream's
    /// in-stream error when the stream carried one.
    fn assemble_stream(body: &str) -> Result<(Value, Option<Value>), String>;

    /// Encodes a whole response as an event stream, ending with the upstream's error
    /// event when there is one.
    fn encode_stream(response: &Value, error: Option<Value>) -> String;

    /// Role of the first message kept after the system messages when a request is
    /// fitted into its context budget, when the API requires one.
    const FIRST_KEPT_ROLE: Option<Role> = None;

    /// Converts a request body's system prompt and messages to the common model, with
    /// the system prompt first as `system` messages, in the order a [`FitPlan`] indexes.
    fn context_messages(body: &Map<String, Value>) -> Vec<Message>;

    /// Estimated tokens of what a request sends besides its messages, such as tool
    /// definitions.
    fn extra_tokens(counter: &TokenCounter, body: &Map<String, Value>) -> u32;

    /// Estimated input tokens of a whole request body.
    fn request_tokens(counter: &TokenCounter, body: &Map<String, Value>) -> u32 {
        counter
            .messages(&Self::context_messages(body))
            .saturating_add(Self::extra_tokens(counter, body))
    }

    /// Rewrites the request's messages to the ones `plan` keeps, with the summary where
    /// the plan places it.
    fn apply_fit(body: &mut Map<String, Value>, plan: &FitPlan, summary: Option<&Summary>);
}

/// Records one guardrail pass over a request or response: its duration since
/// `started`, its findings and a debug line.
pub(super) fn record_evaluation(
    state: &ProxyState,
    policy: &Policy,
    direction: Direction,
    model: &str,
    started: Instant,
    evaluation: &Evaluation,
) {
    state
        .metrics
        .record_guard_evaluation(&policy.identity, direction, started.elapsed());
    state
        .metrics
        .record_findings(&policy.identity, &evaluation.findings);
    if let crate::guard::Verdict::Block { rule, kind } = &evaluation.verdict {
        // NOTE: proxy rule blocks carry no conversation id, so a watcher that filters by
        // conversation does not see them.
        state.escalations.events.publish(
            None,
            crate::events::EventPayload::RuleBlocked {
                rule: rule.to_string(),
                kind: kind.as_str(),
                source: "proxy",
                tool: None,
            },
        );
    }
    tracing::debug!(
        model,
        direction = direction.as_str(),
        verdict = evaluation.verdict.as_str(),
        findings = evaluation.findings.len(),
        policy = %policy.identity.name,
        "guardrails evaluated"
    );
}

/// Builds the reply to a blocked request or response. The policy chooses a refusal, in
/// the shape the client requested (JSON or an event stream), or an error.
pub(super) fn blocked<D: ProviderDialect>(
    policy: &Policy,
    model: &str,
    streamed: bool,
    block: BlockingRule,
    upstream_response: Option<Value>,
    escalation: Option<&str>,
) -> Result<Response, ProxyError> {
    let BlockingRule {
        rule,
        kind,
        escalate,
    } = block;
    tracing::info!(rule.id = %rule, kind, model, "guardrail blocked traffic");
    if policy.on_block == BlockResponse::Error {
        return Err(if escalate {
            ProxyError::ApprovalRequired {
                rule,
                kind,
                escalation: escalation.map(str::to_owned),
            }
        } else {
            ProxyError::Blocked { rule, kind }
        });
    }
    let refusal = D::refusal(model, &policy.refusal, upstream_response);
    let mut response = if streamed {
        event_stream::<D>(&refusal, None, "block", Some(&rule))
    } else {
        json_response(StatusCode::OK, &refusal)
    };
    set_header(response.headers_mut(), VERDICT_HEADER, "block");
    set_header(response.headers_mut(), BLOCKED_RULE_HEADER, &rule);
    if let Some(escalation) = escalation {
        set_header(response.headers_mut(), ESCALATION_HEADER, escalation);
    }
    Ok(response)
}

/// Re-emits a whole response as an event stream.
fn event_stream<D: ProviderDialect>(
    response: &Value,
    error: Option<Value>,
    verdict: &str,
    rule: Option<&str>,
) -> Response {
    let mut reply = Response::new(Body::from(D::encode_stream(response, error)));
    event_stream_headers(reply.headers_mut(), verdict, rule);
    reply
}

/// Guards a response read whole (JSON, or an event stream from a server that ignored the
/// client's stream setting or that the sidecar read to its end) and responds to the
/// client in the same form. A stream that ended with an error event is not stored as a
/// complete turn.
pub(super) async fn finish_whole<D: ProviderDialect>(
    state: &ProxyState,
    upstream: UpstreamResponse,
    context: &StreamContext,
) -> Result<Response, ProxyError> {
    if !upstream.status.is_success() {
        // Provider errors already have the provider's shape; pass them on unchanged.
        return Ok(passthrough(upstream));
    }
    let invalid = |reason: String| ProxyError::UpstreamInvalid {
        provider: D::upstream(state).name,
        reason,
    };
    let guard = &context.guard;
    let policy = guard.policy().clone();
    let streamed = upstream.is_event_stream();
    let (mut message, stream_error) = if streamed {
        let text = std::str::from_utf8(&upstream.body)
            .map_err(|_| invalid("event stream is not UTF-8".to_owned()))?;
        D::assemble_stream(text).map_err(invalid)?
    } else {
        let value = serde_json::from_slice::<Value>(&upstream.body)
            .map_err(|e| invalid(format!("response is not JSON: {e}")))?;
        (value, None)
    };
    traces::record_response(&context.span, &message);
    let started = Instant::now();
    let guard_span = traces::guardrail_span(Direction::Output);
    let output = guard_span.in_scope(|| D::guard_response(guard, &mut message));
    traces::record_guardrail(&guard_span, &output.verdict, &output.findings);
    drop(guard_span);
    record_evaluation(
        state,
        &policy,
        Direction::Output,
        &context.model,
        started,
        &output,
    );
    if let Some(block) = output.verdict.blocking_rule() {
        let escalation = match (block.escalate, guard.escalations()) {
            (true, Some(escalations)) => state.escalations.store_raised(escalations).await,
            _ => None,
        };
        return blocked::<D>(
            &policy,
            &context.model,
            streamed,
            block,
            Some(message),
            escalation.as_deref(),
        );
    }
    let stored_response = D::response_message(&message);
    let reported = D::reported_usage(&message);
    stream::record_usage(state, context, reported, stored_response.as_ref());
    D::restore_response(guard, &mut message);
    if let (Some(turn), None) = (&context.turn, &stream_error) {
        conversation::record_turn(
            state,
            guard,
            turn,
            &context.model,
            &context.request_messages,
            stored_response,
        )
        .await;
    }

    let mut verdict = context.input_verdict.clone();
    verdict.merge(output.verdict.clone());
    let verdict = verdict.as_str();
    if streamed {
        return Ok(event_stream::<D>(&message, stream_error, verdict, None));
    }
    let mut response = json_response(upstream.status, &message);
    copy_provider_headers(&upstream.headers, response.headers_mut());
    set_header(response.headers_mut(), VERDICT_HEADER, verdict);
    Ok(response)
}
