//! A minimal OpenAI-compatible upstream for benchmarks: answers every
//! `POST /v1/chat/completions` with the same small completion, as fast as axum can, so
//! that a load test through the sidecar measures the sidecar and not the upstream.
//!
//! Usage: `cargo run --release -p agent-sidecar --example stub_upstream -- 127.0.0.1:18090`

use axum::Router;
use axum::routing::post;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Your order AB-1234567 shipped yesterday and should arrive on Friday.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":512,"completion_tokens":16,"total_tokens":528}}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".to_owned());
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async { ([("content-type", "application/json")], COMPLETION) }),
    );
    let listener = tokio::net::TcpListener::bind(&address).await?;
    axum::serve(listener, app).await
}
