//! The HTTP client that talks to model providers.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use bytes::Bytes;
use futures_util::StreamExt;

use super::error::ProxyError;
use crate::config::Provider;
use crate::telemetry::metrics::Metrics;

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1),
/// plus those the client library sets itself.
const NOT_FORWARDED: &[HeaderName] = &[
    header::CONNECTION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    // The sidecar must read the body to guard it, so it requests an uncompressed one.
    header::ACCEPT_ENCODING,
];

/// Client headers that stay with the sidecar.
const SIDECAR_HEADERS: &[&str] = &["keep-alive", "x-agent-conversation-id"];

/// A response read whole from a provider.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: axum::http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl UpstreamResponse {
    pub fn is_event_stream(&self) -> bool {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }
}

/// Scheme for sending the provider key that the sidecar holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer KEY` (OpenAI and compatible servers).
    Bearer,
    /// The key as the whole value of the named header, such as Anthropic's `x-api-key`.
    Header(&'static str),
}

/// Sends requests to one provider and reads responses under a size limit.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: &'static str,
    provider: Provider,
    credential: Credential,
    /// Headers sent when the client sent none of that name.
    default_headers: Vec<(&'static str, &'static str)>,
    /// Maximum wait for the next chunk of a streamed body.
    pub stream_idle_timeout: Duration,
    /// Maximum wait from sending a request to its response headers.
    pub first_byte_timeout: Duration,
    client: reqwest::Client,
    request_timeout: Duration,
    max_response_body_bytes: usize,
}

impl Upstream {
    pub fn new(
        name: &'static str,
        provider: Provider,
        client: reqwest::Client,
        request_timeout: Duration,
        max_response_body_bytes: usize,
    ) -> Upstream {
        Upstream {
            name,
            provider,
            credential: Credential::Bearer,
            default_headers: Vec::new(),
            stream_idle_timeout: request_timeout,
            first_byte_timeout: request_timeout,
            client,
            request_timeout,
            max_response_body_bytes,
        }
    }

    /// Sets how the provider key is sent.
    pub fn with_credential(mut self, credential: Credential) -> Upstream {
        self.credential = credential;
        self
    }

    /// Adds a header sent upstream when the client sent none of that name.
    pub fn with_default_header(mut self, name: &'static str, value: &'static str) -> Upstream {
        self.default_headers.push((name, value));
        self
    }

    /// Returns whether the sidecar sends its own credential to this upstream.
    pub fn has_credential(&self) -> bool {
        self.provider.api_key.is_some()
    }

    /// Base URL of the provider, for span attributes.
    pub fn base_url(&self) -> &reqwest::Url {
        &self.provider.base_url
    }

    /// Builds the provider URL for `path` (relative to the base URL, such as
    /// `chat/completions`) and the client's query string.
    fn url(&self, path: &str, query: Option<&str>) -> reqwest::Url {
        let mut url = self.provider.base_url.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}/{}", path.trim_start_matches('/')));
        url.set_query(query);
        url
    }

    /// Forwards a request and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        body: Option<Bytes>,
        metrics: &Metrics,
    ) -> Result<UpstreamResponse, ProxyError> {
        let started = Instant::now();
        let result = self
            .send_inner(method, path, query, client_headers, body)
            .await;
        metrics.record_upstream(self.name, "", &status_label(&result), started.elapsed());
        result
    }

    /// Forwards a request and reads the whole response, without recording metrics; the
    /// router records them with the model, and health checks count their own.
    pub async fn send_inner(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Result<UpstreamResponse, ProxyError> {
        let headers = self.upstream_headers(client_headers)?;
        let mut request = self
            .client
            .request(method, self.url(path, query))
            .headers(headers)
            .timeout(self.request_timeout);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = match tokio::time::timeout(self.first_byte_timeout, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(self.map_error(&error)),
            Err(_) => return Err(self.first_byte_timed_out()),
        };
        if response
            .content_length()
            .is_some_and(|length| length > self.max_response_body_bytes as u64)
        {
            return Err(ProxyError::UpstreamTooLarge {
                provider: self.name,
                limit_bytes: self.max_response_body_bytes,
            });
        }
        self.read_whole(response).await
    }

    /// Sends a request and returns as soon as the response headers arrive, for the
    /// caller to read the body as a stream. The request timeout covers the wait for the
    /// headers only; the caller applies an idle timeout between body chunks.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, ProxyError> {
        let mut request = self
            .client
            .request(method, self.url(path, query))
            .headers(self.upstream_headers(client_headers)?)
            .body(body);
        // Event streams must not be buffered or compressed on the way.
        request = request.header(header::ACCEPT, "text/event-stream");
        match tokio::time::timeout(self.first_byte_timeout, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(self.map_error(&error)),
            Err(_) => Err(self.first_byte_timed_out()),
        }
    }

    fn first_byte_timed_out(&self) -> ProxyError {
        tracing::warn!(
            provider = self.name,
            timeout_ms = self.first_byte_timeout.as_millis() as u64,
            "upstream sent no response headers in time"
        );
        ProxyError::UpstreamTimeout {
            provider: self.name,
            // Rounded up, so a sub-second timeout never reads as 0 s.
            timeout_secs: self.first_byte_timeout.as_secs_f64().ceil() as u64,
        }
    }

    /// Reads a response body whole under the size limit, for error responses and
    /// non-stream bodies.
    pub async fn read_whole(
        &self,
        response: reqwest::Response,
    ) -> Result<UpstreamResponse, ProxyError> {
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.map_error(&e))?;
            if body.len() + chunk.len() > self.max_response_body_bytes {
                return Err(ProxyError::UpstreamTooLarge {
                    provider: self.name,
                    limit_bytes: self.max_response_body_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamResponse {
            status,
            headers,
            body: Bytes::from(body),
        })
    }

    /// The headers sent upstream: the client's forwardable ones plus the sidecar's
    /// credential when it has one.
    fn upstream_headers(&self, client_headers: &HeaderMap) -> Result<HeaderMap, ProxyError> {
        let mut headers = forwardable_headers(client_headers);
        for (name, value) in &self.default_headers {
            if !headers.contains_key(*name) {
                headers.insert(*name, HeaderValue::from_static(value));
            }
        }
        let Some((key, _)) = &self.provider.api_key else {
            return Ok(headers);
        };
        let (name, value) = match self.credential {
            Credential::Bearer => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            Credential::Header(name) => {
                // The client's placeholder credential must not reach the provider
                // next to the sidecar's.
                headers.remove(header::AUTHORIZATION);
                (HeaderName::from_static(name), key.expose().to_owned())
            }
        };
        let mut value =
            HeaderValue::from_str(&value).map_err(|_| ProxyError::UpstreamUnavailable {
                provider: self.name,
                reason: "the configured API key contains characters not allowed in a header"
                    .to_owned(),
            })?;
        value.set_sensitive(true);
        headers.insert(name, value);
        Ok(headers)
    }

    fn map_error(&self, error: &reqwest::Error) -> ProxyError {
        if error.is_timeout() {
            return ProxyError::UpstreamTimeout {
                provider: self.name,
                timeout_secs: self.request_timeout.as_secs(),
            };
        }
        let reason = if error.is_connect() {
            "connection failed".to_owned()
        } else if error.is_body() || error.is_decode() {
            "the response body was cut off".to_owned()
        } else {
            "request failed".to_owned()
        };
        // An unreachable provider is an operator's problem, so it is logged at warn; the
        // error text names the URL, never the credential.
        tracing::warn!(provider = self.name, error = %error, "upstream request failed");
        ProxyError::UpstreamUnavailable {
            provider: self.name,
            reason,
        }
    }
}

/// Returns the `status` label of the upstream requests metric: the HTTP status code, or
/// the class of error when no response arrived.
pub fn status_label(result: &Result<UpstreamResponse, ProxyError>) -> String {
    match result {
        Ok(response) => response.status.as_u16().to_string(),
        Err(error) => error_label(error).to_owned(),
    }
}

/// Returns the `status` label for a request that failed without a response.
pub fn error_label(error: &ProxyError) -> &'static str {
    match error {
        ProxyError::UpstreamTimeout { .. } => "timeout",
        ProxyError::UpstreamUnavailable { .. } => "unavailable",
        _ => "error",
    }
}

/// Copies the client's headers, minus hop-by-hop and sidecar-only ones.
fn forwardable_headers(client_headers: &HeaderMap) -> HeaderMap {
    let mut headers = client_headers.clone();
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    for name in SIDECAR_HEADERS {
        headers.remove(*name);
    }
    // Headers named in Connection are hop-by-hop too.
    let listed: Vec<HeaderName> = client_headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    headers
}

/// Builds the shared client: rustls, connection pooling, the configured connect timeout.
pub fn build_client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom-hop"),
        );
        headers.insert("x-custom-hop", HeaderValue::from_static("1"));
        headers.insert("x-agent-conversation-id", HeaderValue::from_static("c1"));
        headers.insert("openai-organization", HeaderValue::from_static("org"));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let forwarded = forwardable_headers(&headers);
        assert!(forwarded.get("x-custom-hop").is_none());
        assert!(forwarded.get(header::CONNECTION).is_none());
        assert!(forwarded.get("x-agent-conversation-id").is_none());
        assert!(forwarded.get(header::ACCEPT_ENCODING).is_none());
        assert_eq!(
            forwarded.get("openai-organization").map(|v| v.as_bytes()),
            Some(&b"org"[..])
        );
    }

    #[test]
    fn url_joins_base_path() {
        let provider = Provider {
            base_url: reqwest::Url::parse("http://127.0.0.1:9/v1/").expect("url"),
            api_key: None,
        };
        let upstream = Upstream::new(
            "openai",
            provider,
            reqwest::Client::new(),
            Duration::from_secs(1),
            10,
        );
        assert_eq!(
            upstream
                .url("chat/completions", Some("api-version=1"))
                .as_str(),
            "http://127.0.0.1:9/v1/chat/completions?api-version=1"
        );
    }
}
