//! The local gRPC API (`agent_sidecar.v1`, from `proto/`): the same guard engine,
//! conversation store and context management as the model proxy, for agents that do not
//! call models through the proxy. Served on loopback or a Unix domain socket, beside
//! `grpc.health.v1.Health` and server reflection.

pub mod conversations;
pub mod convert;
pub mod escalations;
pub mod events;
pub mod guardrails;
pub mod invalid;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::config::ListenAddress;
use crate::context::{ModelCatalog, SummaryScheduler};
use crate::events::{EventBus, EventPayload};
use crate::guard::{Finding, Guard, Verdict};
use crate::policy::reload::GuardHandle;
use crate::state::ConversationStore;
use crate::state::escalation::Escalations;
use crate::telemetry::metrics::Metrics;

/// Code generated from `proto/agent_sidecar/v1/*.proto` by `build.rs`.
#[allow(
    missing_debug_implementations,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]
pub mod proto {
    tonic::include_proto!("agent_sidecar.v1");

    /// Encoded descriptors of the API's files and their imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/agent_sidecar_descriptor.bin"));
}

/// Fully qualified names of the API's services, as health checks name them.
pub const SERVICE_NAMES: [&str; 4] = [
    "agent_sidecar.v1.Guardrails",
    "agent_sidecar.v1.Conversations",
    "agent_sidecar.v1.Escalations",
    "agent_sidecar.v1.Events",
];

/// State shared by every gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcState {
    /// The reloadable guard; each request takes one snapshot of it.
    pub guard: Arc<GuardHandle>,
    pub store: Arc<dyn ConversationStore>,
    /// Context windows and output limits per model.
    pub models: Arc<ModelCatalog>,
    pub summaries: SummaryScheduler,
    pub metrics: Arc<Metrics>,
    /// Largest encoded request or response message, in bytes.
    pub max_message_bytes: usize,
    pub events: EventBus,
    pub escalations: Escalations,
}

impl GrpcState {
    /// Returns the guard a request uses from start to end, so a policy reload never
    /// changes the policy under a request in flight.
    pub fn guard(&self) -> Arc<Guard> {
        self.guard.current()
    }

    /// Publishes a rule block decided through the gRPC API.
    fn publish_block(&self, conversation_id: &str, verdict: &Verdict, tool: Option<&str>) {
        if let Verdict::Block { rule, kind } = verdict {
            let conversation = (!conversation_id.is_empty()).then_some(conversation_id);
            self.events.publish(
                conversation,
                EventPayload::RuleBlocked {
                    rule: rule.to_string(),
                    kind: kind.as_str(),
                    source: "grpc",
                    tool: tool.map(str::to_owned),
                },
            );
        }
    }

    fn record_findings(&self, guard: &Guard, findings: &[Finding]) {
        self.metrics
            .record_findings(&guard.policy().identity, findings);
    }
}

/// A bound gRPC listener.
#[derive(Debug)]
pub enum GrpcListener {
    Tcp(TcpListener),
    /// A Unix domain socket, and the path to remove at shutdown.
    Unix(UnixListener, PathBuf),
}

impl GrpcListener {
    /// Returns a second handle to the same socket, so a temporary server can accept on it
    /// before the real one takes over.
    pub fn duplicate(&self) -> Result<GrpcListener, String> {
        use std::os::fd::AsFd;
        let failed = |e: std::io::Error| format!("cannot duplicate the gRPC listener: {e}");
        match self {
            GrpcListener::Tcp(listener) => {
                let fd = listener.as_fd().try_clone_to_owned().map_err(failed)?;
                TcpListener::from_std(std::net::TcpListener::from(fd))
                    .map(GrpcListener::Tcp)
                    .map_err(failed)
            }
            GrpcListener::Unix(listener, path) => {
                let fd = listener.as_fd().try_clone_to_owned().map_err(failed)?;
                UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
                    .map(|listener| GrpcListener::Unix(listener, path.clone()))
                    .map_err(failed)
            }
        }
    }
}

/// Binds the gRPC address. A Unix socket path that exists as a socket is removed first,
/// because a previous process that was killed leaves it behind.
pub async fn bind(address: &ListenAddress) -> Result<GrpcListener, String> {
    match address {
        ListenAddress::Tcp(address) => TcpListener::bind(address)
            .await
            .map(GrpcListener::Tcp)
            .map_err(|e| {
                format!("cannot bind grpcListen address {address}: {e}; choose a free port")
            }),
        ListenAddress::Unix(path) => {
            remove_stale_socket(path)?;
            UnixListener::bind(path)
                .map(|listener| GrpcListener::Unix(listener, path.clone()))
                .map_err(|e| {
                    format!(
                        "cannot bind grpcListen socket {}: {e}; check that its directory exists and is writable",
                        path.display()
                    )
                })
        }
    }
}

fn remove_stale_socket(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display())),
        Ok(_) => Err(format!(
            "grpcListen path {} exists and is not a socket; remove it or choose another path",
            path.display()
        )),
        Err(_) => Ok(()),
    }
}

/// Sets the health status of the whole server (the empty service name) and of each
/// service.
pub async fn set_serving(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Serves the API, health checks and reflection on `listener` until `shutdown` turns
/// true, then removes a Unix socket's file.
pub async fn serve(
    listener: GrpcListener,
    state: GrpcState,
    health: HealthServer<impl Health>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let limit = state.max_message_bytes;
    let guardrails = proto::guardrails_server::GuardrailsServer::new(
        guardrails::GuardrailsService::new(state.clone()),
    )
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);

    let conversations = proto::conversations_server::ConversationsServer::new(
        conversations::ConversationsService::new(state.clone()),
    )
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);

    let escalations = proto::escalations_server::EscalationsServer::new(
        escalations::EscalationsService::new(state.clone()),
    )
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let events = proto::events_server::EventsServer::new(events::EventsService::new(state))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    let router = Server::builder()
        .add_service(health)
        .add_service(reflection()?)
        .add_service(reflection_v1alpha()?)
        .add_service(guardrails)
        .add_service(conversations)
        .add_service(escalations)
        .add_service(events);
    let socket = match &listener {
        GrpcListener::Unix(_, path) => Some(path.clone()),
        GrpcListener::Tcp(_) => None,
    };
    let result = run(router, listener, shutdown).await;
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Serves only health checks and reflection, while the engine cannot start yet because
/// the policy is missing.
pub async fn serve_health_only(
    listener: GrpcListener,
    health: HealthServer<impl Health>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let routes = Routes::new(health)
        .add_service(reflection()?)
        .add_service(reflection_v1alpha()?)
        .into_axum_router()
        .fallback(engine_not_started);
    let router = Server::builder().add_routes(Routes::from(routes));
    run(router, listener, shutdown).await
}

/// Rejects calls to the engine's services while the policy is missing. `UNAVAILABLE`
/// tells the client that a retry can succeed, where tonic's default `UNIMPLEMENTED` tells it never will.
async fn engine_not_started() -> axum::http::Response<axum::body::Body> {
    tonic::Status::unavailable(
        "the sidecar is waiting for its policy file; retry once grpc.health.v1 reports SERVING",
    )
    .into_http()
}

fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    String,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("cannot build the gRPC reflection service: {e}"))
}

/// Builds reflection under its older `grpc.reflection.v1alpha` name, the only one that
/// some clients (Python's `grpcio-reflection`, older `grpcurl`) ask for.
fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    String,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("cannot build the gRPC reflection service: {e}"))
}

async fn run(
    router: tonic::transport::server::Router,
    listener: GrpcListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let signal = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = match listener {
        GrpcListener::Tcp(listener) => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
                .await
        }
        GrpcListener::Unix(listener, _) => {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal)
                .await
        }
    };
    result.map_err(|e| format!("gRPC server failed: {e}"))
}
