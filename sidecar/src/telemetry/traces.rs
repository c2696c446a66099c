//! OpenTelemetry traces: the OTLP/HTTP exporter, W3C trace context from the agent's
//! request to the upstream, and the spans of one proxied request.
//!
//! Span and attribute names follow the OpenTelemetry GenAI semantic conventions
//! (`gen-ai-spans.md` of open-telemetry/semantic-conventions): a client span named
//! `{gen_ai.operation.name} {gen_ai.request.model}` per model call. Attributes carry
//! ids, model names, token counts and rule ids, never message content.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::GenAiCall;
use crate::guard::{Finding, Verdict};
use crate::policy::PolicyIdentity;
use crate::policy::spec::{Direction, Mode};

/// Set when the OTLP exporter is installed; span context is read and written only then.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub(super) fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Release);
}

/// Returns whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Returns whether the environment names an OTLP endpoint and does not turn traces off
/// (`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`), per the OpenTelemetry
/// environment variable specification.
pub fn exporter_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Builds the tracer provider with the OTLP/HTTP protobuf exporter. The exporter reads
/// the endpoint, headers and timeout from the standard `OTEL_EXPORTER_OTLP_*` variables,
/// and the resource reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`. The
/// service name is `agent-sidecar` when neither sets one.
pub fn build_provider() -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("cannot build the OTLP span exporter: {e}"))?;
    let service_named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !service_named {
        resource = resource.with_service_name("agent-sidecar");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Returns the span of one proxied `POST` request to `route`, whose parent is the trace
/// context in the agent's `traceparent` header when it sent one. `name` is the span
/// name, `POST {route}`, passed whole so that no request formats it.
pub fn server_span(name: &'static str, route: &'static str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = Empty,
        request.id = request_id(headers),
        model = Empty,
        policy = Empty,
        policy.hash = Empty,
        conversation.id = Empty,
        upstream_ms = Empty,
    );
    if enabled() {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        // A request without trace context starts a new trace.
        let _ = span.set_parent(parent);
    }
    span
}

/// Longest `x-request-id` value kept on the request span, in bytes.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Returns the agent's `x-request-id` when it is printable ASCII of a bounded length.
fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.len() <= MAX_REQUEST_ID_BYTES)
}

/// Records what a request runs on: its model, its conversation and the policy snapshot,
/// so every log line and span of the request names the policy version.
pub fn record_request(
    span: &Span,
    policy: &PolicyIdentity,
    model: &str,
    conversation_id: Option<&str>,
) {
    span.record("model", model);
    span.record("policy", policy.name.as_str());
    span.record("policy.hash", policy.hash.as_str());
    if let Some(id) = conversation_id {
        span.record("conversation.id", id);
    }
}

/// Records on the request span the time a model call took until its response headers
/// (or its whole body, when read whole), in milliseconds.
pub fn record_upstream_time(span: &Span, elapsed: std::time::Duration) {
    span.record("upstream_ms", elapsed.as_secs_f64() * 1000.0);
}

/// Logs the one info line of a finished request, inside its span so the line carries the
/// request's ids, model and policy: status, outcome (the verdict header, or `error`),
/// the blocking rule and the time to the response headers.
pub fn log_request_finished(
    span: &Span,
    response: &axum::response::Response,
    elapsed: std::time::Duration,
) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let outcome = header(crate::proxy::VERDICT_HEADER).unwrap_or("error");
    let blocked_rule = header(crate::proxy::BLOCKED_RULE_HEADER);
    let _entered = span.enter();
    tracing::info!(
        status = response.status().as_u16(),
        outcome,
        blocked_rule,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request finished"
    );
}

/// Returns the client span of one model call, named and attributed per the GenAI
/// conventions. Its parent is the current span.
pub fn model_call_span(call: &GenAiCall) -> Span {
    tracing::info_span!(
        "model_call",
        otel.name = format!("{} {}", call.operation, call.model),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = call.operation,
        gen_ai.provider.name = call.provider,
        gen_ai.request.model = call.model.as_str(),
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        server.address = Empty,
        server.port = Empty,
        error.type = Empty,
    )
}

/// Records the address of the upstream target that served a model call, which the
/// route chooses only after retries and fallback.
pub fn record_server(span: &Span, base_url: &reqwest::Url) {
    if let Some(host) = base_url.host_str() {
        span.record("server.address", host);
    }
    if let Some(port) = base_url.port_or_known_default() {
        span.record("server.port", i64::from(port));
    }
}

/// Records the response id and model a provider returned on a model call span.
pub fn record_response(span: &Span, response: &serde_json::Value) {
    if let Some(id) = response.get("id").and_then(serde_json::Value::as_str) {
        span.record("gen_ai.response.id", id);
    }
    if let Some(model) = response.get("model").and_then(serde_json::Value::as_str) {
        span.record("gen_ai.response.model", model);
    }
}

/// Records token usage on a model call span.
pub fn record_usage(span: &Span, input: u64, output: u64) {
    // Recorded as i64 because tracing-opentelemetry exports u64 fields as strings, and
    // the conventions define token counts as integers.
    span.record("gen_ai.usage.input_tokens", saturating_i64(input));
    span.record("gen_ai.usage.output_tokens", saturating_i64(output));
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Marks a model call span as failed with `error_type` (an HTTP status code or the
/// sidecar's error code).
pub fn record_error(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

/// Returns a copy of `headers` whose `traceparent` and `tracestate` name `span` as the
/// parent, so the provider's spans join the agent's trace. Without an exporter the
/// headers stay as the agent sent them.
pub fn propagate(headers: &HeaderMap, span: &Span) -> HeaderMap {
    let mut headers = headers.clone();
    if enabled() {
        TraceContextPropagator::new()
            .inject_context(&span.context(), &mut HeaderInjector(&mut headers));
    }
    headers
}

/// Returns the span of one guardrail evaluation, a child of the current span. It is at
/// debug level, so with the exporter off and logs at info it is disabled and records
/// nothing.
pub fn guardrail_span(direction: Direction) -> Span {
    tracing::debug_span!(
        "guardrail",
        otel.name = format!("guardrail {}", direction.as_str()),
        agent_sidecar.guardrail.direction = direction.as_str(),
        agent_sidecar.guardrail.verdict = Empty,
        agent_sidecar.guardrail.findings = Empty,
        agent_sidecar.guardrail.rules = Empty,
        agent_sidecar.guardrail.outcomes = Empty,
    )
}

/// Records a guardrail evaluation's verdict and, for its findings, the rule ids and each
/// rule's outcome as `rule=outcome` (`rule=outcome/monitor` for a rule in monitor mode).
pub fn record_guardrail(span: &Span, verdict: &Verdict, findings: &[Finding]) {
    if span.is_disabled() {
        return;
    }
    span.record("agent_sidecar.guardrail.verdict", verdict.as_str());
    span.record(
        "agent_sidecar.guardrail.findings",
        i64::try_from(findings.len()).unwrap_or(i64::MAX),
    );
    if findings.is_empty() {
        return;
    }
    let rules: BTreeSet<&str> = findings.iter().map(|f| &*f.rule).collect();
    let outcomes: BTreeSet<String> = findings
        .iter()
        .map(|f| {
            if f.mode == Mode::Monitor {
                format!("{}={}/monitor", f.rule, f.outcome.as_str())
            } else {
                format!("{}={}", f.rule, f.outcome.as_str())
            }
        })
        .collect();
    span.record(
        "agent_sidecar.guardrail.rules",
        rules.into_iter().collect::<Vec<_>>().join(","),
    );
    span.record(
        "agent_sidecar.guardrail.outcomes",
        outcomes.into_iter().collect::<Vec<_>>().join(","),
    );
}
