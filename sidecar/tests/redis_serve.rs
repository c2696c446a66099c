//! The `agent-sidecar serve` binary with `--redis-url`, against a `redis-server` and a
//! stub OpenAI upstream that the test starts on loopback: it keeps serving while Redis
//! is down, and the turns it accepted meanwhile reach Redis once it is back.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use support::{RedisServer, free_port};

const COMPLETION: &str = r#"{"id":"chatcmpl-test","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"It shipped yesterday.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25}}"#;

/// The sidecar process, killed on drop.
struct Sidecar {
    child: Child,
    proxy: String,
    admin: String,
}

impl Sidecar {
    fn start(upstream: &str, redis_url: &str) -> Sidecar {
        let proxy = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
            .args(["serve", "--listen", &proxy, "--admin-listen", &admin])
            .args(["--grpc-listen", "127.0.0.1:0"])
            .args(["--openai-upstream", upstream, "--redis-url", redis_url])
            .env_remove("AGENT_SIDECAR_CONFIG")
            .env_remove("AGENT_SIDECAR_POLICY")
            .env_remove("OPENAI_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sidecar starts");
        Sidecar {
            child,
            proxy: format!("http://{proxy}"),
            admin: format!("http://{admin}"),
        }
    }
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

/// Polls `url` until it returns 200, for at most `limit`; returns the time it took.
async fn wait_ok(client: &reqwest::Client, url: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(response) = client.get(url).send().await
            && response.status() == 200
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} did not return 200 within {limit:?}");
}

async fn chat(client: &reqwest::Client, sidecar: &Sidecar, question: &str) -> reqwest::StatusCode {
    client
        .post(format!("{}/v1/chat/completions", sidecar.proxy))
        .header("x-agent-conversation-id", "serve-conv")
        .header("authorization", "Bearer test")
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": question}],
            })
            .to_string(),
        )
        .send()
        .await
        .expect("sidecar answers")
        .status()
}

async fn stored_turns(url: &str) -> Option<i64> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("LLEN")
        .arg("agent-sidecar:{serve-conv}:turns")
        .query_async(&mut connection)
        .await
        .ok()
}

#[tokio::test]
async fn serving_continues_through_a_redis_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut redis = RedisServer::start(dir.path(), &[]);
    let upstream = start_upstream().await;
    let sidecar = Sidecar::start(&upstream, &redis.url());
    let client = reqwest::Client::new();
    wait_ok(
        &client,
        &format!("{}/startupz", sidecar.admin),
        Duration::from_secs(10),
    )
    .await;

    assert_eq!(chat(&client, &sidecar, "where is my order?").await, 200);
    assert_eq!(stored_turns(&redis.url()).await, Some(1));

    redis.kill();
    assert_eq!(chat(&client, &sidecar, "and now?").await, 200);
    assert_eq!(chat(&client, &sidecar, "still there?").await, 200);
    let livez = client
        .get(format!("{}/livez", sidecar.admin))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(livez.status(), 200, "liveness does not depend on Redis");
    let readyz = client
        .get(format!("{}/readyz", sidecar.admin))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(
        readyz.status(),
        200,
        "a degraded store still serves, so the pod stays ready"
    );
    let detail: serde_json::Value =
        serde_json::from_str(&readyz.text().await.expect("readyz body")).expect("readyz JSON");
    assert_eq!(detail["checks"]["store"]["status"], "degraded", "{detail}");
    assert!(
        detail["checks"]["store"]["bufferedTurns"].as_u64() >= Some(1),
        "turns queue while Redis is down: {detail}"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut turns = None;
    while Instant::now() < deadline {
        turns = stored_turns(&redis.url()).await;
        if turns == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        turns,
        Some(3),
        "the turns served during the outage reach Redis"
    );
}

#[tokio::test]
async fn unreachable_redis_does_not_delay_start() {
    // Nothing listens on this port, so every connection attempt is refused.
    let redis_url = format!("redis://127.0.0.1:{}", free_port());
    let upstream = start_upstream().await;
    let sidecar = Sidecar::start(&upstream, &redis_url);
    let client = reqwest::Client::new();
    let took = wait_ok(
        &client,
        &format!("{}/startupz", sidecar.admin),
        Duration::from_secs(10),
    )
    .await;
    assert!(took < Duration::from_secs(5), "started in {took:?}");
    wait_ok(
        &client,
        &format!("{}/livez", sidecar.admin),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(chat(&client, &sidecar, "hello?").await, 200);
}
