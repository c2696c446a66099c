//! The route table: model name to an ordered list of targets, and the dispatch loop that
//! retries a target with backoff, honours `Retry-After`, skips targets whose circuit
//! breaker is open and falls back to the next target.
//!
//! A response is handed to the caller, and never retried, once it is a success, a client
//! error, or the headers of an event stream: from then on bytes may reach the client.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use globset::GlobMatcher;
use serde_json::Value;

use super::error::ProxyError;
use super::retry::{self, Class};
use super::upstream::{self, Credential, Upstream, UpstreamResponse};
use crate::config::Config;
use crate::config::routing::{Dialect, RetryConfig, is_glob};
use crate::health::breaker::BreakerStatus;
use crate::health::target::{Permit, TargetHealth};
use crate::telemetry::metrics::Metrics;

/// One upstream a route can send to, with its health.
#[derive(Debug)]
pub struct Target {
    pub name: &'static str,
    pub dialect: Dialect,
    pub upstream: Upstream,
    /// Model name sent in place of the client's.
    pub model: Option<String>,
    pub health: Arc<TargetHealth>,
}

impl Target {
    /// Returns the body to send to this target: the client's, with the model replaced
    /// when the target rewrites it.
    fn body_for(&self, body: &Bytes) -> Bytes {
        let Some(model) = &self.model else {
            return body.clone();
        };
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(mut object)) => {
                object.insert("model".to_owned(), Value::String(model.clone()));
                serde_json::to_vec(&object).map_or_else(|_| body.clone(), Bytes::from)
            }
            _ => body.clone(),
        }
    }

    /// Returns the model label for metrics: the rewritten name, else the client's.
    fn sent_model<'a>(&'a self, requested: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(requested)
    }
}

#[derive(Debug)]
struct ModelPattern {
    text: String,
    glob: Option<GlobMatcher>,
}

impl ModelPattern {
    fn matches(&self, model: &str) -> bool {
        match &self.glob {
            Some(glob) => glob.is_match(model),
            None => self.text == model,
        }
    }
}

#[derive(Debug)]
struct Route {
    pattern: ModelPattern,
    dialect: Dialect,
    targets: Vec<Arc<Target>>,
}

/// Every route and target of the sidecar.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    targets: Vec<Arc<Target>>,
    retry: RetryConfig,
    /// Models `/readyz` requires an available target for.
    pub required_models: Vec<String>,
}

/// A request to send through a route.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub method: &'a Method,
    /// Path relative to the target's base URL, such as `chat/completions`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    /// Whether to return at the response headers, so the caller can stream the body.
    pub stream: bool,
}

/// A target's response, read whole or with only its headers read.
#[derive(Debug)]
pub enum Opened {
    Whole(UpstreamResponse),
    /// Headers only; the caller reads the body. A 2xx event stream, or a client error
    /// for a streamed call.
    Headers(reqwest::Response),
}

/// The response and the target that produced it.
#[derive(Debug)]
pub struct Routed {
    pub target: Arc<Target>,
    pub response: Opened,
}

/// The outcome of one attempt.
enum Attempt {
    /// Hand this to the caller.
    Done(Result<Opened, ProxyError>),
    /// Worth another attempt. The result is returned if no later attempt succeeds.
    Retry {
        last_result: Result<Opened, ProxyError>,
        retry_after: Option<Duration>,
        reason: &'static str,
    },
}

impl RouteTable {
    /// Builds targets and routes from the configuration. Each target gets its own HTTP
    /// client, because the connect timeout is a client setting.
    pub fn build(config: &Config) -> Result<RouteTable, String> {
        let routing = &config.routing;
        let mut targets = Vec::with_capacity(routing.targets.len());
        for target in &routing.targets {
            let client = upstream::build_client(target.connect_timeout)
                .map_err(|e| format!("cannot build the HTTP client for {}: {e}", target.name))?;
            // Names live as long as the process, like the configuration they come from;
            // errors and metrics take them as `&'static str`.
            let name: &'static str = Box::leak(target.name.clone().into_boxed_str());
            let mut upstream = Upstream::new(
                name,
                target.provider.clone(),
                client,
                config.request_timeout,
                config.max_response_body_bytes,
            );
            if target.dialect == Dialect::Anthropic {
                upstream = upstream
                    .with_credential(Credential::Header("x-api-key"))
                    .with_default_header(
                        "anthropic-version",
                        crate::dialect::anthropic::DEFAULT_VERSION,
                    );
            }
            upstream.first_byte_timeout = target.first_byte_timeout;
            upstream.stream_idle_timeout = target.stream_idle_timeout;
            targets.push(Arc::new(Target {
                name,
                dialect: target.dialect,
                upstream,
                model: target.model.clone(),
                health: TargetHealth::new(name, routing.breaker.clone()),
            }));
        }
        let mut routes = Vec::with_capacity(routing.routes.len());
        for route in &routing.routes {
            let glob = if is_glob(&route.model) {
                let glob = globset::Glob::new(&route.model)
                    .map_err(|e| format!("invalid route model {:?}: {e}", route.model))?;
                Some(glob.compile_matcher())
            } else {
                None
            };
            routes.push(Route {
                pattern: ModelPattern {
                    text: route.model.clone(),
                    glob,
                },
                dialect: route.dialect,
                targets: route.targets.iter().map(|&i| targets[i].clone()).collect(),
            });
        }
        Ok(RouteTable {
            routes,
            targets,
            retry: routing.retry.clone(),
            required_models: routing.require_models.clone(),
        })
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Returns the targets of the first route of `dialect` that matches `model`.
    pub fn resolve(&self, dialect: Dialect, model: &str) -> Option<&[Arc<Target>]> {
        self.routes
            .iter()
            .find(|route| route.dialect == dialect && route.pattern.matches(model))
            .map(|route| route.targets.as_slice())
    }

    /// Returns whether the first route that matches `model`, in table order, has a
    /// target whose breaker accepts traffic. Configured routes come before the provider
    /// catch-alls, so a model named in a route is judged by that route.
    pub fn model_available(&self, model: &str) -> bool {
        self.routes
            .iter()
            .find(|route| route.pattern.matches(model))
            .is_some_and(|route| {
                route
                    .targets
                    .iter()
                    .any(|target| target.health.breaker_status() != BreakerStatus::Open)
            })
    }

    /// Copies every target's breaker state and moving averages into the metrics.
    pub fn export_health(&self, metrics: &Metrics) {
        for target in &self.targets {
            let open = target.health.breaker_status() != BreakerStatus::Closed;
            let (error_rate, latency) = target.health.averages();
            metrics.set_target_health(target.name, open, error_rate, latency);
        }
    }

    /// Sends `call` for `model` through its route: each target in order, each up to
    /// `retry.maxAttemptsPerTarget` times. Returns the first response to hand on, or the
    /// last failure when every attempt failed.
    pub async fn dispatch(
        &self,
        metrics: &Metrics,
        dialect: Dialect,
        model: &str,
        call: Call<'_>,
    ) -> Result<Routed, ProxyError> {
        let targets = self
            .resolve(dialect, model)
            .ok_or_else(|| ProxyError::NoRoute {
                model: model.to_owned(),
            })?;
        let mut last: Option<(Arc<Target>, Result<Opened, ProxyError>)> = None;
        for target in targets {
            let mut attempt = 0;
            loop {
                let Some(permit) = target.health.acquire() else {
                    metrics.record_fallback(target.name, "breaker_open");
                    tracing::debug!(
                        target.name = target.name,
                        "skipping target with open circuit breaker"
                    );
                    break;
                };
                let (last_result, retry_after, reason) =
                    match self.attempt(metrics, target, model, call, permit).await {
                        Attempt::Done(result) => {
                            return result.map(|response| Routed {
                                target: target.clone(),
                                response,
                            });
                        }
                        Attempt::Retry {
                            last_result,
                            retry_after,
                            reason,
                        } => (last_result, retry_after, reason),
                    };
                last = Some((target.clone(), last_result));
                attempt += 1;
                if attempt >= self.retry.max_attempts_per_target {
                    metrics.record_fallback(target.name, "failed");
                    break;
                }
                if retry_after.is_some_and(|asked| asked > self.retry.max_retry_after) {
                    metrics.record_fallback(target.name, "retry_after_too_long");
                    break;
                }
                let wait = retry::delay(&self.retry, attempt - 1, retry_after);
                metrics.record_retry(target.name, reason);
                tracing::info!(
                    target.name = target.name,
                    reason,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "retrying upstream request"
                );
                tokio::time::sleep(wait).await;
            }
        }
        match last {
            Some((target, result)) => result.map(|response| Routed { target, response }),
            None => Err(ProxyError::NoTargetAvailable {
                model: model.to_owned(),
                targets: targets
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    async fn attempt(
        &self,
        metrics: &Metrics,
        target: &Target,
        model: &str,
        call: Call<'_>,
        permit: Permit,
    ) -> Attempt {
        let started = Instant::now();
        let body = target.body_for(call.body);
        let upstream = &target.upstream;
        let result = if call.stream {
            upstream
                .open(
                    call.method.clone(),
                    call.path,
                    call.query,
                    call.headers,
                    body,
                )
                .await
                .map(Opened::Headers)
        } else {
            upstream
                .send_inner(
                    call.method.clone(),
                    call.path,
                    call.query,
                    call.headers,
                    Some(body),
                )
                .await
                .map(Opened::Whole)
        };
        let sent_model = target.sent_model(model);
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let label = upstream::error_label(&error);
                metrics.record_upstream(target.name, sent_model, label, started.elapsed());
                return match &error {
                    ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamUnavailable { .. } => {
                        permit.failure(label);
                        Attempt::Retry {
                            last_result: Err(error),
                            retry_after: None,
                            reason: label,
                        }
                    }
                    _ => {
                        permit.failure(label);
                        Attempt::Done(Err(error))
                    }
                };
            }
        };
        let (status, headers) = match &response {
            Opened::Whole(whole) => (whole.status, &whole.headers),
            Opened::Headers(response) => (response.status(), response.headers()),
        };
        metrics.record_upstream(target.name, sent_model, status.as_str(), started.elapsed());
        match retry::classify_status(status) {
            Class::Success | Class::ClientError => {
                permit.success();
                Attempt::Done(Ok(response))
            }
            Class::Retryable => {
                let retry_after = retry::retry_after(headers, SystemTime::now());
                let reason = if status.as_u16() == 429 {
                    "rate_limited"
                } else {
                    "server_error"
                };
                permit.failure(&format!("status {}", status.as_u16()));
                // A streamed error response is read whole now: it is small, and the
                // connection must be free before the next attempt.
                let last_result = match response {
                    Opened::Headers(response) => {
                        upstream.read_whole(response).await.map(Opened::Whole)
                    }
                    whole => Ok(whole),
                };
                Attempt::Retry {
                    last_result,
                    retry_after,
                    reason,
                }
            }
        }
    }
}
