//! Metric families of the `webhook` process. It exports its own registry because it runs
//! as a separate Deployment and shares no metric with the sidecar.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `outcome` is `injected`, `skipped`, `rejected` or `invalid` (a review the webhook could
/// not read); `reason` is the skip reason, or the same as `outcome` otherwise.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub outcome: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every metric the webhook exports.
#[derive(Debug)]
pub struct WebhookMetrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    admission_duration: Histogram,
    certificate_reloads: Family<OutcomeLabels, Counter>,
}

impl WebhookMetrics {
    pub fn new() -> Arc<WebhookMetrics> {
        let mut registry = Registry::with_prefix("agent_sidecar_webhook");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by outcome and reason",
            admissions.clone(),
        );
        // 50 microseconds to about 3.3 seconds: a review normally takes well under a
        // millisecond, and the API server gives up after the configured timeout.
        let admission_duration = Histogram::new(exponential_buckets(0.00005, 4.0, 9));
        registry.register_with_unit(
            "admission_duration",
            "Time from reading an admission review to writing its response",
            Unit::Seconds,
            admission_duration.clone(),
        );
        let certificate_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate loads after a change on disk, by outcome (success, failure)",
            certificate_reloads.clone(),
        );
        Arc::new(WebhookMetrics {
            registry,
            admissions,
            admission_duration,
            certificate_reloads,
        })
    }

    pub fn record_admission(&self, outcome: &str, reason: &str, elapsed: Duration) {
        self.admissions
            .get_or_create(&AdmissionLabels {
                outcome: outcome.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
        self.admission_duration.observe(elapsed.as_secs_f64());
    }

    pub fn record_certificate_reload(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.certificate_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Renders the registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
