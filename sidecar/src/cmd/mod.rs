//! Subcommands of the `agent-sidecar` binary.

pub mod check;
pub mod inject;
pub mod policy;
pub mod serve;
pub mod wait_ready;
pub mod webhook;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Per-pod sidecar that guards an AI agent's model traffic.
#[derive(Debug, Parser)]
#[command(name = "agent-sidecar", version, about)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(
        long,
        global = true,
        env = "AGENT_SIDECAR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: model proxy and admin server.
    Serve(serve::ServeArgs),
    /// Run a policy over text and print verdicts and findings.
    Check(check::CheckArgs),
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Add the sidecar to the workloads in a YAML manifest, without a cluster.
    Inject(inject::InjectArgs),
    /// Run the admission webhook that injects the sidecar into pods.
    Webhook(webhook::WebhookArgs),
    /// Wait until the sidecar reports ready (the classic-mode postStart hook).
    WaitReady(wait_ready::WaitReadyArgs),
}

/// Exit status for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
