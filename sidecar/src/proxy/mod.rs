//! The model proxy: an HTTP server on loopback that speaks the providers' APIs, guards
//! each request and response, and forwards to the configured upstream.

pub mod error;
mod openai;
mod openai_stream;
pub mod upstream;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::{any, get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::guard::Guard;
use crate::state::ConversationStore;
use crate::telemetry::metrics::Metrics;
use error::ProxyError;
use upstream::Upstream;

/// Header naming the conversation a request belongs to.
pub const CONVERSATION_ID_HEADER: &str = "x-agent-conversation-id";
/// Response header carrying the overall verdict (`allow`, `transform`, `block`).
pub const VERDICT_HEADER: &str = "x-agent-sidecar-verdict";
/// Response header naming the rule that blocked a request or response.
pub const BLOCKED_RULE_HEADER: &str = "x-agent-sidecar-blocked-rule";
/// Maximum conversation id length; longer ids are ignored rather than stored.
const MAX_CONVERSATION_ID_LEN: usize = 256;

/// State shared by every proxy handler.
#[derive(Debug, Clone)]
pub struct ProxyState {
    pub guard: Arc<Guard>,
    pub openai: Upstream,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn ConversationStore>,
    pub max_request_body_bytes: usize,
    pub passthrough_unknown_paths: bool,
}

/// Builds the proxy's routes.
pub fn router(state: ProxyState) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/models",
            get(openai::models).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/models/{*model}",
            get(openai::models).fallback(openai::method_not_allowed),
        )
        .route("/v1/{*rest}", any(openai::other_v1_path))
        .fallback(openai::unknown_path)
        .with_state(state)
}

/// Reads a request body, rejecting it early when `Content-Length` already exceeds the
/// limit and otherwise stopping as soon as the limit is crossed.
async fn read_body(request: Request<Body>, limit_bytes: usize) -> Result<Bytes, ProxyError> {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit_bytes as u64) {
        return Err(ProxyError::RequestTooLarge { limit_bytes });
    }
    match Limited::new(request.into_body(), limit_bytes)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::RequestTooLarge { limit_bytes })
        }
        Err(e) => Err(ProxyError::RequestBody(e.to_string())),
    }
}

/// Reads the conversation id from the request headers, when present and usable.
fn conversation_id(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(CONVERSATION_ID_HEADER)?.to_str().ok()?.trim();
    (!value.is_empty() && value.len() <= MAX_CONVERSATION_ID_LEN).then(|| value.to_owned())
}

/// Appends a guarded turn to the conversation store. A store failure never fails the
/// request: the client already has its answer.
async fn store_turn(
    state: &ProxyState,
    conversation_id: &str,
    model: &str,
    policy: &crate::policy::Policy,
    messages: Vec<crate::dialect::Message>,
) {
    let turn = crate::state::Turn::new(
        model.to_owned(),
        format!("{}@{}", policy.identity.name, policy.identity.hash),
        messages,
    );
    let append = crate::state::Append {
        turn,
        vault: Vec::new(),
        expected_version: None,
        ttl: crate::state::DEFAULT_CONVERSATION_TTL,
    };
    if let Err(error) = state.store.append(conversation_id, append).await {
        tracing::debug!(error = %error, "conversation turn not stored");
    }
}
