//! The admin server: probes for the kubelet and metrics for Prometheus.
//!
//! `/livez` answers whenever the process and its runtime do; it depends on nothing else,
//! so a provider or store outage never restarts the pod. `/readyz` reports the loaded
//! policy and the store. `/startupz` answers once the policy is compiled and the
//! listeners are bound, which is true before this server starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::guard::Guard;
use crate::state::ConversationStore;
use crate::telemetry::metrics::Metrics;

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub guard: Arc<Guard>,
    pub store: Arc<dyn ConversationStore>,
    pub metrics: Arc<Metrics>,
    /// Set once every listener is bound.
    pub started: Arc<AtomicBool>,
    /// Cleared when shutdown begins, so the pod leaves its endpoints first.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/startupz", get(startupz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn startupz(State(state): State<AdminState>) -> Response {
    if state.started.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let ready = state.ready.load(Ordering::Acquire) && state.started.load(Ordering::Acquire);
    let policy = state.guard.policy();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "policy": {
                "status": "ok",
                "name": policy.identity.name,
                "generation": policy.identity.generation,
                "hash": policy.identity.hash,
                "source": policy.identity.source,
                "rules": policy.rule_count,
            },
            "store": {"status": "ok", "kind": state.store.kind()},
            "shutdown": {"status": if state.ready.load(Ordering::Acquire) { "ok" } else { "draining" }},
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
