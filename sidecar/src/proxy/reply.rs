//! Pieces of a client response that both dialects build the same way: the rule behind a
//! block, JSON and event-stream responses, provider headers and unchanged pass-through.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::upstream::UpstreamResponse;
use super::{BLOCKED_RULE_HEADER, VERDICT_HEADER};

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, axum::Json(value)).into_response();
    *response.status_mut() = status;
    response
}

pub(super) fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Provider headers worth keeping on a rewritten response: request ids and rate limits
/// (OpenAI's and Anthropic's).
pub(super) fn copy_provider_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let name_str = name.as_str();
        if name_str.starts_with("x-ratelimit-")
            || name_str.starts_with("anthropic-ratelimit-")
            || name_str == "x-request-id"
            || name_str == "request-id"
            || name_str == "openai-processing-ms"
            || name_str == "openai-version"
        {
            to.insert(name.clone(), value.clone());
        }
    }
}

/// Returns an upstream response unchanged, minus hop-by-hop headers.
pub(super) fn passthrough(upstream: UpstreamResponse) -> Response {
    let mut response = Response::new(Body::from(upstream.body));
    *response.status_mut() = upstream.status;
    for (name, value) in &upstream.headers {
        if matches!(
            name,
            &header::CONNECTION | &header::TRANSFER_ENCODING | &header::CONTENT_LENGTH
        ) {
            continue;
        }
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

/// Sets the headers of a guarded event stream: the content type, no caching, and no
/// buffering by nginx-style proxies in front of the client.
pub(super) fn event_stream_headers(headers: &mut HeaderMap, verdict: &str, rule: Option<&str>) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    set_header(headers, VERDICT_HEADER, verdict);
    if let Some(rule) = rule {
        set_header(headers, BLOCKED_RULE_HEADER, rule);
    }
}
