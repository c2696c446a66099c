//! `agent-sidecar webhook`: the mutating admission webhook that injects the sidecar into
//! pods at creation. Serves HTTPS until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::inject::InjectionArgs;
use crate::webhook::server::{self, WebhookConfig};

/// Flags of `webhook`.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// HTTPS address for admission reviews.
    #[arg(
        long,
        env = "AGENT_SIDECAR_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,
    /// Plain HTTP address for /livez, /readyz and /metrics.
    #[arg(
        long,
        env = "AGENT_SIDECAR_WEBHOOK_ADMIN_LISTEN",
        default_value = "0.0.0.0:14190"
    )]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain, leaf first (cert-manager's tls.crt).
    #[arg(
        long,
        env = "AGENT_SIDECAR_WEBHOOK_TLS_CERT",
        default_value = "/etc/agent-sidecar-webhook/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate (cert-manager's tls.key).
    #[arg(
        long,
        env = "AGENT_SIDECAR_WEBHOOK_TLS_KEY",
        default_value = "/etc/agent-sidecar-webhook/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// Milliseconds between checks of the certificate files for changes.
    #[arg(
        long,
        env = "AGENT_SIDECAR_WEBHOOK_TLS_RELOAD_INTERVAL_MS",
        default_value_t = 5000
    )]
    pub tls_reload_interval_ms: u64,
    /// Milliseconds between SIGTERM and closing the HTTPS listener, during which /readyz
    /// fails so the API server stops sending reviews to this pod first. Keep it below the
    /// pod's terminationGracePeriodSeconds.
    #[arg(
        long,
        env = "AGENT_SIDECAR_WEBHOOK_SHUTDOWN_DELAY_MS",
        default_value_t = 5000
    )]
    pub shutdown_delay_ms: u64,
    #[command(flatten)]
    pub injection: InjectionArgs,
}

pub fn run(args: WebhookArgs) -> ExitCode {
    let settings = match args.injection.to_settings() {
        Ok(settings) => settings,
        Err(problems) => {
            for problem in problems {
                eprintln!("error: {problem}");
            }
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    if args.tls_reload_interval_ms == 0 {
        eprintln!("error: --tls-reload-interval-ms must be at least 1");
        return ExitCode::from(super::EXIT_USAGE);
    }
    let config = WebhookConfig {
        cert_path: args.tls_cert,
        key_path: args.tls_key,
        reload_interval: Duration::from_millis(args.tls_reload_interval_ms),
        shutdown_delay: Duration::from_millis(args.shutdown_delay_ms),
        settings,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = server::bind(args.listen, "--listen").await?;
        let admin_listener = server::bind(args.admin_listen, "--admin-listen").await?;
        server::serve(listener, admin_listener, config, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "webhook stopped");
            ExitCode::FAILURE
        }
    }
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
