//! The `agent-sidecar serve` binary with a Redis URL that nothing listens on: once the
//! outage buffer is full, a policy with `onStoreFull: failClosed` makes the proxy reject
//! new requests with 503 in OpenAI's error shape.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use support::free_port;

const COMPLETION: &str = r#"{"id":"chatcmpl-test","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"It shipped yesterday.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25}}"#;

const POLICY: &str = "apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata: {name: fail-closed}
spec:
  conversation: {onStoreFull: failClosed}
";

/// One buffered turn fills the buffer, so the second request sees it full.
const CONFIG: &str =
    "store: {outageBufferTurns: 1}\nredis: {connectTimeoutMs: 200, commandTimeoutMs: 200}\n";

/// The sidecar process, killed on drop.
struct Sidecar {
    child: Child,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_upstream() -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async { ([("content-type", "application/json")], COMPLETION) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stub upstream");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}/v1")
}

async fn wait_ok(client: &reqwest::Client, url: &str, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(response) = client.get(url).send().await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} did not return 200 within {limit:?}");
}

async fn chat(client: &reqwest::Client, proxy: &str) -> reqwest::Response {
    client
        .post(format!("{proxy}/v1/chat/completions"))
        .header("x-agent-conversation-id", "conv-full")
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Where is my parcel?"}],
            })
            .to_string(),
        )
        .send()
        .await
        .expect("request reaches the sidecar")
}

#[tokio::test]
async fn full_buffer_rejects_when_fail_closed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let policy = dir.path().join("policy.yaml");
    let config = dir.path().join("config.yaml");
    std::fs::write(&policy, POLICY).expect("write policy");
    std::fs::write(&config, CONFIG).expect("write config");
    let upstream = start_upstream().await;
    let proxy = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let closed_redis = format!("redis://127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["serve", "--listen", &proxy, "--admin-listen", &admin])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .args(["--openai-upstream", &upstream, "--redis-url", &closed_redis])
        .arg("--config")
        .arg(&config)
        .arg("--policy")
        .arg(&policy)
        .env_remove("AGENT_SIDECAR_CONFIG")
        .env_remove("AGENT_SIDECAR_POLICY")
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sidecar starts");
    let _sidecar = Sidecar { child };
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    wait_ok(
        &client,
        &format!("http://{admin}/livez"),
        Duration::from_secs(10),
    )
    .await;
    let proxy = format!("http://{proxy}");

    let readyz = format!("http://{admin}/readyz");
    let before = client.get(&readyz).send().await.expect("readyz answers");
    // The store learns that Redis is down on its first write, so it reports ok until then.
    assert_eq!(
        before.status(),
        200,
        "a store that accepts requests keeps the pod ready"
    );

    let first = chat(&client, &proxy).await;
    assert_eq!(first.status(), 200, "the first turn fits the buffer");

    let full = client.get(&readyz).send().await.expect("readyz answers");
    assert_eq!(
        full.status(),
        503,
        "a store rejecting requests takes the pod out"
    );
    let detail: serde_json::Value =
        serde_json::from_str(&full.text().await.expect("readyz body")).expect("readyz JSON");
    assert_eq!(detail["checks"]["store"]["status"], "rejecting", "{detail}");
    assert_eq!(detail["checks"]["store"]["bufferFull"], true, "{detail}");
    let live = client
        .get(format!("http://{admin}/livez"))
        .send()
        .await
        .expect("livez answers");
    assert_eq!(live.status(), 200, "liveness never depends on the store");

    let second = chat(&client, &proxy).await;
    assert_eq!(second.status(), 503);
    let text = second.text().await.expect("error body");
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
    assert_eq!(body["error"]["code"], "conversation_store_unavailable");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("outage buffer is full")),
        "{body}"
    );
}
