//! Errors of the model proxy and their one mapping to an HTTP status, a provider-format
//! error body and a metric label.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::dialect::InvalidRequest;

/// Everything that can go wrong while proxying one request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(InvalidRequest),
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    RequestTooLarge { limit_bytes: usize },
    #[error("failed to read the request body: {0}")]
    RequestBody(String),
    #[error(
        "unknown path {path}; this sidecar serves POST /v1/chat/completions, POST /v1/messages, \
         POST /v1/messages/count_tokens and GET /v1/models"
    )]
    UnknownPath { path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request blocked by guardrail policy: rule {rule:?} ({kind})")]
    Blocked { rule: String, kind: &'static str },
    #[error("{}", approval_message(rule, kind, escalation.as_deref()))]
    ApprovalRequired {
        rule: String,
        kind: &'static str,
        /// The escalation that contains the call, when the request has a conversation.
        escalation: Option<String>,
    },
    #[error("{reason}")]
    StoreUnavailable { reason: String },
    #[error(
        "request needs about {tokens} input tokens, {over} over this sidecar's context budget \
         of {budget} tokens for the model; shorten the conversation or start a new one"
    )]
    ContextOverBudget { tokens: u32, budget: u32, over: u32 },
    #[error("upstream {provider} is unavailable: {reason}")]
    UpstreamUnavailable {
        provider: &'static str,
        reason: String,
    },
    #[error("upstream {provider} did not respond within {timeout_secs} s")]
    UpstreamTimeout {
        provider: &'static str,
        timeout_secs: u64,
    },
    #[error("upstream {provider} returned a response the sidecar cannot guard: {reason}")]
    UpstreamInvalid {
        provider: &'static str,
        reason: String,
    },
    #[error("no route for model {model:?}; use a model this sidecar routes, or add a route for it")]
    NoRoute { model: String },
    #[error(
        "no upstream for model {model:?} is available: the circuit breaker of every target \
         ({targets}) is open after repeated failures; retry later"
    )]
    NoTargetAvailable { model: String, targets: String },
    #[error("upstream {provider} response is larger than the limit of {limit_bytes} bytes")]
    UpstreamTooLarge {
        provider: &'static str,
        limit_bytes: usize,
    },
}

impl ProxyError {
    /// HTTP status, OpenAI error `type`, error `code`: one exhaustive mapping.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ProxyError::InvalidJson(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
            ),
            ProxyError::InvalidRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            ),
            ProxyError::RequestTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
            ),
            ProxyError::RequestBody(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_body",
            ),
            ProxyError::UnknownPath { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_path",
            ),
            ProxyError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
            ),
            ProxyError::Blocked { .. } => (
                StatusCode::FORBIDDEN,
                "guardrail_violation",
                "blocked_by_policy",
            ),
            ProxyError::ApprovalRequired { .. } => (
                StatusCode::FORBIDDEN,
                "guardrail_violation",
                "approval_required",
            ),
            ProxyError::StoreUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "conversation_store_unavailable",
            ),
            ProxyError::ContextOverBudget { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
            ),
            ProxyError::UpstreamUnavailable { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unavailable",
            ),
            ProxyError::UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
            ),
            ProxyError::UpstreamInvalid { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_invalid_response",
            ),
            ProxyError::NoRoute { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            ProxyError::NoTargetAvailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_error",
                "no_upstream_available",
            ),
            ProxyError::UpstreamTooLarge { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_response_too_large",
            ),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ProxyError::InvalidRequest(invalid) => invalid.param.as_deref(),
            _ => None,
        }
    }

    /// Renders the error as an OpenAI-style JSON body.
    pub fn to_openai_body(&self) -> serde_json::Value {
        let (_, kind, code) = self.classify();
        json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "code": code,
                "param": self.param(),
            }
        })
    }

    /// Anthropic error `type` for the same cases: one exhaustive mapping, with the
    /// status from [`ProxyError::classify`].
    pub fn anthropic_type(&self) -> &'static str {
        match self {
            ProxyError::InvalidJson(_)
            | ProxyError::InvalidRequest(_)
            | ProxyError::RequestBody(_)
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::ContextOverBudget { .. } => "invalid_request_error",
            ProxyError::RequestTooLarge { .. } => "request_too_large",
            ProxyError::UnknownPath { .. } | ProxyError::NoRoute { .. } => "not_found_error",
            ProxyError::NoTargetAvailable { .. } => "overloaded_error",
            ProxyError::Blocked { .. } | ProxyError::ApprovalRequired { .. } => "permission_error",
            ProxyError::StoreUnavailable { .. } => "overloaded_error",
            ProxyError::UpstreamTimeout { .. } => "timeout_error",
            ProxyError::UpstreamUnavailable { .. }
            | ProxyError::UpstreamInvalid { .. }
            | ProxyError::UpstreamTooLarge { .. } => "api_error",
        }
    }

    /// Renders the error as an Anthropic-style JSON body,
    /// `{"type": "error", "error": {"type", "message"}}`. The message names the
    /// offending field for an invalid request.
    pub fn to_anthropic_body(&self) -> serde_json::Value {
        let message = match self.param() {
            Some(param) if !self.to_string().contains(param) => format!("{param}: {self}"),
            _ => self.to_string(),
        };
        json!({
            "type": "error",
            "error": {"type": self.anthropic_type(), "message": message},
        })
    }

    /// Builds the HTTP response for an Anthropic client.
    pub fn into_anthropic_response(self) -> Response {
        let (status, _, _) = self.classify();
        (status, axum::Json(self.to_anthropic_body())).into_response()
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.classify();
        (status, axum::Json(self.to_openai_body())).into_response()
    }
}

/// Builds the message of an escalated call: "approval pending" and the escalation id
/// when there is one, so the agent can retry the identical call once approved.
fn approval_message(rule: &str, kind: &str, escalation: Option<&str>) -> String {
    match escalation {
        Some(id) => format!(
            "approval pending: escalation {id} holds this tool call under guardrail policy rule {rule:?} ({kind}); retry the identical call after it is approved"
        ),
        None => format!(
            "request requires approval under guardrail policy: rule {rule:?} ({kind}); send the conversation id header so the call can be escalated"
        ),
    }
}
