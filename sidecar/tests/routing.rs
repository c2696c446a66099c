//! Routing through the `agent-sidecar serve` binary with two stub upstreams on loopback:
//! fallback, retries with `Retry-After`, the circuit breaker, streams that fail after
//! they started, and what the probes report while upstreams are down.

mod support;

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use support::free_port;

/// One reply a stub upstream sends.
#[derive(Clone, Debug)]
enum Reply {
    /// 200 with a completion naming the model the request asked for.
    Completion,
    /// This status with an OpenAI-style error body and an optional `Retry-After`.
    Status(u16, Option<&'static str>),
    /// 200 event stream that sends one chunk and then breaks the connection.
    StreamThenBreak,
    /// 200 Anthropic Messages event stream with one text block, complete.
    AnthropicStream,
    /// A completion sent only after this many milliseconds.
    SlowCompletion(u64),
    /// 200 event stream that sends one chunk and then nothing for this many milliseconds.
    StreamThenStall(u64),
}

#[derive(Default)]
struct StubState {
    /// Replies sent first, in order; `default` after they run out.
    script: VecDeque<Reply>,
    default: Option<Reply>,
    /// Arrival time and JSON body of each request.
    hits: Vec<(Instant, Value)>,
    /// `GET /v1/models` requests received.
    model_listings: usize,
    /// Status code of `GET /v1/models` responses.
    models_status: u16,
}

/// A stub OpenAI-compatible upstream on a loopback port.
#[derive(Clone)]
struct Stub {
    state: Arc<Mutex<StubState>>,
    base_url: String,
}

impl Stub {
    async fn start(default: Reply) -> Stub {
        let state = Arc::new(Mutex::new(StubState {
            default: Some(default),
            models_status: 200,
            ..StubState::default()
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(reply))
            .route("/v1/models", get(list_models))
            .route("/v1/messages", post(anthropic_reply))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stub upstream");
        let address = listener.local_addr().expect("stub address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub {
            state,
            base_url: format!("http://{address}/v1"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.state.lock().expect("stub state")
    }

    fn script(&self, replies: &[Reply]) {
        self.lock().script.extend(replies.iter().cloned());
    }

    fn set_default(&self, reply: Reply) {
        self.lock().default = Some(reply);
    }

    fn model_listings(&self) -> usize {
        self.lock().model_listings
    }

    fn set_models_status(&self, status: u16) {
        self.lock().models_status = status;
    }

    fn hits(&self) -> usize {
        self.lock().hits.len()
    }

    fn hit_times(&self) -> Vec<Instant> {
        self.lock().hits.iter().map(|(at, _)| *at).collect()
    }

    fn models_received(&self) -> Vec<String> {
        self.lock()
            .hits
            .iter()
            .map(|(_, body)| body["model"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Answers `POST /v1/messages` like Anthropic: 200 with a message, or the scripted
/// status. Records the request body with the `x-api-key` header under `_x_api_key`.
async fn anthropic_reply(
    State(state): State<Arc<Mutex<StubState>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let mut request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    request["_x_api_key"] = json!(headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let reply = {
        let mut state = state.lock().expect("stub state");
        state.hits.push((Instant::now(), request));
        state
            .script
            .pop_front()
            .or_else(|| state.default.clone())
            .unwrap_or(Reply::Completion)
    };
    match reply {
        Reply::AnthropicStream => {
            let events = [
                ("message_start", json!({"type": "message_start", "message": {"id": "msg_stub", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 20, "output_tokens": 1}}})),
                ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "It shipped yesterday."}})),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}})),
                ("message_stop", json!({"type": "message_stop"})),
            ];
            let body: String = events
                .iter()
                .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
                .collect();
            ([("content-type", "text/event-stream")], body).into_response()
        }
        Reply::Status(status, _) => (
            axum::http::StatusCode::from_u16(status).expect("status code"),
            axum::Json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "stub failure"}})),
        )
            .into_response(),
        _ => axum::Json(json!({
            "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "It shipped yesterday."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 5}
        }))
        .into_response(),
    }
}

async fn list_models(State(state): State<Arc<Mutex<StubState>>>) -> Response {
    let status = {
        let mut state = state.lock().expect("stub state");
        state.model_listings += 1;
        state.models_status
    };
    (
        axum::http::StatusCode::from_u16(status).expect("status code"),
        axum::Json(json!({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})),
    )
        .into_response()
}

async fn reply(State(state): State<Arc<Mutex<StubState>>>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let reply = {
        let mut state = state.lock().expect("stub state");
        state.hits.push((Instant::now(), request));
        state
            .script
            .pop_front()
            .or_else(|| state.default.clone())
            .unwrap_or(Reply::Completion)
    };
    let reply = match reply {
        Reply::SlowCompletion(delay_ms) => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Reply::Completion
        }
        other => other,
    };
    match reply {
        Reply::StreamThenStall(stall_ms) => {
            let first = format!(
                "data: {}\n\n",
                json!({
                    "id": "chatcmpl-stub", "object": "chat.completion.chunk",
                    "created": 1_733_000_000, "model": model,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Your parcel "}, "finish_reason": null}]
                })
            );
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from(first)), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(stall_ms)).await;
                            Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .expect("stream response")
        }
        Reply::Completion | Reply::AnthropicStream | Reply::SlowCompletion(_) => axum::Json(json!({
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 1_733_000_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "It shipped yesterday.", "refusal": null},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
        }))
        .into_response(),
        Reply::Status(status, retry_after) => {
            let mut response = (
                axum::http::StatusCode::from_u16(status).expect("status code"),
                axum::Json(json!({"error": {"message": "stub failure", "type": "server_error", "code": null}})),
            )
                .into_response();
            if let Some(value) = retry_after {
                response.headers_mut().insert(
                    "retry-after",
                    axum::http::HeaderValue::from_static(value),
                );
            }
            response
        }
        Reply::StreamThenBreak => {
            let first = format!(
                "data: {}\n\n",
                json!({
                    "id": "chatcmpl-stub", "object": "chat.completion.chunk",
                    "created": 1_733_000_000, "model": model,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Your parcel "}, "finish_reason": null}]
                })
            );
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from(first)),
                Err(std::io::Error::other("stub breaks the stream")),
            ];
            let stream = futures_util::stream::iter(chunks);
            let stream = futures_util::StreamExt::then(stream, |item| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                item
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .expect("stream response")
        }
    }
}

/// The sidecar process, killed on drop.
struct Sidecar {
    child: Child,
    proxy: String,
    admin: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    async fn start(config: &str) -> Sidecar {
        Sidecar::start_with_env(config, &[]).await
    }

    async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Sidecar {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).expect("write config");
        let proxy = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
            .args(["serve", "--listen", &proxy, "--admin-listen", &admin])
            .args(["--grpc-listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&path)
            .env_remove("AGENT_SIDECAR_CONFIG")
            .env_remove("AGENT_SIDECAR_POLICY")
            .env_remove("AGENT_SIDECAR_OPENAI_UPSTREAM")
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sidecar starts");
        let sidecar = Sidecar {
            child,
            proxy: format!("http://{proxy}"),
            admin: format!("http://{admin}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("HTTP client"),
            _dir: dir,
        };
        sidecar.wait_live().await;
        sidecar
    }

    async fn wait_live(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(response) = self
                .client
                .get(format!("{}/livez", self.admin))
                .send()
                .await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sidecar did not answer /livez within 10 seconds");
    }

    async fn chat(&self, stream: bool) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.proxy))
            .header("content-type", "application/json")
            .body(
                json!({
                    "model": "gpt-4o-mini",
                    "stream": stream,
                    "messages": [{"role": "user", "content": "Where is my parcel?"}],
                })
                .to_string(),
            )
            .send()
            .await
            .expect("request reaches the sidecar")
    }

    async fn readyz(&self) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .expect("readyz answers");
        let status = response.status().as_u16();
        let body = response.text().await.expect("readyz body");
        (status, serde_json::from_str(&body).expect("readyz JSON"))
    }

    async fn livez(&self) -> u16 {
        self.client
            .get(format!("{}/livez", self.admin))
            .send()
            .await
            .expect("livez answers")
            .status()
            .as_u16()
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body")
    }
}

async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("response body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// Returns a base URL on a loopback port where nothing listens, so connections are refused.
fn refused_url() -> String {
    format!("http://127.0.0.1:{}/v1", free_port())
}

/// Two targets, `primary` then `backup`, for every model. `extra` appends settings.
fn two_targets(primary: &str, backup: &str, extra: &str) -> String {
    format!(
        "targets:
  - {{name: primary, dialect: openai, baseUrl: '{primary}'}}
  - {{name: backup, dialect: openai, baseUrl: '{backup}', model: backup-model}}
routes:
  - {{model: 'gpt-4o*', targets: [primary, backup]}}
{extra}"
    )
}

#[tokio::test]
async fn fallback_on_503() {
    let primary = Stub::start(Reply::Status(503, None)).await;
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 2, initialBackoffMs: 10}\n",
    ))
    .await;

    let response = sidecar.chat(false).await;
    assert_eq!(response.status(), 200);
    let body: Value = json_body(response).await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "It shipped yesterday."
    );
    assert_eq!(
        primary.hits(),
        2,
        "primary is tried twice before the fallback"
    );
    assert_eq!(backup.hits(), 1);
    assert_eq!(
        backup.models_received(),
        ["backup-model"],
        "backup rewrites the model"
    );
    assert_eq!(primary.models_received()[0], "gpt-4o-mini");

    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(
            r#"agent_sidecar_upstream_requests_total{target="primary",model="gpt-4o-mini",status="503"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"agent_sidecar_upstream_requests_total{target="backup",model="backup-model",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"agent_sidecar_upstream_fallbacks_total{target="primary",reason="failed"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn fallback_on_refused_connection() {
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &refused_url(),
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 1}\n",
    ))
    .await;

    let response = sidecar.chat(false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(backup.hits(), 1);
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(ready["targets"]["primary"]["failures"], 1, "{ready}");
    assert_eq!(
        ready["targets"]["primary"]["lastError"], "unavailable",
        "{ready}"
    );
    assert_eq!(ready["targets"]["backup"]["state"], "ok", "{ready}");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let primary = Stub::start(Reply::Completion).await;
    primary.script(&[Reply::Status(429, Some("1"))]);
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 2, initialBackoffMs: 10, maxRetryAfterMs: 5000}\n",
    ))
    .await;

    let response = sidecar.chat(false).await;
    assert_eq!(response.status(), 200);
    let times = primary.hit_times();
    assert_eq!(times.len(), 2, "the same target is retried after the 429");
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_secs(1),
        "retry came {gap:?} after the 429, before its Retry-After of 1 s"
    );
    assert!(gap < Duration::from_secs(3), "retry waited {gap:?}");
    assert_eq!(backup.hits(), 0, "no fallback when the retry succeeds");
}

#[tokio::test]
async fn long_retry_after_falls_back_at_once() {
    let primary = Stub::start(Reply::Status(429, Some("120"))).await;
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 3, maxRetryAfterMs: 2000}\n",
    ))
    .await;

    let started = Instant::now();
    let response = sidecar.chat(false).await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 1);
}

#[tokio::test]
async fn last_target_429_reaches_the_client() {
    let primary = Stub::start(Reply::Status(429, Some("120"))).await;
    let sidecar = Sidecar::start(&format!(
        "targets:
  - {{name: primary, dialect: openai, baseUrl: '{}'}}
routes:
  - {{model: '*', targets: [primary]}}
",
        primary.base_url
    ))
    .await;

    let response = sidecar.chat(false).await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("120"),
        "the provider's Retry-After reaches the client"
    );
}

#[tokio::test]
async fn breaker_opens_and_half_opens() {
    let primary = Stub::start(Reply::Status(503, None)).await;
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 1}
circuitBreaker: {consecutiveFailures: 2, cooldownSecs: 1}
",
    ))
    .await;

    for _ in 0..2 {
        assert_eq!(sidecar.chat(false).await.status(), 200);
    }
    assert_eq!(primary.hits(), 2);
    let (status, ready) = sidecar.readyz().await;
    assert_eq!(
        status, 200,
        "models are not required, so the pod stays ready"
    );
    assert_eq!(ready["targets"]["primary"]["breaker"], "open", "{ready}");
    assert_eq!(ready["targets"]["primary"]["state"], "down", "{ready}");
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(r#"agent_sidecar_upstream_circuit_breaker_open{target="primary"} 1"#),
        "{metrics}"
    );

    assert_eq!(sidecar.chat(false).await.status(), 200);
    assert_eq!(primary.hits(), 2, "an open breaker skips the target");
    assert_eq!(backup.hits(), 3);

    primary.set_default(Reply::Completion);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(
        ready["targets"]["primary"]["breaker"], "half_open",
        "{ready}"
    );

    assert_eq!(sidecar.chat(false).await.status(), 200);
    assert_eq!(primary.hits(), 3, "the probe request goes to the primary");
    assert_eq!(backup.hits(), 3);
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(ready["targets"]["primary"]["breaker"], "closed", "{ready}");
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(r#"agent_sidecar_upstream_circuit_breaker_open{target="primary"} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn failed_probe_reopens_the_breaker() {
    let primary = Stub::start(Reply::Status(500, None)).await;
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 1}
circuitBreaker: {consecutiveFailures: 1, cooldownSecs: 1}
",
    ))
    .await;

    assert_eq!(sidecar.chat(false).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(sidecar.chat(false).await.status(), 200);
    assert_eq!(primary.hits(), 2, "one request, then one probe");
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(ready["targets"]["primary"]["breaker"], "open", "{ready}");
    assert_eq!(sidecar.chat(false).await.status(), 200);
    assert_eq!(primary.hits(), 2, "the reopened breaker skips the target");
}

#[tokio::test]
async fn no_retry_after_stream_started() {
    let primary = Stub::start(Reply::StreamThenBreak).await;
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 3, initialBackoffMs: 10}\n",
    ))
    .await;

    let response = sidecar.chat(true).await;
    assert_eq!(response.status(), 200, "the stream started");
    let body = response.text().await.expect("stream body");
    assert!(body.contains("Your parcel"), "{body}");
    assert!(body.contains("upstream_unavailable"), "{body}");
    assert!(!body.contains("It shipped"), "{body}");
    assert_eq!(primary.hits(), 1, "a started stream is not retried");
    assert_eq!(backup.hits(), 0, "a started stream does not fall back");
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(ready["targets"]["primary"]["failures"], 1, "{ready}");
}

#[tokio::test]
async fn stream_falls_back_before_it_starts() {
    let primary = Stub::start(Reply::Status(502, None)).await;
    let backup = Stub::start(Reply::StreamThenBreak).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 1}\n",
    ))
    .await;

    let response = sidecar.chat(true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("stream body");
    assert!(body.contains("Your parcel"), "{body}");
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 1);
}

#[tokio::test]
async fn probes_while_every_upstream_is_down() {
    let sidecar = Sidecar::start(&two_targets(
        &refused_url(),
        &refused_url(),
        "retry: {maxAttemptsPerTarget: 1}
circuitBreaker: {consecutiveFailures: 1, cooldownSecs: 60}
",
    ))
    .await;

    let failed = sidecar.chat(false).await;
    assert_eq!(
        failed.status(),
        502,
        "the last target's error reaches the client"
    );
    let skipped = sidecar.chat(false).await;
    assert_eq!(skipped.status(), 503);
    let body: Value = json_body(skipped).await;
    assert_eq!(body["error"]["code"], "no_upstream_available", "{body}");

    assert_eq!(sidecar.livez().await, 200, "liveness ignores upstreams");
    let (status, ready) = sidecar.readyz().await;
    assert_eq!(status, 200, "no model is required, so the pod stays ready");
    for target in ["primary", "backup"] {
        assert_eq!(ready["targets"][target]["state"], "down", "{ready}");
        assert_eq!(ready["targets"][target]["breaker"], "open", "{ready}");
        assert_eq!(ready["targets"][target]["errorRate"], 1.0, "{ready}");
    }
}

#[tokio::test]
async fn required_model_gates_readiness() {
    let primary = Stub::start(Reply::Status(503, None)).await;
    let sidecar = Sidecar::start(&format!(
        "targets:
  - {{name: primary, dialect: openai, baseUrl: '{}'}}
routes:
  - {{model: 'gpt-4o*', targets: [primary]}}
retry: {{maxAttemptsPerTarget: 1}}
circuitBreaker: {{consecutiveFailures: 1, cooldownSecs: 1}}
readiness: {{requireModels: [gpt-4o-mini]}}
",
        primary.base_url
    ))
    .await;

    let (status, ready) = sidecar.readyz().await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["models"]["gpt-4o-mini"]["status"], "ok");
    assert_eq!(ready["targets"]["primary"]["state"], "unknown", "{ready}");

    assert_eq!(sidecar.chat(false).await.status(), 503);
    let (status, ready) = sidecar.readyz().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(
        ready["checks"]["models"]["gpt-4o-mini"]["status"], "unavailable",
        "{ready}"
    );
    assert_eq!(sidecar.livez().await, 200);

    primary.set_default(Reply::Completion);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, _) = sidecar.readyz().await;
    assert_eq!(
        status, 200,
        "a half-open breaker lets the model count as available"
    );
    assert_eq!(sidecar.chat(false).await.status(), 200);
}

#[tokio::test]
async fn unrouted_model_is_not_found() {
    let primary = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&format!(
        "targets:
  - {{name: primary, dialect: openai, baseUrl: '{}'}}
routes:
  - {{model: 'claude-*', targets: [primary]}}
",
        primary.base_url
    ))
    .await;

    let response = sidecar.chat(false).await;
    assert_eq!(response.status(), 404);
    let body: Value = json_body(response).await;
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    assert_eq!(primary.hits(), 0);
}

#[tokio::test]
async fn invalid_routing_config_lists_every_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "targets:
  - {name: 'bad name', dialect: openai, baseUrl: 'ftp://x'}
  - {name: ok, dialect: openai, baseUrl: 'http://127.0.0.1:9/v1', credential: {env: NO_SUCH_VARIABLE_FOR_TEST}}
routes:
  - {model: 'gpt-*', targets: [missing]}
circuitBreaker: {failureRatio: 2}
",
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env_remove("NO_SUCH_VARIABLE_FOR_TEST")
        .output()
        .expect("sidecar runs");
    assert_eq!(output.status.code(), Some(2), "usage error exit code");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "targets[0].name: invalid name",
        "targets[0].baseUrl: invalid URL",
        "targets[1].credential.env: environment variable NO_SUCH_VARIABLE_FOR_TEST is not set",
        "routes[0].targets[0]: no valid target named \"missing\"",
        "circuitBreaker.failureRatio",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
}

#[tokio::test]
async fn active_checks_close_an_idle_breaker() {
    let primary = Stub::start(Reply::Status(503, None)).await;
    primary.set_models_status(503);
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&two_targets(
        &primary.base_url,
        &backup.base_url,
        "retry: {maxAttemptsPerTarget: 1}
circuitBreaker: {consecutiveFailures: 1, cooldownSecs: 1}
healthChecks: {intervalSecs: 1, timeoutMs: 500}
",
    ))
    .await;

    assert_eq!(sidecar.chat(false).await.status(), 200);
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(ready["targets"]["primary"]["breaker"], "open", "{ready}");

    // Checks of the still failing target keep its breaker open.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(primary.model_listings() >= 1, "the idle target was checked");
    let (_, ready) = sidecar.readyz().await;
    assert_ne!(ready["targets"]["primary"]["breaker"], "closed", "{ready}");

    primary.set_models_status(200);
    primary.set_default(Reply::Completion);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, ready) = sidecar.readyz().await;
        if ready["targets"]["primary"]["breaker"] == "closed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "breaker still not closed: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        primary.hits(),
        1,
        "only checks reached the primary, no client request"
    );
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(
            r#"agent_sidecar_upstream_health_checks_total{target="primary",outcome="success"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"agent_sidecar_upstream_health_checks_total{target="primary",outcome="failure"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn anthropic_messages_fall_back() {
    let primary = Stub::start(Reply::Status(529, None)).await;
    let backup = Stub::start(Reply::Completion).await;
    let root = |stub: &Stub| stub.base_url.trim_end_matches("/v1").to_owned();
    let sidecar = Sidecar::start_with_env(
        &format!(
            "targets:
  - {{name: claude-primary, dialect: anthropic, baseUrl: '{}'}}
  - {{name: claude-backup, dialect: anthropic, baseUrl: '{}', credential: {{env: ROUTING_TEST_ANTHROPIC_KEY}}}}
routes:
  - {{model: 'claude-*', targets: [claude-primary, claude-backup]}}
retry: {{maxAttemptsPerTarget: 1}}
",
            root(&primary),
            root(&backup)
        ),
        &[("ROUTING_TEST_ANTHROPIC_KEY", "sk-ant-routing-test")],
    )
    .await;

    let response = sidecar
        .client
        .post(format!("{}/v1/messages", sidecar.proxy))
        .header("content-type", "application/json")
        .header("x-api-key", "client-placeholder")
        .header("anthropic-version", "2023-06-01")
        .body(
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "Where is my parcel?"}],
            })
            .to_string(),
        )
        .send()
        .await
        .expect("request reaches the sidecar");
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(
        body["content"][0]["text"], "It shipped yesterday.",
        "{body}"
    );
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 1);
    let received = backup.lock().hits[0].1.clone();
    assert_eq!(
        received["_x_api_key"], "sk-ant-routing-test",
        "the backup gets the sidecar's key, not the client's"
    );
    let primary_received = primary.lock().hits[0].1.clone();
    assert_eq!(
        primary_received["_x_api_key"], "client-placeholder",
        "a target without a credential gets the client's key"
    );
}

#[tokio::test]
async fn anthropic_stream_falls_back_before_start() {
    let primary = Stub::start(Reply::Status(503, None)).await;
    let backup = Stub::start(Reply::AnthropicStream).await;
    let root = |stub: &Stub| stub.base_url.trim_end_matches("/v1").to_owned();
    let sidecar = Sidecar::start(&format!(
        "targets:
  - {{name: claude-primary, dialect: anthropic, baseUrl: '{}'}}
  - {{name: claude-backup, dialect: anthropic, baseUrl: '{}'}}
routes:
  - {{model: 'claude-*', targets: [claude-primary, claude-backup]}}
retry: {{maxAttemptsPerTarget: 1}}
",
        root(&primary),
        root(&backup)
    ))
    .await;

    let response = sidecar
        .client
        .post(format!("{}/v1/messages", sidecar.proxy))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 64,
                "stream": true,
                "messages": [{"role": "user", "content": "Where is my parcel?"}],
            })
            .to_string(),
        )
        .send()
        .await
        .expect("request reaches the sidecar");
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("stream body");
    // The streaming guard may release the text in several deltas.
    assert!(body.contains("yesterday."), "{body}");
    assert!(body.contains("message_stop"), "{body}");
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 1);
}

#[tokio::test]
async fn first_byte_timeout_falls_back() {
    let primary = Stub::start(Reply::SlowCompletion(2_000)).await;
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&format!(
        "targets:
  - {{name: primary, dialect: openai, baseUrl: '{}', firstByteTimeoutMs: 300}}
  - {{name: backup, dialect: openai, baseUrl: '{}'}}
routes:
  - {{model: 'gpt-4o*', targets: [primary, backup]}}
retry: {{maxAttemptsPerTarget: 1}}
",
        primary.base_url, backup.base_url
    ))
    .await;

    let started = Instant::now();
    let response = sidecar.chat(false).await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "the primary's slow reply was not awaited: {:?}",
        started.elapsed()
    );
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 1);
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(
        ready["targets"]["primary"]["lastError"], "timeout",
        "{ready}"
    );
}

#[tokio::test]
async fn stream_idle_timeout_ends_the_stream() {
    let primary = Stub::start(Reply::StreamThenStall(3_000)).await;
    let backup = Stub::start(Reply::Completion).await;
    let sidecar = Sidecar::start(&format!(
        "targets:
  - {{name: primary, dialect: openai, baseUrl: '{}', streamIdleTimeoutMs: 400}}
  - {{name: backup, dialect: openai, baseUrl: '{}'}}
routes:
  - {{model: 'gpt-4o*', targets: [primary, backup]}}
",
        primary.base_url, backup.base_url
    ))
    .await;

    let started = Instant::now();
    let response = sidecar.chat(true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("stream body");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the stall was not cut at the idle timeout: {:?}",
        started.elapsed()
    );
    assert!(body.contains("upstream_timeout"), "{body}");
    assert!(!body.contains("[DONE]"), "{body}");
    assert_eq!(backup.hits(), 0, "a started stream does not fall back");
    let (_, ready) = sidecar.readyz().await;
    assert_eq!(
        ready["targets"]["primary"]["lastError"], "stream idle timeout",
        "{ready}"
    );
}
