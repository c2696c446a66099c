//! The `agent-sidecar` binary: parse the command line, start logging, run a subcommand.

use std::process::ExitCode;

use agent_sidecar::cmd::{Cli, Command, check, inject, policy, serve, wait_ready, webhook};
use agent_sidecar::telemetry::init_logging;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(args),
        Command::Policy { command } => policy::run(command),
        Command::Inject(args) => inject::run(args),
        Command::Webhook(args) => webhook::run(args),
        Command::WaitReady(args) => wait_ready::run(args),
    }
}
