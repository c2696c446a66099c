//! `agent-sidecar serve`: load configuration and policy, bind the listeners, serve until
//! SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;

use crate::config::routing::RoutingConfig;
use crate::config::{Config, Overrides, ProcessEnvironment, RawConfig, Secret, SecretSource};
use crate::context::{SummaryScheduler, summarize};
use crate::events::EventBus;
use crate::grpc::{self, GrpcState};
use crate::guard::pii::HashKey;
use crate::health::{self, AdminState};
use crate::policy::Policy;
use crate::policy::reload::{DEFAULT_RELOAD_INTERVAL_MS, GuardHandle, PolicyWatcher};
use crate::proxy::{self, ProxyState, upstream};
use crate::state::escalation::{
    DEFAULT_ESCALATION_TTL, EscalationStore, Escalations, MemoryEscalations,
};
use crate::state::metered::MeteredStore;
use crate::state::redis::RedisEscalations;
use crate::state::vault::VaultKey;
use crate::state::{self, ConversationStore};
use crate::telemetry::metrics::Metrics;

/// Default request threads; see `--worker-threads`.
pub const DEFAULT_WORKER_THREADS: u16 = 1;

/// Flags of `serve`; each one can also be set by the environment variable named beside
/// it, and both override the configuration file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML configuration file.
    #[arg(long, env = "AGENT_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Policy file or directory (such as a mounted ConfigMap); the embedded default
    /// policy when unset.
    #[arg(long, env = "AGENT_SIDECAR_POLICY")]
    pub policy: Option<PathBuf>,
    /// Base URL of the OpenAI-compatible upstream [default: https://api.openai.com/v1].
    #[arg(long, env = "AGENT_SIDECAR_OPENAI_UPSTREAM")]
    pub openai_upstream: Option<String>,
    /// Base URL of the Anthropic upstream [default: https://api.anthropic.com].
    #[arg(long, env = "AGENT_SIDECAR_ANTHROPIC_UPSTREAM")]
    pub anthropic_upstream: Option<String>,
    /// Redis URL for conversation state (redis:// or rediss://); the in-memory store when unset.
    #[arg(long, env = "AGENT_SIDECAR_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Model proxy address [default: 127.0.0.1:14100].
    #[arg(long, env = "AGENT_SIDECAR_LISTEN")]
    pub listen: Option<String>,
    /// gRPC API address, IP:PORT or unix:PATH for a Unix domain socket
    /// [default: 127.0.0.1:14101].
    #[arg(long, env = "AGENT_SIDECAR_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Admin address for probes and metrics [default: 0.0.0.0:14190].
    #[arg(long, env = "AGENT_SIDECAR_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Threads serving requests. One suits a sidecar: it avoids cross-thread wake-ups,
    /// which cost more CPU per request than the guard itself, and a pod's agent rarely
    /// needs more than one core of proxying.
    #[arg(long, env = "AGENT_SIDECAR_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Milliseconds between two reads of the policy path. A changed valid policy is
    /// enforced from the next request on. 0 turns reloading off.
    #[arg(long, env = "AGENT_SIDECAR_POLICY_RELOAD_INTERVAL_MS", default_value_t = DEFAULT_RELOAD_INTERVAL_MS)]
    pub policy_reload_interval_ms: u64,
}

pub fn run(args: ServeArgs) -> ExitCode {
    let raw = match &args.config {
        Some(path) => match RawConfig::from_file(path) {
            Ok(raw) => raw,
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(super::EXIT_USAGE);
            }
        },
        None => RawConfig::default(),
    };
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        grpc_listen: args.grpc_listen,
        policy: args.policy,
        openai_upstream: args.openai_upstream,
        anthropic_upstream: args.anthropic_upstream,
        redis_url: args.redis_url,
    };
    let config = match Config::resolve(raw, overrides, &ProcessEnvironment) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let reload_interval = Duration::from_millis(args.policy_reload_interval_ms);
    match runtime.block_on(serve(config, reload_interval)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "sidecar stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, reload_interval: Duration) -> Result<(), String> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    grpc::set_serving(&health_reporter, false).await;
    let (policy, admin_listener, grpc_listener) = match awaited_policy(config.policy.as_deref()) {
        Some(path) => {
            let admin_listener = bind(config.admin_listen, "adminListen").await?;
            let grpc_listener = grpc::bind(&config.grpc_listen).await?;
            let waited = wait_for_policy(
                path,
                &admin_listener,
                &grpc_listener,
                health_service.clone(),
            )
            .await?;
            let Some(policy) = waited else {
                tracing::info!("agent-sidecar stopped before its policy appeared");
                return Ok(());
            };
            (policy, admin_listener, grpc_listener)
        }
        None => {
            // Loaded before binding, so a wrong path or an invalid policy fails at once.
            let policy = Policy::load_or_default(config.policy.as_deref())
                .map_err(|errors| errors.to_string())?;
            let admin_listener = bind(config.admin_listen, "adminListen").await?;
            let grpc_listener = grpc::bind(&config.grpc_listen).await?;
            (policy, admin_listener, grpc_listener)
        }
    };
    tracing::info!(
        policy = %policy.identity.name,
        policy.hash = %policy.identity.hash,
        policy.source = %policy.identity.source,
        rules = policy.rule_count,
        "policy loaded"
    );
    let metrics = Metrics::new();
    metrics.record_policy_loaded(&policy);

    let hash_key = match &config.hash_key {
        Some(secret) => HashKey::new(secret.expose().as_bytes()),
        None => {
            tracing::warn!(
                "no hash key configured (pii.hashKeyFile or AGENT_SIDECAR_HASH_KEY); hash tokens \
                 are stable only until this process restarts"
            );
            HashKey::new(&random_key()?)
        }
    };
    let guard = Arc::new(GuardHandle::new(Arc::new(policy), Arc::new(hash_key)));
    let store: Arc<dyn ConversationStore> =
        state::open(config.store.settings.clone(), config.store.redis.clone())
            .map_err(|e| e.to_string())?;
    let store: Arc<dyn ConversationStore> = Arc::new(MeteredStore::new(store, metrics.clone()));

    log_credential_source("openai", &config.openai.api_key);
    log_credential_source("anthropic", &config.anthropic.api_key);
    let client = upstream::build_client(config.connect_timeout)
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut openai = upstream::Upstream::new(
        "openai",
        config.openai.clone(),
        client.clone(),
        config.request_timeout,
        config.max_response_body_bytes,
    );
    openai.stream_idle_timeout = config.stream_idle_timeout;
    let mut anthropic = upstream::Upstream::new(
        "anthropic",
        config.anthropic.clone(),
        client,
        config.request_timeout,
        config.max_response_body_bytes,
    )
    .with_credential(upstream::Credential::Header("x-api-key"))
    .with_default_header(
        "anthropic-version",
        crate::dialect::anthropic::DEFAULT_VERSION,
    );
    anthropic.stream_idle_timeout = config.stream_idle_timeout;
    let routes = Arc::new(proxy::routing::RouteTable::build(&config)?);
    for target in routes.targets() {
        tracing::info!(
            target.name = target.name,
            dialect = target.dialect.as_str(),
            credential = if target.upstream.has_credential() {
                "sidecar"
            } else {
                "client"
            },
            "upstream target configured"
        );
    }

    if let Some(checks) = &config.routing.health_checks {
        health::active::spawn(&routes, checks, &metrics);
    }

    let proxy_listener = bind(config.listen, "listen").await?;
    if !config.listen.ip().is_loopback() {
        tracing::warn!(address = %config.listen, "model proxy listens on a non-loopback address; other pods can reach it");
    }
    let started = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(true));

    let vault_key = match &config.vault_key {
        Some((secret, _)) => VaultKey::from_secret(secret.expose().as_bytes()),
        None => {
            tracing::warn!(
                "no vault key configured (vault.keyFile or AGENT_SIDECAR_VAULT_KEY); pseudonyms \
                 stored before a restart cannot be restored after it"
            );
            VaultKey::random()
        }
    };
    let events = EventBus::new();
    let escalation_store: Arc<dyn EscalationStore> = match &config.store.redis {
        Some(redis) => Arc::new(RedisEscalations::open(redis).map_err(|e| e.to_string())?),
        None => Arc::new(MemoryEscalations::new()),
    };
    let escalations = Escalations {
        store: escalation_store,
        events: events.clone(),
        metrics: metrics.clone(),
        ttl: DEFAULT_ESCALATION_TTL,
    };
    let summaries = SummaryScheduler::new(
        Arc::new(proxy::UpstreamSummarizer {
            routes: routes.clone(),
            metrics: metrics.clone(),
        }),
        store.clone(),
        summarize::DEFAULT_RETRY,
    )
    .with_events(events.clone());
    let grpc_state = GrpcState {
        guard: guard.clone(),
        store: store.clone(),
        models: Arc::new(config.models.clone()),
        summaries: summaries.clone(),
        metrics: metrics.clone(),
        max_message_bytes: config.max_request_body_bytes,
        events: events.clone(),
        escalations: escalations.clone(),
    };
    let proxy_router = proxy::router(ProxyState {
        guard: guard.clone(),
        openai,
        anthropic,
        routes: routes.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        vault_key,
        models: Arc::new(config.models.clone()),
        summaries,
        max_request_body_bytes: config.max_request_body_bytes,
        passthrough_unknown_paths: config.passthrough_unknown_paths,
        escalations,
    });
    let watcher = config
        .policy
        .clone()
        .filter(|_| !reload_interval.is_zero())
        .map(|path| {
            PolicyWatcher::new(guard.clone(), path, metrics.clone()).with_events(events.clone())
        });
    let admin_state = AdminState {
        guard,
        store: store.clone(),
        metrics,
        routes,
        started: started.clone(),
        ready: ready.clone(),
    };
    let admin_router = health::router(admin_state.clone());

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let proxy_task = tokio::spawn(run_server(
        proxy_listener,
        proxy_router,
        shutdown_rx.clone(),
    ));
    if let Some(watcher) = watcher {
        tracing::info!(
            policy.source = %watcher.path().display(),
            interval_ms = reload_interval.as_millis(),
            "watching the policy for changes"
        );
        tokio::spawn(watcher.run(reload_interval, shutdown_rx.clone()));
    }
    let admin_task = tokio::spawn(run_server(
        admin_listener,
        admin_router,
        shutdown_rx.clone(),
    ));
    let grpc_task = tokio::spawn(grpc::serve(
        grpc_listener,
        grpc_state,
        health_service,
        shutdown_rx.clone(),
    ));
    let health_task = tokio::spawn(mirror_readiness(admin_state, health_reporter, shutdown_rx));
    started.store(true, Ordering::Release);
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        grpc = %config.grpc_listen,
        targets = %target_summary(&config.routing),
        routes = config.routing.routes.len(),
        "agent-sidecar started"
    );

    shutdown_signal().await;
    tracing::info!("shutdown requested; draining connections");
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    let _ = health_task.await;
    for task in [proxy_task, admin_task, grpc_task] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("server task failed: {e}")),
        }
    }
    store.shutdown(config.store.shutdown_grace).await;
    tracing::info!("agent-sidecar stopped");
    Ok(())
}

/// Logs where a provider's upstream key came from, never the key itself.
fn log_credential_source(provider: &str, key: &Option<(Secret, SecretSource)>) {
    match key {
        Some((_, SecretSource::Environment)) => {
            tracing::info!(provider, "upstream credential read from the environment")
        }
        Some((_, SecretSource::File)) => {
            tracing::info!(provider, "upstream credential read from file")
        }
        None => tracing::info!(
            provider,
            "no upstream credential; the client's credential header is forwarded"
        ),
    }
}

/// Returns the policy path to wait for: one that does not exist yet in a directory that
/// does, as when a ConfigMap volume is mounted before its file is written. A path whose
/// directory is missing too is a mistake, reported at once by the load.
fn awaited_policy(path: Option<&std::path::Path>) -> Option<&std::path::Path> {
    let path = path?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    (!path.exists() && directory.is_dir()).then_some(path)
}

/// How often a missing policy file is looked for.
const POLICY_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Waits until the policy file at `path` exists and compiles, serving meanwhile the
/// admin probes (live, not ready) and gRPC health checks (NOT_SERVING) on copies of the
/// listeners. Returns `None` when shutdown was requested first.
async fn wait_for_policy(
    path: &std::path::Path,
    admin_listener: &TcpListener,
    grpc_listener: &grpc::GrpcListener,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<Option<Policy>, String> {
    use std::os::fd::AsFd;
    tracing::warn!(
        policy.source = %path.display(),
        "policy file does not exist; waiting for it, not ready meanwhile"
    );
    let admin_copy = admin_listener
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .and_then(TcpListener::from_std)
        .map_err(|e| format!("cannot duplicate the admin listener: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(run_server(
        admin_copy,
        health::waiting_router(path),
        stop_rx.clone(),
    ));
    let grpc_task = tokio::spawn(grpc::serve_health_only(
        grpc_listener.duplicate()?,
        health,
        stop_rx,
    ));

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut last_error = None;
    let policy = loop {
        tokio::select! {
            _ = &mut shutdown => break None,
            _ = tokio::time::sleep(POLICY_POLL_INTERVAL) => {}
        }
        if !path.exists() {
            continue;
        }
        match Policy::load(path) {
            Ok(policy) => break Some(policy),
            // A file still being written fails to parse; each new error is logged once.
            Err(errors) => {
                let message = errors.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "policy file is invalid; waiting for a valid one");
                    last_error = Some(message);
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    for task in [admin_task, grpc_task] {
        match task.await {
            Ok(result) => result?,
            Err(e) => return Err(format!("server task failed: {e}")),
        }
    }
    Ok(policy)
}

async fn bind(address: std::net::SocketAddr, field: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot bind {field} address {address}: {e}; choose a free port"))
}

async fn run_server(
    listener: TcpListener,
    router: axum::Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|e| format!("server failed: {e}"))
}

/// How often the gRPC health status is brought in line with `/readyz`.
const HEALTH_SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Keeps the gRPC health status equal to `/readyz` until shutdown, then reports
/// NOT_SERVING so clients stop sending before the listeners close.
async fn mirror_readiness(
    admin: AdminState,
    reporter: tonic_health::server::HealthReporter,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut reported = None;
    loop {
        let ready = health::is_ready(admin.clone()).await;
        if reported != Some(ready) {
            grpc::set_serving(&reporter, ready).await;
            reported = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_SYNC_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    grpc::set_serving(&reporter, false).await;
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// 32 random bytes from the operating system.
fn random_key() -> Result<[u8; 32], String> {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("cannot read /dev/urandom for the hash key: {e}"))?;
    Ok(key)
}

/// Names and base URLs of the upstream targets, as `name=url` separated by spaces, for the
/// start line: with routes configured, the provider defaults may not be in use at all.
fn target_summary(routing: &RoutingConfig) -> String {
    routing
        .targets
        .iter()
        .map(|target| format!("{}={}", target.name, target.provider.base_url))
        .collect::<Vec<_>>()
        .join(" ")
}
