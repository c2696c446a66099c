//! The `agent-sidecar` binary: parse the command line, start logging and tracing, run a
//! subcommand.

use std::process::ExitCode;

use agent_sidecar::cmd::{Cli, Command, check, inject, policy, serve, wait_ready, webhook};
use agent_sidecar::telemetry;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format);
    let code = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(args),
        Command::Policy { command } => policy::run(command),
        Command::Inject(args) => inject::run(args),
        Command::Webhook(args) => webhook::run(args),
        Command::WaitReady(args) => wait_ready::run(args),
    };
    telemetry.shutdown();
    code
}
