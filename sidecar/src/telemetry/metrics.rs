//! Prometheus metric families, all defined here so names, units and labels stay
//! consistent. Labels never carry conversation ids, user ids or message content.
//!
//! The sidecar's own families carry the `agent_sidecar_` prefix. The GenAI families use
//! the names of the OpenTelemetry GenAI semantic conventions (`gen-ai-metrics.md` of
//! open-telemetry/semantic-conventions) as the OpenTelemetry Prometheus exporter renders them:
//! dots become underscores and the unit becomes a suffix, so dashboards built for
//! other GenAI clients work unchanged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::guard::Finding;
use crate::policy::reload::ReloadOutcome;
use crate::policy::spec::Direction;
use crate::policy::{Policy, PolicyIdentity};
use crate::state::{StoreHealth, StoreStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub rule: String,
    pub kind: String,
    pub direction: String,
    pub outcome: String,
    pub mode: String,
    pub policy: String,
    /// Content hash of the policy version. Each reload adds at most one value, so a
    /// canary rollout can be compared by version without unbounded cardinality.
    pub policy_hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyInfoLabels {
    pub policy: String,
    pub policy_hash: String,
    /// `metadata.generation`, empty when the policy sets none.
    pub generation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// One call to a model, described by the GenAI conventions' required attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenAiCall {
    /// `gen_ai.operation.name`, such as `chat`.
    pub operation: &'static str,
    /// `gen_ai.provider.name`, such as `openai`.
    pub provider: &'static str,
    /// `gen_ai.request.model`: the model the request names.
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    pub gen_ai_operation_name: String,
    pub gen_ai_provider_name: String,
    pub gen_ai_request_model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiDurationLabels {
    pub gen_ai_operation_name: String,
    pub gen_ai_provider_name: String,
    pub gen_ai_request_model: String,
    /// Empty when the call succeeded, which Prometheus treats as no label.
    pub error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiTokenLabels {
    pub gen_ai_operation_name: String,
    pub gen_ai_provider_name: String,
    pub gen_ai_request_model: String,
    /// `input` or `output`.
    pub gen_ai_token_type: String,
    /// `upstream` when the provider reported the count, `sidecar` when the sidecar
    /// counted the tokens itself.
    pub token_source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardEvaluationLabels {
    pub direction: String,
    pub policy: String,
    pub policy_hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOperationLabels {
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub target: String,
    /// Model name sent upstream; empty for requests without one, such as model listings.
    pub model: String,
    /// HTTP status code, or `timeout`, `unavailable` or `error` when no response arrived.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetReasonLabels {
    pub target: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetOutcomeLabels {
    pub target: String,
    pub outcome: String,
}

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<TargetLabels, Histogram>,
    upstream_retries: Family<TargetReasonLabels, Counter>,
    upstream_fallbacks: Family<TargetReasonLabels, Counter>,
    breaker_open: Family<TargetLabels, Gauge>,
    health_error_rate: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    health_latency: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    health_checks: Family<TargetOutcomeLabels, Counter>,
    gen_ai_tokens: Family<GenAiTokenLabels, Histogram>,
    gen_ai_duration: Family<GenAiDurationLabels, Histogram>,
    gen_ai_first_chunk: Family<GenAiLabels, Histogram>,
    guard_duration: Family<GuardEvaluationLabels, Histogram>,
    context_tokens: Histogram,
    store_operations: Family<StoreOperationLabels, Counter>,
    store_buffered_turns: Gauge,
    store_degraded: Gauge,
    store_dropped_turns: Counter,
    /// Model names already used as label values; see [`Metrics::model_label`].
    models_seen: Mutex<HashSet<String>>,
    token_estimate_ratio: Family<ModelLabels, Histogram>,
    hold_back_overflows: Family<PolicyLabels, Counter>,
    context_actions: Family<ActionLabels, Counter>,
    summarizations: Family<OutcomeLabels, Counter>,
    policy_rules: Gauge,
    policy_info: Family<PolicyInfoLabels, Gauge>,
    policy_reloads: Family<OutcomeLabels, Counter>,
    escalations: Family<EscalationLabels, Counter>,
}

/// Labels of `agent_sidecar_escalations_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EscalationLabels {
    /// `created`, `approved` or `denied`.
    pub event: String,
    pub rule: String,
}

/// Buckets of the ratio of upstream-reported to estimated input tokens: 0.5 to 2.0,
/// finest around 1.0, where a useful estimate falls.
const TOKEN_ESTIMATE_RATIO_BUCKETS: [f64; 11] =
    [0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0];

fn token_estimate_ratio_histogram() -> Histogram {
    Histogram::new(TOKEN_ESTIMATE_RATIO_BUCKETS)
}

fn latency_histogram() -> Histogram {
    // 100 microseconds to about 105 seconds: covers the sidecar's own overhead and
    // long streamed completions.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Bucket boundaries the GenAI conventions give for `gen_ai.client.operation.duration`
/// and time to first chunk: 0.01 s doubling to 81.92 s.
fn gen_ai_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Bucket boundaries the GenAI conventions give for `gen_ai.client.token.usage`: 1
/// times powers of 4 up to 67,108,864 tokens.
fn gen_ai_token_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 14))
}

/// 1 microsecond to about 1 second: a guardrail pass over chat text takes microseconds,
/// and a slow one must still land in a bucket.
fn guard_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_001, 4.0, 11))
}

/// Distinct model names kept as label values. Clients choose the model name, so a
/// misbehaving agent could otherwise create a new series per request; names beyond
/// this limit are counted under [`OTHER_MODEL`]. An agent typically calls a few models.
pub const MAX_MODEL_LABELS: usize = 64;
/// Label value for models beyond [`MAX_MODEL_LABELS`].
pub const OTHER_MODEL: &str = "other";
/// Model names are cut to this many bytes in labels.
const MAX_MODEL_LABEL_BYTES: usize = 128;

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut root = Registry::default();
        let gen_ai_tokens = Family::<GenAiTokenLabels, Histogram>::new_with_constructor(
            gen_ai_token_histogram as fn() -> Histogram,
        );
        root.register(
            "gen_ai_client_token_usage",
            "Input and output tokens per model call (OpenTelemetry gen_ai.client.token.usage)",
            gen_ai_tokens.clone(),
        );
        let gen_ai_duration = Family::<GenAiDurationLabels, Histogram>::new_with_constructor(
            gen_ai_duration_histogram as fn() -> Histogram,
        );
        root.register_with_unit(
            "gen_ai_client_operation_duration",
            "Time from sending a model call to its last byte (OpenTelemetry gen_ai.client.operation.duration)",
            prometheus_client::registry::Unit::Seconds,
            gen_ai_duration.clone(),
        );
        let gen_ai_first_chunk = Family::<GenAiLabels, Histogram>::new_with_constructor(
            gen_ai_duration_histogram as fn() -> Histogram,
        );
        root.register_with_unit(
            "gen_ai_client_operation_time_to_first_chunk",
            "Time from sending a streamed model call to its first chunk (OpenTelemetry gen_ai.client.operation.time_to_first_chunk)",
            prometheus_client::registry::Unit::Seconds,
            gen_ai_first_chunk.clone(),
        );

        let registry = root.sub_registry_with_prefix("agent_sidecar");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "guardrail_decisions",
            "Guardrail rule matches by rule, kind, direction, outcome and mode",
            decisions.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests served by the model proxy, by route and HTTP status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from request received to response headers sent by the model proxy",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Attempts sent to upstream targets, by target, model and HTTP status (or timeout, unavailable, error)",
            upstream_requests.clone(),
        );
        let upstream_duration = Family::<TargetLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "upstream_request_duration",
            "Time from sending a request to a target to receiving its whole response, or its headers for a stream",
            prometheus_client::registry::Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_retries = Family::<TargetReasonLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Attempts repeated on the same target, by target and reason (rate_limited, server_error, timeout, unavailable)",
            upstream_retries.clone(),
        );
        let upstream_fallbacks = Family::<TargetReasonLabels, Counter>::default();
        registry.register(
            "upstream_fallbacks",
            "Requests that left a target for the next one, by target left and reason (failed, breaker_open, retry_after_too_long)",
            upstream_fallbacks.clone(),
        );
        let breaker_open = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "upstream_circuit_breaker_open",
            "1 while the target's circuit breaker rejects normal traffic (open or half-open), else 0",
            breaker_open.clone(),
        );
        let health_error_rate = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "upstream_health_error_ratio",
            "Moving average of the target's failed requests and checks, 0 to 1",
            health_error_rate.clone(),
        );
        let health_latency = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "upstream_health_latency",
            "Moving average of the target's time to response headers",
            prometheus_client::registry::Unit::Seconds,
            health_latency.clone(),
        );
        let health_checks = Family::<TargetOutcomeLabels, Counter>::default();
        registry.register(
            "upstream_health_checks",
            "Active health checks of idle targets, by target and outcome (success, failure)",
            health_checks.clone(),
        );
        let guard_duration = Family::<GuardEvaluationLabels, Histogram>::new_with_constructor(
            guard_duration_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "guardrail_evaluation_duration",
            "Time the guardrails took on one request or response, by direction",
            prometheus_client::registry::Unit::Seconds,
            guard_duration.clone(),
        );
        // 16 to 1,048,576 tokens, spanning small prompts to the largest context windows.
        let context_tokens = Histogram::new(exponential_buckets(16.0, 4.0, 9));
        registry.register(
            "context_request_tokens",
            "Input tokens of a request after fitting it into the policy's context budget",
            context_tokens.clone(),
        );
        let store_operations = Family::<StoreOperationLabels, Counter>::default();
        registry.register(
            "store_operations",
            "Conversation store operations by operation (load, append, save_summary) and outcome (success or the error kind)",
            store_operations.clone(),
        );
        let store_buffered_turns = Gauge::default();
        registry.register(
            "store_buffered_turns",
            "Turns waiting in the store's outage buffer",
            store_buffered_turns.clone(),
        );
        let store_degraded = Gauge::default();
        registry.register(
            "store_degraded",
            "1 while the conversation store is unreachable or replaying buffered turns",
            store_degraded.clone(),
        );
        let store_dropped_turns = Counter::default();
        registry.register(
            "store_dropped_turns",
            "Turns dropped because the store's outage buffer was full",
            store_dropped_turns.clone(),
        );
        let token_estimate_ratio = Family::<ModelLabels, Histogram>::new_with_constructor(
            token_estimate_ratio_histogram as fn() -> Histogram,
        );
        registry.register(
            "token_estimate_ratio",
            "Input tokens the upstream reported divided by the sidecar's estimate for the same request, per model",
            token_estimate_ratio.clone(),
        );
        let hold_back_overflows = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "stream_hold_back_overflows",
            "Times a stream released text unguarded because it exceeded stream.maxHoldBackBytes",
            hold_back_overflows.clone(),
        );
        let context_actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "context_window_actions",
            "Requests changed to fit the context budget, by action (truncated, summarized, rejected, overflow_retried)",
            context_actions.clone(),
        );
        let summarizations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "summarization_attempts",
            "Conversation summarization attempts through the upstream, by outcome (success, failure)",
            summarizations.clone(),
        );

        let escalations = Family::<EscalationLabels, Counter>::default();
        registry.register(
            "escalations",
            "Escalated tool calls created and resolved, by event (created, approved, denied) and rule",
            escalations.clone(),
        );

        let policy_rules = Gauge::default();
        registry.register(
            "policy_rules",
            "Rules in the loaded guardrail policy",
            policy_rules.clone(),
        );
        let policy_info = Family::<PolicyInfoLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "The enforced guardrail policy: 1 for its name, content hash and generation",
            policy_info.clone(),
        );
        let policy_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads after the policy files changed, by outcome (success, failure)",
            policy_reloads.clone(),
        );
        Arc::new(Metrics {
            registry: root,
            decisions,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            upstream_retries,
            upstream_fallbacks,
            breaker_open,
            health_error_rate,
            health_latency,
            health_checks,
            gen_ai_tokens,
            gen_ai_duration,
            gen_ai_first_chunk,
            guard_duration,
            context_tokens,
            store_operations,
            store_buffered_turns,
            store_degraded,
            store_dropped_turns,
            models_seen: Mutex::new(HashSet::new()),
            token_estimate_ratio,
            hold_back_overflows,
            context_actions,
            summarizations,
            policy_rules,
            policy_info,
            policy_reloads,
            escalations,
        })
    }

    /// Counts each finding as one guardrail decision.
    pub fn record_findings(&self, policy: &PolicyIdentity, findings: &[Finding]) {
        for finding in findings {
            self.decisions
                .get_or_create(&DecisionLabels {
                    rule: finding.rule.to_string(),
                    kind: finding.kind.as_str().to_owned(),
                    direction: finding.direction.as_str().to_owned(),
                    outcome: finding.outcome.as_str().to_owned(),
                    mode: finding.mode.as_str().to_owned(),
                    policy: policy.name.clone(),
                    policy_hash: policy.hash.clone(),
                })
                .inc();
        }
    }

    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one attempt sent to a target. The model label is bounded like the GenAI
    /// metrics' model label.
    pub fn record_upstream(&self, target: &str, model: &str, status: &str, elapsed: Duration) {
        let model = if model.is_empty() {
            String::new()
        } else {
            self.model_label(model)
        };
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                target: target.to_owned(),
                model,
                status: status.to_owned(),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&TargetLabels {
                target: target.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_retry(&self, target: &str, reason: &str) {
        self.upstream_retries
            .get_or_create(&TargetReasonLabels {
                target: target.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn record_fallback(&self, target: &str, reason: &str) {
        self.upstream_fallbacks
            .get_or_create(&TargetReasonLabels {
                target: target.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn record_health_check(&self, target: &str, success: bool) {
        self.health_checks
            .get_or_create(&TargetOutcomeLabels {
                target: target.to_owned(),
                outcome: if success { "success" } else { "failure" }.to_owned(),
            })
            .inc();
    }

    /// Sets a target's breaker and moving-average gauges; absent averages (no outcome
    /// yet) leave those gauges unset.
    pub fn set_target_health(
        &self,
        target: &str,
        breaker_open: bool,
        error_rate: Option<f64>,
        latency_secs: Option<f64>,
    ) {
        let labels = TargetLabels {
            target: target.to_owned(),
        };
        self.breaker_open
            .get_or_create(&labels)
            .set(i64::from(breaker_open));
        if let Some(rate) = error_rate {
            self.health_error_rate.get_or_create(&labels).set(rate);
        }
        if let Some(latency) = latency_secs {
            self.health_latency.get_or_create(&labels).set(latency);
        }
    }

    /// Returns the label value for `model`: the name itself, cut to a bounded length,
    /// while fewer than [`MAX_MODEL_LABELS`] names have been seen, else [`OTHER_MODEL`].
    fn model_label(&self, model: &str) -> String {
        let mut end = model.len().min(MAX_MODEL_LABEL_BYTES);
        while !model.is_char_boundary(end) {
            end -= 1;
        }
        let model = &model[..end];
        let mut seen = self
            .models_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(model) {
            return model.to_owned();
        }
        if seen.len() < MAX_MODEL_LABELS {
            seen.insert(model.to_owned());
            return model.to_owned();
        }
        OTHER_MODEL.to_owned()
    }

    fn gen_ai_labels(&self, call: &GenAiCall) -> GenAiLabels {
        GenAiLabels {
            gen_ai_operation_name: call.operation.to_owned(),
            gen_ai_provider_name: call.provider.to_owned(),
            gen_ai_request_model: self.model_label(&call.model),
        }
    }

    /// Records the tokens of one model call; `source` is `upstream` when the provider
    /// reported them and `sidecar` when the sidecar counted them itself.
    pub fn record_tokens(&self, call: &GenAiCall, input: u64, output: u64, source: &str) {
        let labels = self.gen_ai_labels(call);
        for (kind, count) in [("input", input), ("output", output)] {
            self.gen_ai_tokens
                .get_or_create(&GenAiTokenLabels {
                    gen_ai_operation_name: labels.gen_ai_operation_name.clone(),
                    gen_ai_provider_name: labels.gen_ai_provider_name.clone(),
                    gen_ai_request_model: labels.gen_ai_request_model.clone(),
                    gen_ai_token_type: kind.to_owned(),
                    token_source: source.to_owned(),
                })
                .observe(count as f64);
        }
    }

    /// Records the duration of one model call; `error_type` names the failure (an HTTP
    /// status code or the sidecar's error code) and is `None` on success.
    pub fn record_gen_ai_call(
        &self,
        call: &GenAiCall,
        elapsed: Duration,
        error_type: Option<&str>,
    ) {
        let labels = self.gen_ai_labels(call);
        self.gen_ai_duration
            .get_or_create(&GenAiDurationLabels {
                gen_ai_operation_name: labels.gen_ai_operation_name,
                gen_ai_provider_name: labels.gen_ai_provider_name,
                gen_ai_request_model: labels.gen_ai_request_model,
                error_type: error_type.unwrap_or_default().to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the time from sending a streamed call to its first chunk.
    pub fn record_time_to_first_chunk(&self, call: &GenAiCall, elapsed: Duration) {
        self.gen_ai_first_chunk
            .get_or_create(&self.gen_ai_labels(call))
            .observe(elapsed.as_secs_f64());
    }

    /// Records the time the guardrails took on one request or response.
    pub fn record_guard_evaluation(
        &self,
        policy: &PolicyIdentity,
        direction: Direction,
        elapsed: Duration,
    ) {
        self.guard_duration
            .get_or_create(&GuardEvaluationLabels {
                direction: direction.as_str().to_owned(),
                policy: policy.name.clone(),
                policy_hash: policy.hash.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the input tokens of a request fitted into its context budget.
    pub fn record_context_tokens(&self, tokens: u32) {
        self.context_tokens.observe(f64::from(tokens));
    }

    /// Counts one conversation store operation; `outcome` is `success` or the error kind.
    pub fn record_store_operation(&self, operation: &str, outcome: &str) {
        self.store_operations
            .get_or_create(&StoreOperationLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Copies the store's health into its gauges. The admin server calls it before each
    /// scrape.
    pub fn observe_store(&self, health: &StoreHealth) {
        self.store_buffered_turns
            .set(i64::try_from(health.buffered_turns).unwrap_or(i64::MAX));
        self.store_degraded
            .set(i64::from(health.status == StoreStatus::Degraded));
        // The store keeps the total, and the counter catches up to it. Two scrapes at
        // once may both read the old value, and the later one then adds nothing.
        let counted = self.store_dropped_turns.get();
        if health.dropped_turns > counted {
            self.store_dropped_turns
                .inc_by(health.dropped_turns - counted);
        }
    }

    /// Records how far the sidecar's input token estimate was from the upstream's count
    /// for one request, as the ratio reported / estimated. A zero estimate is skipped.
    pub fn record_token_estimate(&self, model: &str, estimated: u32, reported: u64) {
        if estimated == 0 {
            return;
        }
        self.token_estimate_ratio
            .get_or_create(&ModelLabels {
                model: self.model_label(model),
            })
            .observe(reported as f64 / f64::from(estimated));
    }

    /// Counts times the streaming guard released text unguarded because a channel held
    /// back more than the policy's limit.
    pub fn record_hold_back_overflows(&self, policy: &str, count: u64) {
        self.hold_back_overflows
            .get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
            })
            .inc_by(count);
    }

    /// Counts a request changed or rejected to fit its context budget.
    pub fn record_context_action(&self, action: &str) {
        self.context_actions
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .inc();
    }

    /// Counts an escalation being created, approved or denied.
    pub fn record_escalation(&self, event: &str, rule: &str) {
        self.escalations
            .get_or_create(&EscalationLabels {
                event: event.to_owned(),
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// Counts one summarization attempt.
    pub fn record_summarization(&self, outcome: &str) {
        self.summarizations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records `policy` as the enforced policy, replacing the previous one in
    /// `policy_info`.
    pub fn record_policy_loaded(&self, policy: &Policy) {
        self.policy_rules
            .set(i64::try_from(policy.rule_count).unwrap_or(i64::MAX));
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&PolicyInfoLabels {
                policy: policy.identity.name.clone(),
                policy_hash: policy.identity.hash.clone(),
                generation: policy
                    .identity
                    .generation
                    .map(|generation| generation.to_string())
                    .unwrap_or_default(),
            })
            .set(1);
    }

    /// Counts one reload of changed policy files.
    pub fn record_policy_reload(&self, outcome: ReloadOutcome) {
        self.policy_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    /// Renders the registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(model: &str) -> GenAiCall {
        GenAiCall {
            operation: "chat",
            provider: "openai",
            model: model.to_owned(),
        }
    }

    #[test]
    fn model_labels_are_bounded() {
        let metrics = Metrics::new();

        for index in 0..MAX_MODEL_LABELS + 5 {
            metrics.record_tokens(&call(&format!("model-{index}")), 1, 1, "upstream");
        }

        let text = metrics.encode();
        assert!(text.contains("gen_ai_request_model=\"model-0\""));
        let last_kept = format!("gen_ai_request_model=\"model-{}\"", MAX_MODEL_LABELS - 1);
        assert!(text.contains(&last_kept));
        let first_dropped = format!("gen_ai_request_model=\"model-{MAX_MODEL_LABELS}\"");
        assert!(!text.contains(&first_dropped));
        assert!(text.contains("gen_ai_request_model=\"other\""));
    }

    #[test]
    fn known_model_keeps_its_label() {
        let metrics = Metrics::new();
        for index in 0..MAX_MODEL_LABELS {
            metrics.record_tokens(&call(&format!("model-{index}")), 1, 1, "upstream");
        }

        metrics.record_tokens(&call("model-3"), 7, 0, "upstream");

        let text = metrics.encode();
        assert!(text.contains(
            "gen_ai_client_token_usage_count{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"model-3\",gen_ai_token_type=\"input\",token_source=\"upstream\"} 2"
        ), "{text}");
    }

    #[test]
    fn store_health_sets_gauges() {
        let metrics = Metrics::new();

        metrics.observe_store(&StoreHealth {
            kind: "redis",
            status: StoreStatus::Degraded,
            buffered_turns: 3,
            buffer_full: false,
            dropped_turns: 2,
            last_error: None,
        });

        let text = metrics.encode();
        assert!(text.contains("agent_sidecar_store_degraded 1"), "{text}");
        assert!(
            text.contains("agent_sidecar_store_buffered_turns 3"),
            "{text}"
        );
        assert!(
            text.contains("agent_sidecar_store_dropped_turns_total 2"),
            "{text}"
        );
    }
}
