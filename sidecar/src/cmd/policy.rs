//! `agent-sidecar policy validate`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::policy::Policy;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files without starting anything; exits 1 when a policy is invalid.
    Validate {
        /// Policy file or directory (every *.yaml and *.yml in it).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Validate { paths } => validate(&paths),
    }
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let mut failed = false;
    for path in paths {
        // Write errors on a closed pipe are not worth a panic; the exit code still tells.
        match Policy::load(path) {
            Ok(policy) => {
                let _ = writeln!(
                    stdout,
                    "{}: policy {:?} is valid ({} rules, hash {})",
                    path.display(),
                    policy.identity.name,
                    policy.rule_count,
                    policy.identity.hash
                );
            }
            Err(errors) => {
                failed = true;
                let _ = write!(stderr, "{errors}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
