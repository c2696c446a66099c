//! The admin server: probes for the kubelet and metrics for Prometheus, plus the model
//! health they report (circuit breakers and moving averages per upstream target).
//!
//! `/livez` returns 200 whenever the process and its runtime run; it depends on nothing else,
//! so a provider or store outage never restarts the pod. `/readyz` fails only for what the
//! configuration requires: the policy, a store that rejects requests, and the models listed
//! in `readiness.requireModels`. Its body always shows every target's health. `/startupz`
//! answers once the policy is compiled and the listeners are bound.

pub mod active;
pub mod breaker;
pub mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::policy::reload::GuardHandle;
use crate::proxy::routing::RouteTable;
use crate::state::{Admission, ConversationStore, StoreStatus};
use crate::telemetry::LogFilter;
use crate::telemetry::exposition;
use crate::telemetry::metrics::Metrics;

/// State the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub guard: Arc<GuardHandle>,
    pub store: Arc<dyn ConversationStore>,
    pub metrics: Arc<Metrics>,
    /// Targets whose health `/readyz` and `/metrics` report.
    pub routes: Arc<RouteTable>,
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
        .route("/loglevel", get(log_level).put(set_log_level))
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
    let guard = state.guard.current();
    let policy = guard.policy();
    let reload = state.guard.status();
    let store = state.store.health();
    // A degraded store keeps the pod ready while requests still flow (turns queue in the
    // outage buffer). Only a store that is rejecting new requests, because its buffer is
    // full under `onStoreFull: failClosed`, takes the pod out of its endpoints.
    let store_accepting = matches!(
        state.store.admission(policy.conversation.on_store_full),
        Admission::Accept
    );
    let draining = !state.ready.load(Ordering::Acquire);
    let (models, models_ready) = model_checks(&state.routes);
    let ready =
        !draining && state.started.load(Ordering::Acquire) && store_accepting && models_ready;
    let store_status = match (store.status, store_accepting) {
        (_, false) => "rejecting",
        (StoreStatus::Ok, true) => "ok",
        (StoreStatus::Degraded, true) => "degraded",
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "policy": {
                // A rejected reload leaves the last valid policy enforced, so it does not
                // make the pod unready; the detail shows what was rejected.
                "status": if reload.rejected_hash.is_some() || !reload.errors.is_empty() {
                    "reload_failed"
                } else {
                    "ok"
                },
                "name": policy.identity.name,
                "generation": policy.identity.generation,
                "hash": policy.identity.hash,
                "source": policy.identity.source,
                "rules": policy.rule_count,
                "reload": reload,
            },
            "store": {
                "status": store_status,
                "kind": store.kind,
                "bufferedTurns": store.buffered_turns,
                "bufferFull": store.buffer_full,
                "droppedTurns": store.dropped_turns,
                "lastError": store.last_error,
            },
            "shutdown": {"status": if draining { "draining" } else { "ok" }},
            "models": models,
        },
        "targets": target_details(&state.routes),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Checks each model in `readiness.requireModels`: ready while some target of its route
/// accepts traffic. Returns the detail and whether all of them are ready.
fn model_checks(routes: &RouteTable) -> (serde_json::Value, bool) {
    let mut all_ready = true;
    let mut detail = serde_json::Map::new();
    for model in &routes.required_models {
        let available = routes.model_available(model);
        all_ready &= available;
        detail.insert(
            model.clone(),
            json!({
                "status": if available { "ok" } else { "unavailable" },
                "required": true,
            }),
        );
    }
    (serde_json::Value::Object(detail), all_ready)
}

/// Returns every target's health, whether or not readiness requires it.
fn target_details(routes: &RouteTable) -> serde_json::Value {
    let mut detail = serde_json::Map::new();
    for target in routes.targets() {
        let mut value = serde_json::to_value(target.health.snapshot()).unwrap_or_default();
        if let serde_json::Value::Object(fields) = &mut value {
            fields.insert("dialect".to_owned(), json!(target.dialect.as_str()));
        }
        detail.insert(target.name.to_owned(), value);
    }
    serde_json::Value::Object(detail)
}

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    state.routes.export_health(&state.metrics);
    state.metrics.observe_store(&state.store.health());
    let (body, content_type) = exposition::negotiate(&headers, state.metrics.encode());
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// `GET /loglevel`: the current log filter in `RUST_LOG` syntax.
async fn log_level() -> Response {
    match LogFilter::installed() {
        Some(filter) => (StatusCode::OK, format!("{}\n", filter.current())).into_response(),
        None => log_filter_missing(),
    }
}

/// `PUT /loglevel`: replaces the log filter with the request body in `RUST_LOG` syntax,
/// such as `debug` or `info,agent_sidecar::proxy=debug`. This crate logs no message
/// content at any level, so the admin port may change the filter.
/// NOTE: at `trace`, dependencies such as hyper and h2 log connection detail that this
/// project does not control; the privacy test covers `debug`.
async fn set_log_level(body: String) -> Response {
    let Some(filter) = LogFilter::installed() else {
        return log_filter_missing();
    };
    let directives = body.trim();
    if directives.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "empty log filter; send a filter such as `debug` or `info,agent_sidecar::proxy=debug` as the request body"})),
        )
            .into_response();
    }
    match filter.set(directives) {
        Ok(previous) => {
            tracing::info!(previous = %previous, current = %directives, "log filter changed");
            (
                StatusCode::OK,
                axum::Json(json!({"previous": previous, "current": filter.current()})),
            )
                .into_response()
        }
        Err(message) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": message})),
        )
            .into_response(),
    }
}

fn log_filter_missing() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "this process did not install a reloadable log filter"})),
    )
        .into_response()
}

/// Returns whether `/readyz` currently reports ready; the gRPC health service mirrors it.
pub async fn is_ready(state: AdminState) -> bool {
    readyz(State(state)).await.status().is_success()
}

/// Builds the admin routes served while the configured policy file does not exist yet:
/// live, but neither started nor ready, and `/readyz` names the missing file.
pub fn waiting_router(policy_path: &std::path::Path) -> Router {
    let source = policy_path.display().to_string();
    let readyz = move || {
        let body = json!({
            "status": "not_ready",
            "checks": {
                "policy": {"status": "missing", "source": source},
            },
        });
        async move { (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)) }
    };
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route(
            "/startupz",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "waiting for the policy\n") }),
        )
}
