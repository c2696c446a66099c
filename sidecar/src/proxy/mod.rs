//! The model proxy: an HTTP server on loopback that speaks the providers' APIs, guards
//! each request and response, and forwards to the configured upstream.

mod anthropic;
mod conversation;
pub mod error;
mod openai;
mod openai_stream;
mod pipeline;
mod reply;
pub mod retry;
pub mod routing;
mod stream;
pub mod upstream;

pub use conversation::UpstreamSummarizer;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::{any, get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::context::{ModelCatalog, SummaryScheduler};
use crate::policy::reload::GuardHandle;
use crate::state::ConversationStore;
use crate::state::escalation::Escalations;
use crate::state::vault::VaultKey;
use crate::telemetry::metrics::Metrics;
use error::ProxyError;
use routing::RouteTable;
use upstream::Upstream;

/// Header naming the conversation a request belongs to.
pub const CONVERSATION_ID_HEADER: &str = "x-agent-conversation-id";
/// Response header carrying the overall verdict (`allow`, `transform`, `block`).
pub const VERDICT_HEADER: &str = "x-agent-sidecar-verdict";
/// Response header naming the escalation that keeps a tool call waiting for approval.
pub const ESCALATION_HEADER: &str = "x-agent-sidecar-escalation-id";
/// Response header naming the rule that blocked a request or response.
pub const BLOCKED_RULE_HEADER: &str = "x-agent-sidecar-blocked-rule";

/// State shared by every proxy handler.
#[derive(Debug, Clone)]
pub struct ProxyState {
    /// The enforced policy; each request takes one snapshot at its start.
    pub guard: Arc<GuardHandle>,
    /// The OpenAI provider upstream, for paths that carry no model (listings and
    /// unguarded pass-through).
    pub openai: Upstream,
    pub anthropic: Upstream,
    /// Routes and targets for requests that name a model.
    pub routes: Arc<RouteTable>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn ConversationStore>,
    /// Key that seals pseudonym vault entries at rest.
    pub vault_key: VaultKey,
    /// Context windows and output limits per model.
    pub models: Arc<ModelCatalog>,
    /// Background summarization of conversations that reach their trigger.
    pub summaries: SummaryScheduler,
    pub max_request_body_bytes: usize,
    pub passthrough_unknown_paths: bool,
    /// Escalations of tool calls that an `escalate` action rule holds.
    pub escalations: Escalations,
}

/// Builds the proxy's routes.
pub fn router(state: ProxyState) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/messages",
            post(anthropic::messages).fallback(anthropic::method_not_allowed),
        )
        .route(
            "/v1/messages/count_tokens",
            post(anthropic::count_tokens).fallback(anthropic::method_not_allowed),
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
