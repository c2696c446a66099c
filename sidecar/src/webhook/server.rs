//! The admission webhook's servers: HTTPS for the API server's reviews and plain HTTP for
//! probes and metrics.
//!
//! HTTPS routes:
//! - `POST /mutate`: pods in namespaces without `agent-sidecar.io/inject=enabled`; only a
//!   pod annotation opts them in.
//! - `POST /mutate/namespace-enabled`: pods in namespaces with that label.
//!
//! The MutatingWebhookConfiguration sends each namespace to one of them with a namespace
//! selector, so the webhook needs no API access to read namespace labels.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::admission::{ReviewError, review};
use super::metrics::WebhookMetrics;
use super::mutate::NamespaceInjection;
use super::settings::InjectionSettings;
use super::tls::{Reload, ReloadingCertificate};
use crate::telemetry::exposition;

/// Largest review body read. The API server accepts objects up to 3 MiB, and a CREATE
/// review carries one object plus a small envelope.
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// Time allowed for a TLS handshake, and then for reading a request's headers and body.
/// Both sit well inside the API server's webhook timeout (the manifests set 5 seconds).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections served at once; more are closed at accept. The API server keeps a few
/// connections per webhook, so this only bounds misbehaving clients.
pub const MAX_CONNECTIONS: usize = 512;
/// Time open connections get to finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the webhook server.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
    /// Time between a shutdown request and closing the listener, during which the
    /// webhook still serves reviews but reports not ready.
    pub shutdown_delay: Duration,
    pub settings: InjectionSettings,
}

#[derive(Clone, Debug)]
struct AppState {
    settings: Arc<InjectionSettings>,
    metrics: Arc<WebhookMetrics>,
    certificate: Arc<ReloadingCertificate>,
    draining: Arc<AtomicBool>,
}

/// Error that stops the webhook.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("admin server failed: {0}")]
    Admin(#[source] std::io::Error),
    #[error("cannot read the listener address: {0}")]
    Address(#[source] std::io::Error),
}

/// Serves reviews on `listener` (HTTPS) and probes and metrics on `admin_listener` until
/// `shutdown` completes, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    admin_listener: TcpListener,
    config: WebhookConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let provider = Arc::new(ring_provider());
    let certificate = Arc::new(ReloadingCertificate::new(
        config.cert_path.clone(),
        config.key_path.clone(),
        provider.clone(),
    ));
    let metrics = WebhookMetrics::new();
    let state = AppState {
        settings: Arc::new(config.settings.clone()),
        metrics: metrics.clone(),
        certificate: certificate.clone(),
        draining: Arc::new(AtomicBool::new(false)),
    };
    check_certificate(&certificate, &metrics);

    let mut tls_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));

    let address = listener.local_addr().map_err(ServeError::Address)?;
    let admin_address = admin_listener.local_addr().map_err(ServeError::Address)?;
    tracing::info!(listen = %address, admin = %admin_address, "webhook started");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reload_task = tokio::spawn(reload_loop(
        certificate,
        metrics,
        config.reload_interval,
        stop_rx.clone(),
    ));
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(
        axum::serve(admin_listener, admin_router(state.clone()))
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|stop| *stop).await;
            })
            .into_future(),
    );

    let draining = state.draining.clone();
    let mut https_stop = stop_rx;
    let https_task = tokio::spawn(accept_loop(
        listener,
        acceptor,
        review_router(state),
        async move {
            let _ = https_stop.wait_for(|stop| *stop).await;
        },
    ));

    shutdown.await;
    // The API server keeps sending reviews to this pod until the endpoint removal reaches
    // it. Closing the listener at once would refuse those reviews, and with
    // failurePolicy Ignore their pods would start without the sidecar.
    draining.store(true, Ordering::Release);
    tracing::info!(
        delay_ms = config.shutdown_delay.as_millis(),
        "shutdown requested; not ready, still serving"
    );
    tokio::time::sleep(config.shutdown_delay).await;
    tracing::info!("closing the listener; draining connections");
    let _ = stop_tx.send(true);
    let _ = https_task.await;
    let _ = reload_task.await;
    let admin_result = admin_task.await;
    tracing::info!("webhook stopped");
    match admin_result {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Admin(e)),
    }
}

/// The *ring* crypto provider, which keeps the build free of the C toolchain that
/// aws-lc-rs needs.
#[expect(
    deprecated,
    reason = "rustls deprecates ring for lacking post-quantum key exchange; the webhook only \
              talks to the API server inside the cluster, with short-lived certificates"
)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn review_router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate_pod_opt_in))
        .route("/mutate/namespace-enabled", post(mutate_namespace_enabled))
        .with_state(state)
}

fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_READ_TIMEOUT);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Accept fails on resource exhaustion (EMFILE); pausing lets
                    // connections close instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached; closing connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

async fn reload_loop(
    certificate: Arc<ReloadingCertificate>,
    metrics: Arc<WebhookMetrics>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => check_certificate(&certificate, &metrics),
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

fn check_certificate(certificate: &ReloadingCertificate, metrics: &WebhookMetrics) {
    match certificate.reload() {
        Reload::Unchanged => {}
        Reload::Loaded => {
            metrics.record_certificate_reload(true);
            tracing::info!("serving certificate loaded");
        }
        Reload::Failed(error) => {
            metrics.record_certificate_reload(false);
            if certificate.is_loaded() {
                tracing::warn!(%error, "serving certificate changed but cannot be loaded; keeping the previous one");
            } else {
                tracing::warn!(%error, "serving certificate cannot be loaded; not ready until it can");
            }
        }
    }
}

async fn mutate_pod_opt_in(State(state): State<AppState>, body: Body) -> Response {
    answer(state, body, NamespaceInjection::NotEnabled).await
}

async fn mutate_namespace_enabled(State(state): State<AppState>, body: Body) -> Response {
    answer(state, body, NamespaceInjection::Enabled).await
}

async fn answer(state: AppState, body: Body, namespace: NamespaceInjection) -> Response {
    let started = Instant::now();
    let bytes = match tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_REVIEW_BYTES),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            state
                .metrics
                .record_admission("invalid", "unreadable_body", started.elapsed());
            let message =
                format!("cannot read the request body (at most {MAX_REVIEW_BYTES} bytes): {error}");
            tracing::info!(error = %message, "admission review rejected");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
        Err(_) => {
            state
                .metrics
                .record_admission("invalid", "read_timeout", started.elapsed());
            return (
                StatusCode::REQUEST_TIMEOUT,
                "timed out reading the request body",
            )
                .into_response();
        }
    };
    match review(&bytes, namespace, &state.settings) {
        Ok(reviewed) => {
            state
                .metrics
                .record_admission(reviewed.outcome, reviewed.reason, started.elapsed());
            match reviewed.outcome {
                "injected" | "rejected" => tracing::info!(
                    uid = %reviewed.uid,
                    namespace = %reviewed.namespace,
                    pod = %reviewed.pod,
                    outcome = reviewed.outcome,
                    warnings = reviewed.warnings.len(),
                    "admission reviewed"
                ),
                _ => tracing::debug!(
                    uid = %reviewed.uid,
                    namespace = %reviewed.namespace,
                    pod = %reviewed.pod,
                    outcome = reviewed.outcome,
                    reason = reviewed.reason,
                    "admission reviewed"
                ),
            }
            axum::Json(reviewed.to_json()).into_response()
        }
        Err(error) => {
            let reason = match &error {
                ReviewError::InvalidJson(_) => "invalid_json",
                ReviewError::UnsupportedVersion { .. } => "unsupported_version",
                ReviewError::MissingRequest => "missing_request",
                ReviewError::InvalidPod(_) => "invalid_pod",
            };
            state
                .metrics
                .record_admission("invalid", reason, started.elapsed());
            tracing::info!(%error, "admission review rejected");
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let loaded = state.certificate.is_loaded();
    let draining = state.draining.load(Ordering::Acquire);
    let ready = loaded && !draining;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "certificate": {"status": if loaded { "ok" } else { "not_loaded" }},
            "shutdown": {"status": if draining { "draining" } else { "ok" }},
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (body, content_type) = exposition::negotiate(&headers, state.metrics.encode());
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// Binds `address`, naming the flag in the error.
pub async fn bind(address: SocketAddr, flag: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot bind {flag} address {address}: {e}; choose a free port"))
}
