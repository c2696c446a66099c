//! `agent-sidecar policy validate` and `agent-sidecar policy schema`.

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
    /// Print the policy's JSON Schema, for editors and linters.
    Schema {
        /// Print the GuardrailPolicy CustomResourceDefinition (YAML) instead.
        #[arg(long)]
        crd: bool,
    },
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Validate { paths } => validate(&paths),
        PolicyCommand::Schema { crd } => schema(crd),
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

fn schema(crd: bool) -> ExitCode {
    let text = if crd {
        match crate::webhook::crd::custom_resource_definition_yaml() {
            Ok(yaml) => yaml,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let schema = crate::webhook::crd::policy_json_schema();
        match serde_json::to_string_pretty(&schema) {
            Ok(json) => json + "\n",
            Err(error) => {
                eprintln!("error: cannot encode the schema: {error}");
                return ExitCode::FAILURE;
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot write the schema: {error}");
            ExitCode::FAILURE
        }
    }
}
