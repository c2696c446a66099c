//! Prometheus metric families, all defined here so names, units and labels stay
//! consistent. Labels never carry conversation ids, user ids or message content.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::guard::Finding;
use crate::policy::reload::ReloadOutcome;
use crate::policy::{Policy, PolicyIdentity};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub token_type: String,
    pub source: String,
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
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub provider: String,
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
    upstream_duration: Family<ProviderLabels, Histogram>,
    tokens: Family<TokenLabels, Counter>,
    hold_back_overflows: Family<PolicyLabels, Counter>,
    context_actions: Family<ActionLabels, Counter>,
    summarizations: Family<OutcomeLabels, Counter>,
    policy_rules: Gauge,
    policy_info: Family<PolicyInfoLabels, Gauge>,
    policy_reloads: Family<OutcomeLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 microseconds to about 105 seconds: covers the sidecar's own overhead and
    // long streamed completions.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("agent_sidecar");
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
            "Requests sent to model providers, by provider and outcome",
            upstream_requests.clone(),
        );
        let upstream_duration = Family::<ProviderLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "upstream_request_duration",
            "Time from sending a request to a provider to receiving its whole response",
            prometheus_client::registry::Unit::Seconds,
            upstream_duration.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gen_ai_tokens",
            "Tokens per model and type (input, output); source is upstream (reported) or sidecar (counted)",
            tokens.clone(),
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
            registry,
            decisions,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            tokens,
            hold_back_overflows,
            context_actions,
            summarizations,
            policy_rules,
            policy_info,
            policy_reloads,
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

    pub fn record_upstream(&self, provider: &str, outcome: &str, elapsed: Duration) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                provider: provider.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts tokens of one response; `source` is `upstream` when the provider reported
    /// them and `sidecar` when the sidecar counted them itself.
    pub fn record_tokens(&self, model: &str, input: u64, output: u64, source: &str) {
        for (kind, count) in [("input", input), ("output", output)] {
            self.tokens
                .get_or_create(&TokenLabels {
                    model: model.to_owned(),
                    token_type: kind.to_owned(),
                    source: source.to_owned(),
                })
                .inc_by(count);
        }
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
