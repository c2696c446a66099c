//! Active health checks. A background task per target lists the target's models when
//! the target has had no traffic for a whole interval. An idle target's health so stays
//! current, and an open breaker can close without risking a client's request.
//!
//! Checks run on their own tasks and never on a probe's or a client's request path.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, Method};
use tokio::time::MissedTickBehavior;

use crate::config::routing::{Dialect, HealthCheckConfig};
use crate::proxy::retry::{Class, classify_status};
use crate::proxy::routing::{RouteTable, Target};
use crate::telemetry::metrics::Metrics;

/// `anthropic-version` sent with checks of Anthropic targets, which reject requests
/// without one.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Starts one check task per target. The tasks run until the process exits.
pub fn spawn(routes: &RouteTable, config: &HealthCheckConfig, metrics: &Arc<Metrics>) {
    for target in routes.targets() {
        tokio::spawn(run(target.clone(), config.clone(), metrics.clone()));
    }
}

async fn run(target: Arc<Target>, config: HealthCheckConfig, metrics: Arc<Metrics>) {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick completes at once; the target has not been idle for an interval yet.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let recently_used = target
            .health
            .idle_for(Instant::now())
            .is_some_and(|idle| idle < config.interval);
        if recently_used {
            continue;
        }
        // An open breaker in its cooldown refuses; after the cooldown the check becomes
        // the breaker's single probe.
        let Some(permit) = target.health.acquire() else {
            continue;
        };
        let outcome = check(&target, &config).await;
        metrics.record_health_check(target.name, outcome.is_ok());
        match outcome {
            Ok(()) => permit.success(),
            Err(reason) => {
                tracing::debug!(target.name = target.name, reason = %reason, "health check failed");
                permit.failure(&reason);
            }
        }
    }
}

/// Lists the target's models. Any response other than 429 or 5xx counts as healthy: a 401
/// from a target that expects the client's credential still shows it is up.
async fn check(target: &Target, config: &HealthCheckConfig) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    let path = match target.dialect {
        Dialect::OpenAi => "models",
        Dialect::Anthropic => {
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
            "v1/models"
        }
    };
    let request = target
        .upstream
        .send_inner(Method::GET, path, None, &headers, None);
    match tokio::time::timeout(config.timeout, request).await {
        Err(_) => Err("health check timed out".to_owned()),
        Ok(Err(error)) => Err(format!(
            "health check {}",
            crate::proxy::upstream::error_label(&error)
        )),
        Ok(Ok(response)) => match classify_status(response.status) {
            Class::Success | Class::ClientError => Ok(()),
            Class::Retryable => Err(format!("health check status {}", response.status.as_u16())),
        },
    }
}
