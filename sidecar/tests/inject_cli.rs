//! `agent-sidecar inject` run as a GitOps pipeline runs it: YAML in, injected YAML out.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const IMAGE: &str = "registry.example.com/agent-sidecar:ci";

const SERVICE: &str = "# The agent's Service; inject leaves it byte for byte.
apiVersion: v1
kind: Service
metadata:
  name: support-agent
spec:
  selector: {app: support-agent}
  ports: [{port: 80, targetPort: 8080}]
";

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: support-agent
spec:
  selector:
    matchLabels: {app: support-agent}
  template:
    metadata:
      labels: {app: support-agent}
      annotations:
        agent-sidecar.io/inject: \"true\"
        agent-sidecar.io/policy: support-policy
    spec:
      containers:
        - name: agent
          image: registry.example.com/support-agent:1.0.0
          env:
            - {name: LOG_LEVEL, value: info}
";

const OPTED_OUT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: batch-loader
spec:
  selector:
    matchLabels: {app: batch-loader}
  template:
    metadata:
      labels: {app: batch-loader}
      annotations: {agent-sidecar.io/inject: \"false\"}
    spec:
      containers: [{name: loader, image: registry.example.com/loader:2}]
";

const CRONJOB: &str = "apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly-eval
spec:
  schedule: \"0 3 * * *\"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: eval, image: registry.example.com/eval:3}]
";

const OTHER_WORKLOADS: &str = "apiVersion: batch/v1
kind: Job
metadata: {name: backfill}
spec:
  template:
    spec:
      restartPolicy: OnFailure
      containers: [{name: backfill, image: registry.example.com/backfill:1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: memory}
spec:
  serviceName: memory
  selector: {matchLabels: {app: memory}}
  template:
    metadata: {labels: {app: memory}}
    spec:
      containers: [{name: memory, image: registry.example.com/memory:1}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      containers: [{name: node-agent, image: registry.example.com/node-agent:1}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: canary}
spec:
  selector: {matchLabels: {app: canary}}
  template:
    metadata: {labels: {app: canary}}
    spec:
      containers: [{name: canary, image: registry.example.com/canary:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: scratch}
spec:
  containers: [{name: scratch, image: registry.example.com/scratch:1}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: listed}
    spec:
      selector: {matchLabels: {app: listed}}
      template:
        metadata: {labels: {app: listed}}
        spec:
          containers: [{name: listed, image: registry.example.com/listed:1}]
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: listed-config}
    data: {key: value}
";

fn inject(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .arg("inject")
        .args(["--sidecar-image", IMAGE])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A usage error exits before reading its input, which closes the pipe early; the
    // exit status and standard error still report the problem.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    child.wait_with_output().expect("binary finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .map(|document| serde_norway::from_str(document).expect("each output document is YAML"))
        .collect()
}

fn init_container_names(template: &Value) -> Vec<String> {
    template["spec"]["initContainers"]
        .as_array()
        .map(|containers| {
            containers
                .iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn manifest() -> String {
    [SERVICE, DEPLOYMENT, OPTED_OUT, CRONJOB, OTHER_WORKLOADS].join("---\n")
}

#[test]
fn inject_rewrites_workloads_only() {
    let output = inject(&[], &manifest());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);

    assert!(
        stdout.starts_with(SERVICE),
        "the Service, comment included, is copied unchanged:\n{stdout}"
    );
    assert!(
        stdout.contains(OPTED_OUT),
        "the opted-out Deployment is copied unchanged"
    );
    let docs = documents(&stdout);
    assert_eq!(docs.len(), 10);

    let deployment = &docs[1]["spec"]["template"];
    assert_eq!(init_container_names(deployment), vec!["agent-sidecar"]);
    let sidecar = &deployment["spec"]["initContainers"][0];
    assert_eq!(sidecar["image"], IMAGE);
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(
        deployment["spec"]["volumes"][0]["configMap"]["name"],
        "support-policy"
    );
    let env = &deployment["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["name"], "LOG_LEVEL");
    assert_eq!(env[1]["name"], "OPENAI_BASE_URL");
    assert_eq!(env[1]["value"], "http://127.0.0.1:14100/v1");
    assert_eq!(
        deployment["metadata"]["labels"]["agent-sidecar.io/injected"],
        "true"
    );
    assert_eq!(
        docs[1]["spec"]["selector"]["matchLabels"],
        serde_json::json!({"app": "support-agent"}),
        "the selector is not touched"
    );

    let cron = &docs[3]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(init_container_names(cron), vec!["agent-sidecar"]);
    for (index, kind) in [
        (4, "Job"),
        (5, "StatefulSet"),
        (6, "DaemonSet"),
        (7, "ReplicaSet"),
    ] {
        assert_eq!(docs[index]["kind"], kind);
        assert_eq!(
            init_container_names(&docs[index]["spec"]["template"]),
            vec!["agent-sidecar"],
            "{kind}"
        );
    }
    assert_eq!(init_container_names(&docs[8]), vec!["agent-sidecar"], "Pod");
    let list = &docs[9]["items"];
    assert_eq!(
        init_container_names(&list[0]["spec"]["template"]),
        vec!["agent-sidecar"]
    );
    assert_eq!(list[1]["data"]["key"], "value");
}

#[test]
fn inject_twice_changes_nothing() {
    let first = inject(&[], &manifest());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = inject(&[], &text(&first.stdout));
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout), text(&first.stdout));
}

#[test]
fn require_annotation_injects_only_opted_in() {
    let output = inject(&["--require-annotation"], &manifest());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let docs = documents(&text(&output.stdout));
    assert_eq!(
        init_container_names(&docs[1]["spec"]["template"]),
        vec!["agent-sidecar"]
    );
    let unannotated = [
        (
            "CronJob",
            &docs[3]["spec"]["jobTemplate"]["spec"]["template"],
        ),
        ("Job", &docs[4]["spec"]["template"]),
        ("StatefulSet", &docs[5]["spec"]["template"]),
        ("DaemonSet", &docs[6]["spec"]["template"]),
        ("ReplicaSet", &docs[7]["spec"]["template"]),
        ("Pod", &docs[8]),
        ("List item", &docs[9]["items"][0]["spec"]["template"]),
    ];
    for (kind, template) in unannotated {
        assert!(
            template["spec"]["containers"].is_array(),
            "{kind}: the template is where the test looks"
        );
        assert!(
            init_container_names(template).is_empty(),
            "{kind} is not injected"
        );
    }
}

#[test]
fn inject_reads_file_argument() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deployment.yaml");
    std::fs::write(&path, DEPLOYMENT).expect("write manifest");
    let output = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["inject", "-f"])
        .arg(&path)
        .output()
        .expect("binary runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("name: agent-sidecar"));
}

#[test]
fn invalid_annotation_fails_with_location() {
    let broken = DEPLOYMENT.replace(
        "agent-sidecar.io/policy: support-policy",
        "agent-sidecar.io/memory-limit: 1 GB",
    );
    let output = inject(&[], &format!("{SERVICE}---\n{broken}"));
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no partial output");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("document 2"), "{stderr}");
    assert!(stderr.contains("Deployment/support-agent"), "{stderr}");
    assert!(
        stderr.contains("agent-sidecar.io/memory-limit has invalid value \"1 GB\""),
        "{stderr}"
    );
}

#[test]
fn invalid_flags_are_usage_errors() {
    let output = inject(
        &["--cpu-limit", "2 cores", "--sidecar-log-format", "xml"],
        DEPLOYMENT,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("CPU limit \"2 cores\""), "{stderr}");
    assert!(stderr.contains("log format \"xml\""), "{stderr}");
}

#[test]
fn host_network_workload_is_skipped_with_warning() {
    let host = DEPLOYMENT.replace(
        "    spec:\n      containers:",
        "    spec:\n      hostNetwork: true\n      containers:",
    );
    let output = inject(&[], &host);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), host);
    let stderr = text(&output.stderr);
    assert!(
        stderr
            .contains("warning: Deployment/support-agent: agent-sidecar not injected: hostNetwork"),
        "{stderr}"
    );
}

#[test]
fn invalid_yaml_is_reported() {
    let output = inject(&[], "apiVersion: v1\nkind: [unclosed\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("document 1: invalid YAML"));
}
