//! The `agent-sidecar` binary's commands, run as a user runs them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
}

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn run_with_stdin(mut command: Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("stdin accepts input");
    child.wait_with_output().expect("binary finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn shipped_policies_are_valid() {
    for name in ["default.yaml", "customer-support.yaml", "coding-agent.yaml"] {
        let output = binary()
            .args(["policy", "validate"])
            .arg(repo_file(&format!("policies/{name}")))
            .output()
            .expect("binary runs");
        assert!(
            output.status.success(),
            "{name} is invalid:\n{}",
            text(&output.stderr)
        );
        assert!(text(&output.stdout).contains("is valid"), "{name}");
    }
}

#[test]
fn invalid_policy_reports_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata: {name: bad}
spec:
  topics:
    - {id: t, patterns: ['(']}
  pii:
    - {id: p, entities: [PASSPORT], input: redact, output: shred}
"#,
    )
    .expect("write policy");
    let output = binary()
        .args(["policy", "validate"])
        .arg(&path)
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("spec.pii[0].output"), "{stderr}");
    assert!(
        stderr.contains("spec.topics[0].patterns[0]"),
        "structural and semantic errors come in one run: {stderr}"
    );
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_exit_status_follows_verdict() {
    let policy = repo_file("policies/customer-support.yaml");
    let mut clean = binary();
    clean.arg("check").arg("--policy").arg(&policy);
    let output = run_with_stdin(clean, "Where is my order?");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));

    let mut blocked = binary();
    blocked.arg("check").arg("--policy").arg(&policy);
    let output = run_with_stdin(blocked, "What dosage of ibuprofen is safe for my order?");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    assert!(text(&output.stdout).contains("no-medical-advice"));
}

#[test]
fn check_json_reports_byte_offsets_without_values() {
    let mut command = binary();
    command.args(["check", "--format", "json"]);
    let input = "héllo jane@example.com";
    let output = run_with_stdin(command, input);
    let stdout = text(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let finding = &report["findings"][0];
    assert_eq!(finding["rule"], "contact-details");
    assert_eq!(finding["entity"], "EMAIL");
    let start = finding["start"].as_u64().expect("start") as usize;
    let end = finding["end"].as_u64().expect("end") as usize;
    assert_eq!(&input[start..end], "jane@example.com");
    assert!(!stdout.contains("\"jane@example.com\""), "{stdout}");
}

#[test]
fn check_redacts_tool_arguments() {
    let mut command = binary();
    command.args(["check", "--jsonl", "--format", "json"]);
    let output = run_with_stdin(
        command,
        r#"{"tool": "lookup", "arguments": {"card": "4111 1111 1111 1111"}}"#,
    );
    let stdout = text(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["verdict"], "transform", "{stdout}");
    let arguments: serde_json::Value =
        serde_json::from_str(report["text"].as_str().expect("text")).expect("arguments stay JSON");
    assert_eq!(arguments["card"], "[CREDIT_CARD]");
}

#[test]
fn check_rejects_invalid_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("input.txt");
    std::fs::write(&path, b"abc\xff").expect("write");
    let output = binary()
        .arg("check")
        .arg(&path)
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("not valid UTF-8"));
}

#[test]
fn serve_reports_all_configuration_errors() {
    let output = binary()
        .args([
            "serve",
            "--listen",
            "nowhere",
            "--openai-upstream",
            "ftp://x",
        ])
        .env_remove("AGENT_SIDECAR_LISTEN")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("\"nowhere\""), "{stderr}");
    assert!(stderr.contains("ftp://x"), "{stderr}");
}

#[test]
fn serve_rejects_missing_policy_path() {
    let output = binary()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--policy",
            "/nonexistent/policy.yaml",
        ])
        .output()
        .expect("binary runs");
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("/nonexistent/policy.yaml"));
}
