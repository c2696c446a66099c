//! The committed GuardrailPolicy CRD is the one the policy's Rust types generate.

use std::path::PathBuf;
use std::process::Command;

const CRD_PATH: &str = "manifests/crd/guardrailpolicy.yaml";

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

#[test]
fn committed_crd_matches_policy_types() {
    let generated =
        agent_sidecar::webhook::crd::custom_resource_definition_yaml().expect("the CRD generates");
    let committed = std::fs::read_to_string(repo_file(CRD_PATH)).expect("the CRD is committed");
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one file is a prefix of the other".to_owned(),
                |index| format!("first difference at line {}", index + 1),
            );
        panic!(
            "{CRD_PATH} differs from the schema of the policy types ({first_difference}); \
             regenerate it with `cargo run -p agent-sidecar -- policy schema --crd > {CRD_PATH}`"
        );
    }
}

#[test]
fn schema_command_prints_crd_and_json_schema() {
    let binary = env!("CARGO_BIN_EXE_agent-sidecar");
    let crd = Command::new(binary)
        .args(["policy", "schema", "--crd"])
        .output()
        .expect("binary runs");
    assert!(crd.status.success());
    let committed = std::fs::read(repo_file(CRD_PATH)).expect("the CRD is committed");
    assert_eq!(crd.stdout, committed);

    let schema = Command::new(binary)
        .args(["policy", "schema"])
        .output()
        .expect("binary runs");
    assert!(schema.status.success());
    let schema: serde_json::Value =
        serde_json::from_slice(&schema.stdout).expect("the schema is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["title"], "GuardrailPolicy");
}
