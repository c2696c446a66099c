//! An `agent-sidecar serve` process with its gRPC API on a free loopback port (or a Unix
//! socket), a test policy, and tonic clients generated from the same protos.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use agent_sidecar::grpc::proto;

/// A policy that exercises every kind of rule the gRPC API reports.
pub const POLICY: &str = r#"
apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata:
  name: grpc-test
spec:
  onBlock:
    response: error
  topics:
    - id: no-medical-advice
      appliesTo: [input, output]
      phrases: ["dosage"]
  actions:
    default: allow
    rules:
      - id: no-deletes
        tools: ["delete_*"]
        decision: deny
      - id: wire-review
        tools: ["wire_transfer"]
        decision: escalate
      - id: refund-limit
        tools: ["refund_order"]
        decision: allow
        arguments:
          - pointer: /amount
            max: 100
  pii:
    - id: contact-details
      entities: [EMAIL]
      input: redact
      output: redact
  context:
    budget: {tokens: 2000}
    reservedOutputTokens: 100
    strategy: truncate
"#;

/// The sidecar process, killed on drop.
pub struct Sidecar {
    child: Child,
    /// `http://127.0.0.1:PORT` for TCP; the socket path for a Unix socket.
    pub grpc: String,
    pub admin: String,
    pub proxy: String,
    pub socket: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Writes the test policy into `dir` and returns its path.
pub fn write_policy(dir: &Path) -> PathBuf {
    let path = dir.join("policy.yaml");
    std::fs::write(&path, POLICY).expect("write policy");
    path
}

impl Sidecar {
    /// Starts the sidecar with `policy` (which may not exist yet) and gRPC on
    /// `grpc_listen`, or a free loopback port when `None`.
    pub fn start(policy: &Path, grpc_listen: Option<&str>, extra: &[&str]) -> Sidecar {
        let proxy = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let grpc = grpc_listen
            .map(str::to_owned)
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
            .args(["serve", "--listen", &proxy, "--admin-listen", &admin])
            .args(["--grpc-listen", &grpc])
            // Nothing listens on port 9 (discard) on loopback: most gRPC tests need no
            // model, and a summarization that reaches the upstream fails fast.
            .args(
                (!extra.contains(&"--openai-upstream"))
                    .then_some(["--openai-upstream", "http://127.0.0.1:9/v1"])
                    .into_iter()
                    .flatten(),
            )
            .arg("--policy")
            .arg(policy)
            .args(extra)
            .env_remove("AGENT_SIDECAR_CONFIG")
            .env_remove("OPENAI_API_KEY")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sidecar starts");
        let socket = grpc.strip_prefix("unix:").map(PathBuf::from);
        Sidecar {
            child,
            grpc: match &socket {
                Some(path) => path.display().to_string(),
                None => format!("http://{grpc}"),
            },
            admin: format!("http://{admin}"),
            proxy: format!("http://{proxy}"),
            socket,
        }
    }

    /// Returns a channel to the gRPC API, retrying while the server is not yet bound.
    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let attempt = match &self.socket {
                Some(path) => unix_channel(path).await,
                None => {
                    Endpoint::from_shared(self.grpc.clone())
                        .expect("valid endpoint")
                        .connect()
                        .await
                }
            };
            match attempt {
                Ok(channel) => return channel,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "gRPC server at {} did not accept connections: {e}",
                        self.grpc
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Returns a channel once the health service reports SERVING.
    pub async fn ready_channel(&self) -> Channel {
        let channel = self.channel().await;
        wait_for_status(&channel, ServingStatus::Serving).await;
        channel
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Returns the overall health status the server reports.
pub async fn health_status(channel: &Channel) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check answers");
    ServingStatus::try_from(response.into_inner().status).expect("known status")
}

/// Polls the health service until it reports `expected`, for at most 15 seconds.
pub async fn wait_for_status(channel: &Channel, expected: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = health_status(channel).await;
        if status == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed {status:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns the field violations of an INVALID_ARGUMENT status, as (field, description).
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "status: {status:?}"
    );
    let details = status
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest detail");
    details
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

pub fn text_part(text: &str) -> proto::Part {
    proto::Part {
        content: Some(proto::part::Content::Text(text.to_owned())),
    }
}

pub fn message(role: proto::Role, text: &str) -> proto::Message {
    proto::Message {
        role: role.into(),
        parts: vec![text_part(text)],
    }
}

pub fn tool_call_message(name: &str, arguments: &str) -> proto::Message {
    proto::Message {
        role: proto::Role::Assistant.into(),
        parts: vec![proto::Part {
            content: Some(proto::part::Content::ToolCall(proto::ToolCall {
                id: "call_1".to_owned(),
                name: name.to_owned(),
                arguments_json: arguments.to_owned(),
            })),
        }],
    }
}
