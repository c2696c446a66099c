//! The mutation run on AdmissionReview bodies shaped like the API server's: the patch
//! from each response is applied with `json-patch` and the resulting pod is checked field
//! by field.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use json_patch::Patch;
use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::admission::{Reviewed, review};
use super::mutate::{NamespaceInjection, Outcome, SkipReason, mutate};
use super::settings::{
    CREDENTIALS_SECRET_ANNOTATION, InjectionSettings, RedisSetting, SidecarMode,
};

const DEPLOYMENT_POD: &str = include_str!("testdata/deployment-pod.json");
const BARE_POD: &str = include_str!("testdata/bare-pod.json");
const JOB_POD: &str = include_str!("testdata/job-pod.json");
const CRONJOB_POD: &str = include_str!("testdata/cronjob-pod.json");
const INIT_CONTAINER_POD: &str = include_str!("testdata/init-container-pod.json");
const INJECTED_POD: &str = include_str!("testdata/injected-pod.json");
const HOST_NETWORK_POD: &str = include_str!("testdata/hostnetwork-pod.json");
const OPT_OUT_POD: &str = include_str!("testdata/optout-pod.json");

const IMAGE: &str = "registry.example.com/agent-sidecar:test";

fn settings() -> InjectionSettings {
    InjectionSettings {
        image: IMAGE.to_owned(),
        ..InjectionSettings::default()
    }
}

/// A review response, and the pod as the API server would store it after the patch.
struct Admitted {
    reviewed: Reviewed,
    response: Value,
    pod_json: Value,
    pod: Pod,
}

fn admit(body: &str, namespace: NamespaceInjection, settings: &InjectionSettings) -> Admitted {
    let reviewed = review(body.as_bytes(), namespace, settings).expect("the review is valid");
    let envelope = reviewed.to_json();
    assert_eq!(envelope["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(envelope["kind"], "AdmissionReview");
    let response = envelope["response"].clone();
    let request: Value = serde_json::from_str(body).expect("fixture is JSON");
    assert_eq!(response["uid"], request["request"]["uid"], "uid is echoed");

    let mut pod_json = request["request"]["object"].clone();
    if let Some(encoded) = response.get("patch") {
        assert_eq!(response["patchType"], "JSONPatch");
        let encoded = encoded.as_str().expect("the patch is a base64 string");
        let bytes = BASE64.decode(encoded).expect("the patch is valid base64");
        let patch: Patch = serde_json::from_slice(&bytes).expect("the patch is a JSON Patch");
        json_patch::patch(&mut pod_json, &patch).expect("the patch applies to the pod");
    }
    let pod: Pod = serde_json::from_value(pod_json.clone()).expect("the result is a valid Pod");
    Admitted {
        reviewed,
        response,
        pod_json,
        pod,
    }
}

fn spec(pod: &Pod) -> &PodSpec {
    pod.spec.as_ref().expect("pod has a spec")
}

fn init_names(pod: &Pod) -> Vec<&str> {
    spec(pod)
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

fn container_names(pod: &Pod) -> Vec<&str> {
    spec(pod)
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect()
}

fn find<'a>(containers: &'a [Container], name: &str) -> &'a Container {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("container {name} exists"))
}

fn sidecar(pod: &Pod) -> &Container {
    let spec = spec(pod);
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == "agent-sidecar")
        .expect("the sidecar is in the pod")
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn env_names(container: &Container) -> Vec<&str> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect()
}

fn assert_points_at_sidecar(container: &Container) {
    let name = &container.name;
    assert_eq!(
        env_value(container, "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:14100/v1"),
        "{name}"
    );
    assert_eq!(
        env_value(container, "ANTHROPIC_BASE_URL"),
        Some("http://127.0.0.1:14100"),
        "{name}"
    );
    assert_eq!(
        env_value(container, "AGENT_SIDECAR_GRPC_ADDR"),
        Some("127.0.0.1:14101"),
        "{name}"
    );
}

fn assert_no_sidecar_env(container: &Container) {
    for name in [
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "AGENT_SIDECAR_GRPC_ADDR",
    ] {
        assert_eq!(
            env_value(container, name),
            None,
            "{} has {name}",
            container.name
        );
    }
}

fn status(pod: &Pod) -> Value {
    let text = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("agent-sidecar.io/status"))
        .expect("status annotation is set");
    serde_json::from_str(text).expect("status annotation is JSON")
}

fn assert_secure(container: &Container) {
    let context = container
        .security_context
        .as_ref()
        .expect("security context");
    assert_eq!(context.run_as_non_root, Some(true));
    assert_eq!(context.run_as_user, Some(65532));
    assert_eq!(context.read_only_root_filesystem, Some(true));
    assert_eq!(context.allow_privilege_escalation, Some(false));
    assert_eq!(context.privileged, Some(false));
    let drop = context
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .expect("capabilities dropped");
    assert_eq!(drop, vec!["ALL".to_owned()]);
    let seccomp = context.seccomp_profile.as_ref().expect("seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    let resources = container.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    let limits = resources.limits.as_ref().expect("limits");
    assert_eq!(requests["cpu"].0, "50m");
    assert_eq!(requests["memory"].0, "64Mi");
    assert_eq!(limits["cpu"].0, "1");
    assert_eq!(limits["memory"].0, "256Mi");
}

fn probe_path(probe: Option<&k8s_openapi::api::core::v1::Probe>) -> (String, IntOrString) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .expect("an HTTP probe");
    (get.path.clone().unwrap_or_default(), get.port.clone())
}

#[test]
fn deployment_pod_gets_native_sidecar() {
    let admitted = admit(DEPLOYMENT_POD, NamespaceInjection::NotEnabled, &settings());
    assert_eq!(admitted.reviewed.outcome, "injected");
    assert_eq!(admitted.response["allowed"], true);
    let pod = &admitted.pod;

    assert_eq!(init_names(pod), vec!["agent-sidecar"]);
    assert_eq!(container_names(pod), vec!["agent"]);
    let sidecar = sidecar(pod);
    assert_eq!(sidecar.image.as_deref(), Some(IMAGE));
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.command.as_deref(),
        Some(&["/usr/local/bin/agent-sidecar".to_owned()][..])
    );
    assert_eq!(sidecar.args.as_deref(), Some(&["serve".to_owned()][..]));
    let admin = IntOrString::Int(14190);
    assert_eq!(
        probe_path(sidecar.startup_probe.as_ref()),
        ("/startupz".to_owned(), admin.clone())
    );
    assert_eq!(
        probe_path(sidecar.readiness_probe.as_ref()),
        ("/readyz".to_owned(), admin.clone())
    );
    assert_eq!(
        probe_path(sidecar.liveness_probe.as_ref()),
        ("/livez".to_owned(), admin)
    );
    assert!(sidecar.lifecycle.is_none(), "native mode needs no hook");
    assert_secure(sidecar);

    assert_eq!(
        env_value(sidecar, "AGENT_SIDECAR_POLICY"),
        Some("/etc/agent-sidecar/policy")
    );
    assert_eq!(
        env_value(sidecar, "AGENT_SIDECAR_LISTEN"),
        Some("127.0.0.1:14100")
    );
    assert_eq!(
        env_value(sidecar, "AGENT_SIDECAR_GRPC_LISTEN"),
        Some("127.0.0.1:14101")
    );
    assert_eq!(
        env_value(sidecar, "AGENT_SIDECAR_ADMIN_LISTEN"),
        Some("0.0.0.0:14190")
    );
    assert_eq!(env_value(sidecar, "AGENT_SIDECAR_LOG_FORMAT"), Some("json"));
    assert_eq!(env_value(sidecar, "RUST_LOG"), Some("info"));
    let env = sidecar.env.as_ref().expect("sidecar env");
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").expect("POD_NAME");
    let field = pod_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("POD_NAME from the downward API");
    assert_eq!(field.field_path, "metadata.name");
    let key = env
        .iter()
        .find(|e| e.name == "OPENAI_API_KEY")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("OPENAI_API_KEY from a Secret");
    assert_eq!(key.name, "support-agent-llm");
    assert_eq!(key.key, "openai-api-key");
    assert_eq!(key.optional, Some(true));
    assert!(env_names(sidecar).contains(&"ANTHROPIC_API_KEY"));
    assert!(!env_names(sidecar).contains(&"AGENT_SIDECAR_REDIS_URL"));

    let mount = &sidecar.volume_mounts.as_ref().expect("policy mount")[0];
    assert_eq!(mount.name, "agent-sidecar-policy");
    assert_eq!(mount.mount_path, "/etc/agent-sidecar/policy");
    assert_eq!(mount.read_only, Some(true));
    let volumes = spec(pod).volumes.as_ref().expect("volumes");
    assert_eq!(volumes.len(), 2, "the service account volume is kept");
    assert!(volumes[0].name.starts_with("kube-api-access-"));
    let policy = volumes[1].config_map.as_ref().expect("ConfigMap volume");
    assert_eq!(policy.name, "support-agent-policy");

    let agent = find(&spec(pod).containers, "agent");
    assert_points_at_sidecar(agent);
    assert_eq!(env_value(agent, "LOG_LEVEL"), Some("info"), "own env kept");
    assert_eq!(
        admitted.pod_json["spec"]["containers"][0]["futureField"]["keptBy"], "the patch",
        "fields unknown to this build survive"
    );
    assert_eq!(spec(pod).tolerations.as_ref().map(Vec::len), Some(2));

    let labels = pod.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["agent-sidecar.io/injected"], "true");
    assert_eq!(labels["app.kubernetes.io/name"], "support-agent");
    let status = status(pod);
    assert_eq!(status["mode"], "native");
    assert_eq!(status["policy"], "support-agent-policy");
    assert_eq!(status["image"], IMAGE);
    assert_eq!(status["envContainers"], serde_json::json!(["agent"]));
    assert!(
        pod.metadata.managed_fields.is_some(),
        "managed fields are untouched"
    );
    assert_eq!(
        admitted.response["auditAnnotations"]["injection"],
        "injected"
    );
}

#[test]
fn bare_pod_without_labels_or_volumes() {
    let admitted = admit(BARE_POD, NamespaceInjection::NotEnabled, &settings());
    assert_eq!(admitted.reviewed.outcome, "injected");
    let pod = &admitted.pod;
    assert_eq!(init_names(pod), vec!["agent-sidecar"]);
    let agent = find(&spec(pod).containers, "agent");
    assert_points_at_sidecar(agent);
    assert_eq!(env_names(agent).len(), 3);
    assert_eq!(
        pod.metadata.labels.as_ref().expect("labels created")["agent-sidecar.io/injected"],
        "true"
    );
    // No policy ConfigMap: the sidecar runs its embedded default policy.
    assert!(spec(pod).volumes.is_none());
    let sidecar = sidecar(pod);
    assert!(sidecar.volume_mounts.is_none());
    assert_eq!(env_value(sidecar, "AGENT_SIDECAR_POLICY"), None);
    assert!(!env_names(sidecar).contains(&"OPENAI_API_KEY"));
    assert_eq!(status(pod).get("policy"), None);
}

#[test]
fn job_pod_uses_native_sidecar_so_job_completes() {
    let settings = InjectionSettings {
        credentials_secret: Some("llm-keys".to_owned()),
        ..settings()
    };
    let admitted = admit(JOB_POD, NamespaceInjection::NotEnabled, &settings);
    assert_eq!(admitted.reviewed.outcome, "injected");
    let pod = &admitted.pod;
    assert_eq!(spec(pod).restart_policy.as_deref(), Some("Never"));
    // An init container with restartPolicy Always is stopped by the kubelet once the
    // regular containers exit, so the pod reaches Succeeded and the Job completes.
    assert_eq!(init_names(pod), vec!["agent-sidecar"]);
    assert_eq!(container_names(pod), vec!["eval"]);
    assert_eq!(sidecar(pod).restart_policy.as_deref(), Some("Always"));
    let eval = find(&spec(pod).containers, "eval");
    assert_points_at_sidecar(eval);
    assert_eq!(
        env_names(eval).len(),
        3,
        "an empty env list gains three entries"
    );
    assert!(
        admitted.reviewed.warnings.is_empty(),
        "{:?}",
        admitted.reviewed.warnings
    );
    let finalizers = pod.metadata.finalizers.as_ref().expect("finalizers kept");
    assert_eq!(
        finalizers,
        &vec!["batch.kubernetes.io/job-tracking".to_owned()]
    );
}

#[test]
fn job_pod_in_classic_mode_warns() {
    let settings = InjectionSettings {
        mode: SidecarMode::Classic,
        ..settings()
    };
    let admitted = admit(JOB_POD, NamespaceInjection::NotEnabled, &settings);
    assert_eq!(admitted.reviewed.outcome, "injected");
    let warnings = &admitted.reviewed.warnings;
    assert!(
        warnings.iter().any(|w| w.contains("never completes")),
        "{warnings:?}"
    );
    assert_eq!(admitted.response["warnings"][0], warnings[0].as_str());
}

#[test]
fn cronjob_pod_in_enabled_namespace() {
    let not_enabled = admit(CRONJOB_POD, NamespaceInjection::NotEnabled, &settings());
    assert_eq!(not_enabled.reviewed.reason, "not_requested");
    assert!(not_enabled.response.get("patch").is_none());
    assert!(not_enabled.response.get("warnings").is_none());

    let admitted = admit(CRONJOB_POD, NamespaceInjection::Enabled, &settings());
    assert_eq!(admitted.reviewed.outcome, "injected");
    let pod = &admitted.pod;
    assert_eq!(spec(pod).restart_policy.as_deref(), Some("OnFailure"));
    assert_eq!(init_names(pod), vec!["agent-sidecar"]);
    assert_points_at_sidecar(find(&spec(pod).containers, "report"));
    let annotations = pod.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(
        annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"],
        "2025-06-01T00:00:00Z"
    );
    assert!(annotations.contains_key("agent-sidecar.io/status"));
}

#[test]
fn init_container_that_calls_sidecar_starts_after_it() {
    let admitted = admit(
        INIT_CONTAINER_POD,
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    assert_eq!(admitted.reviewed.outcome, "injected");
    let pod = &admitted.pod;
    // The annotation names warm-cache: the sidecar goes right before it, and the mesh
    // and wait-for-db containers keep their places and order.
    assert_eq!(
        init_names(pod),
        vec!["istio-init", "wait-for-db", "agent-sidecar", "warm-cache"]
    );
    let init = spec(pod)
        .init_containers
        .as_deref()
        .expect("init containers");
    let warm = find(init, "warm-cache");
    assert_points_at_sidecar(warm);
    assert_eq!(env_value(warm, "CACHE_DIR"), Some("/cache"));
    assert_no_sidecar_env(find(init, "wait-for-db"));
    assert_no_sidecar_env(find(init, "istio-init"));
    assert_points_at_sidecar(find(&spec(pod).containers, "agent"));
    assert_eq!(
        status(pod)["envContainers"],
        serde_json::json!(["warm-cache", "agent"])
    );
}

#[test]
fn sidecar_goes_after_mesh_init_containers_by_default() {
    let mut body: Value = serde_json::from_str(INIT_CONTAINER_POD).expect("fixture is JSON");
    body["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"agent-sidecar.io/inject": "true"});
    let admitted = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    let pod = &admitted.pod;
    assert_eq!(
        init_names(pod),
        vec!["istio-init", "agent-sidecar", "wait-for-db", "warm-cache"]
    );
    let init = spec(pod)
        .init_containers
        .as_deref()
        .expect("init containers");
    assert_points_at_sidecar(find(init, "wait-for-db"));
    assert_points_at_sidecar(find(init, "warm-cache"));
    assert_no_sidecar_env(find(init, "istio-init"));
}

#[test]
fn already_injected_pod_is_unchanged() {
    let admitted = admit(INJECTED_POD, NamespaceInjection::Enabled, &settings());
    assert_eq!(admitted.reviewed.outcome, "skipped");
    assert_eq!(admitted.reviewed.reason, "already_injected");
    assert_eq!(admitted.response["allowed"], true);
    assert!(admitted.response.get("patch").is_none());
    let original: Value = serde_json::from_str(INJECTED_POD).expect("fixture is JSON");
    assert_eq!(admitted.pod_json, original["request"]["object"]);
    assert_eq!(init_names(&admitted.pod), vec!["agent-sidecar"]);
}

#[test]
fn second_admission_of_injected_pod_changes_nothing() {
    let first = admit(DEPLOYMENT_POD, NamespaceInjection::Enabled, &settings());
    let mut body: Value = serde_json::from_str(DEPLOYMENT_POD).expect("fixture is JSON");
    body["request"]["object"] = first.pod_json.clone();
    let second = admit(&body.to_string(), NamespaceInjection::Enabled, &settings());
    assert_eq!(second.reviewed.reason, "already_injected");
    assert_eq!(second.pod_json, first.pod_json);
}

#[test]
fn existing_sidecar_container_is_not_duplicated() {
    let mut body: Value = serde_json::from_str(INJECTED_POD).expect("fixture is JSON");
    let annotations = &mut body["request"]["object"]["metadata"]["annotations"];
    annotations
        .as_object_mut()
        .expect("annotations")
        .remove("agent-sidecar.io/status");
    let admitted = admit(&body.to_string(), NamespaceInjection::Enabled, &settings());
    assert_eq!(admitted.reviewed.reason, "container_exists");
    assert!(admitted.response.get("patch").is_none());
    assert_eq!(init_names(&admitted.pod), vec!["agent-sidecar"]);
    assert!(admitted.reviewed.warnings[0].contains("already has a container named"));
}

#[test]
fn host_network_pod_is_skipped_with_reason() {
    let admitted = admit(
        HOST_NETWORK_POD,
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    assert_eq!(admitted.reviewed.outcome, "skipped");
    assert_eq!(admitted.reviewed.reason, "host_network");
    assert_eq!(admitted.response["allowed"], true);
    assert!(admitted.response.get("patch").is_none());
    let warning = admitted.response["warnings"][0]
        .as_str()
        .expect("a warning explains the skip");
    assert!(warning.contains("hostNetwork"), "{warning}");
    assert!(init_names(&admitted.pod).is_empty());
}

#[test]
fn pod_opt_out_overrides_namespace_opt_in() {
    let admitted = admit(OPT_OUT_POD, NamespaceInjection::Enabled, &settings());
    assert_eq!(admitted.reviewed.reason, "disabled_by_annotation");
    assert!(admitted.response.get("patch").is_none());
    assert!(admitted.response.get("warnings").is_none());
    assert!(init_names(&admitted.pod).is_empty());
    assert_eq!(container_names(&admitted.pod), vec!["agent"]);
}

#[test]
fn classic_mode_puts_sidecar_first_with_wait_hook() {
    let mut body: Value = serde_json::from_str(DEPLOYMENT_POD).expect("fixture is JSON");
    body["request"]["object"]["metadata"]["annotations"]["agent-sidecar.io/mode"] =
        Value::from("classic");
    let admitted = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    let pod = &admitted.pod;
    assert_eq!(container_names(pod), vec!["agent-sidecar", "agent"]);
    assert!(init_names(pod).is_empty());
    let sidecar = sidecar(pod);
    assert_eq!(sidecar.restart_policy, None);
    assert!(sidecar.startup_probe.is_none());
    let command = sidecar
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("postStart exec hook");
    assert_eq!(
        command[..4],
        [
            "/usr/local/bin/agent-sidecar",
            "wait-ready",
            "--url",
            "http://127.0.0.1:14190/readyz"
        ]
    );
    // The env patch addressed the app container by its index before the sidecar moved it.
    assert_points_at_sidecar(find(&spec(pod).containers, "agent"));
    assert_no_sidecar_env(sidecar);
    assert_eq!(status(pod)["mode"], "classic");
}

#[test]
fn missing_credentials_secret_warns() {
    let admitted = admit(JOB_POD, NamespaceInjection::NotEnabled, &settings());
    assert_eq!(admitted.reviewed.outcome, "injected");
    assert!(
        admitted
            .reviewed
            .warnings
            .iter()
            .any(|w| w.contains("no credentials Secret")
                && w.contains(CREDENTIALS_SECRET_ANNOTATION)),
        "{:?}",
        admitted.reviewed.warnings
    );
}

#[test]
fn annotations_override_settings() {
    let mut body: Value = serde_json::from_str(BARE_POD).expect("fixture is JSON");
    body["request"]["object"]["metadata"]["annotations"] = serde_json::json!({
        "agent-sidecar.io/inject": "true",
        "agent-sidecar.io/image": "mirror.example.com/agent-sidecar:0.1.0",
        "agent-sidecar.io/cpu-request": "100m",
        "agent-sidecar.io/memory-limit": "512Mi",
        "agent-sidecar.io/log-level": "debug",
        "agent-sidecar.io/policy": "strict-policy",
        "agent-sidecar.io/openai-upstream": "http://vllm.models.svc:8000/v1",
    });
    let settings = InjectionSettings {
        redis: RedisSetting::Secret("agent-redis".to_owned()),
        credentials_secret: Some("team-llm-keys".to_owned()),
        ..settings()
    };
    let admitted = admit(&body.to_string(), NamespaceInjection::NotEnabled, &settings);
    let sidecar = sidecar(&admitted.pod);
    assert_eq!(
        sidecar.image.as_deref(),
        Some("mirror.example.com/agent-sidecar:0.1.0")
    );
    let resources = sidecar.resources.as_ref().expect("resources");
    assert_eq!(
        resources.requests.as_ref().expect("requests")["cpu"].0,
        "100m"
    );
    assert_eq!(
        resources.limits.as_ref().expect("limits")["memory"].0,
        "512Mi"
    );
    assert_eq!(resources.limits.as_ref().expect("limits")["cpu"].0, "1");
    assert_eq!(env_value(sidecar, "RUST_LOG"), Some("debug"));
    assert_eq!(
        env_value(sidecar, "AGENT_SIDECAR_OPENAI_UPSTREAM"),
        Some("http://vllm.models.svc:8000/v1")
    );
    let env = sidecar.env.as_ref().expect("env");
    let redis = env
        .iter()
        .find(|e| e.name == "AGENT_SIDECAR_REDIS_URL")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("Redis URL from a Secret");
    assert_eq!(
        (redis.name.as_str(), redis.key.as_str()),
        ("agent-redis", "redis-url")
    );
    let key = env
        .iter()
        .find(|e| e.name == "ANTHROPIC_API_KEY")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("Anthropic key from a Secret");
    assert_eq!(key.name, "team-llm-keys");
    let volumes = spec(&admitted.pod).volumes.as_ref().expect("volumes");
    assert_eq!(
        volumes[0].config_map.as_ref().expect("ConfigMap").name,
        "strict-policy"
    );
}

#[test]
fn existing_base_url_is_kept_unless_overridden() {
    let mut body: Value = serde_json::from_str(DEPLOYMENT_POD).expect("fixture is JSON");
    body["request"]["object"]["spec"]["containers"][0]["env"] = serde_json::json!([
        {"name": "OPENAI_BASE_URL", "value": "https://api.openai.com/v1"},
        {"name": "LOG_LEVEL", "value": "info"},
    ]);
    let kept = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    let agent = find(&spec(&kept.pod).containers, "agent");
    assert_eq!(
        env_value(agent, "OPENAI_BASE_URL"),
        Some("https://api.openai.com/v1")
    );
    assert_eq!(
        env_value(agent, "ANTHROPIC_BASE_URL"),
        Some("http://127.0.0.1:14100")
    );
    assert!(
        kept.reviewed.warnings[0].contains("already sets OPENAI_BASE_URL"),
        "{:?}",
        kept.reviewed.warnings
    );
    assert_eq!(status(&kept.pod)["envContainers"], serde_json::json!([]));

    body["request"]["object"]["metadata"]["annotations"]["agent-sidecar.io/override-env"] =
        Value::from("true");
    let replaced = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    let agent = find(&spec(&replaced.pod).containers, "agent");
    assert_points_at_sidecar(agent);
    assert_eq!(env_names(agent)[0], "OPENAI_BASE_URL", "replaced in place");
    assert_eq!(env_names(agent).len(), 4);
    assert!(replaced.reviewed.warnings.is_empty());
}

#[test]
fn env_containers_annotation_selects_recipients() {
    let mut body: Value = serde_json::from_str(DEPLOYMENT_POD).expect("fixture is JSON");
    let object = &mut body["request"]["object"];
    let mut second = object["spec"]["containers"][0].clone();
    second["name"] = Value::from("metrics-exporter");
    second["ports"] = serde_json::json!([]);
    object["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(second);
    object["metadata"]["annotations"]["agent-sidecar.io/env-containers"] =
        Value::from("agent, missing");
    let admitted = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    let containers = &spec(&admitted.pod).containers;
    assert_points_at_sidecar(find(containers, "agent"));
    assert_no_sidecar_env(find(containers, "metrics-exporter"));
    let warnings = &admitted.reviewed.warnings;
    assert!(
        warnings.iter().any(|w| w.contains("\"missing\"")),
        "{warnings:?}"
    );
}

#[test]
fn invalid_annotations_deny_the_pod() {
    let mut body: Value = serde_json::from_str(BARE_POD).expect("fixture is JSON");
    body["request"]["object"]["metadata"]["annotations"] = serde_json::json!({
        "agent-sidecar.io/inject": "true",
        "agent-sidecar.io/cpu-limit": "2 cores",
        "agent-sidecar.io/mode": "sidecar",
        "agent-sidecar.io/policy": "Support_Policy",
    });
    let admitted = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    assert_eq!(admitted.reviewed.outcome, "rejected");
    assert_eq!(admitted.response["allowed"], false);
    assert!(admitted.response.get("patch").is_none());
    let message = admitted.response["status"]["message"]
        .as_str()
        .expect("a denial message");
    for part in [
        "agent-sidecar.io/cpu-limit",
        "\"2 cores\"",
        "agent-sidecar.io/mode",
        "agent-sidecar.io/policy",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
}

#[test]
fn unknown_annotation_and_invalid_inject_value_warn() {
    let mut body: Value = serde_json::from_str(BARE_POD).expect("fixture is JSON");
    body["request"]["object"]["metadata"]["annotations"] = serde_json::json!({
        "agent-sidecar.io/inject": "yes",
        "agent-sidecar.io/cpu": "1",
    });
    let not_requested = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    assert_eq!(not_requested.reviewed.reason, "not_requested");
    assert!(not_requested.reviewed.warnings[0].contains("invalid value \"yes\""));

    let injected = admit(&body.to_string(), NamespaceInjection::Enabled, &settings());
    assert_eq!(injected.reviewed.outcome, "injected");
    assert!(
        injected
            .reviewed
            .warnings
            .iter()
            .any(|w| w.contains("unknown annotation agent-sidecar.io/cpu")),
        "{:?}",
        injected.reviewed.warnings
    );
}

#[test]
fn declared_sidecar_port_skips_injection() {
    let mut body: Value = serde_json::from_str(DEPLOYMENT_POD).expect("fixture is JSON");
    body["request"]["object"]["spec"]["containers"][0]["ports"] =
        serde_json::json!([{"containerPort": 14190, "protocol": "TCP"}]);
    let admitted = admit(
        &body.to_string(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    assert_eq!(admitted.reviewed.reason, "port_conflict");
    assert!(admitted.response.get("patch").is_none());
}

#[test]
fn non_pod_and_update_reviews_pass_through() {
    let mut body: Value = serde_json::from_str(DEPLOYMENT_POD).expect("fixture is JSON");
    body["request"]["operation"] = Value::from("UPDATE");
    let reviewed = review(
        body.to_string().as_bytes(),
        NamespaceInjection::Enabled,
        &settings(),
    )
    .expect("valid review");
    assert_eq!(reviewed.reason, "not_create");

    body["request"]["operation"] = Value::from("CREATE");
    body["request"]["kind"] =
        serde_json::json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let reviewed = review(
        body.to_string().as_bytes(),
        NamespaceInjection::Enabled,
        &settings(),
    )
    .expect("valid review");
    assert_eq!(reviewed.reason, "unsupported_kind");
}

#[test]
fn malformed_reviews_are_errors() {
    let cases: [(&str, &str); 4] = [
        ("{not json", "invalid AdmissionReview"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#,
            "admission.k8s.io/v1",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "request field is missing",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1"}}"#,
            "missing field",
        ),
    ];
    for (body, expected) in cases {
        let error = review(body.as_bytes(), NamespaceInjection::Enabled, &settings())
            .expect_err("a malformed review is an error");
        let message = error.to_string();
        assert!(message.contains(expected), "{body}: {message}");
    }

    let mut body: Value = serde_json::from_str(BARE_POD).expect("fixture is JSON");
    body["request"]["object"]["spec"]["containers"] = Value::from("agent");
    let error = review(
        body.to_string().as_bytes(),
        NamespaceInjection::Enabled,
        &settings(),
    )
    .expect_err("an invalid pod is an error");
    assert!(error.to_string().contains("not a valid Pod"), "{error}");
}

#[test]
fn template_without_metadata_gets_it() {
    let spec = PodSpec {
        containers: vec![Container {
            name: "agent".to_owned(),
            image: Some("agent:1".to_owned()),
            ..Container::default()
        }],
        ..PodSpec::default()
    };
    let mut document = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {"template": {"spec": serde_json::to_value(&spec).expect("spec serializes")}},
    });
    let base = PointerBuf::from_tokens(["spec", "template"]);
    let mutation = mutate(
        None,
        Some(&spec),
        &base,
        NamespaceInjection::Enabled,
        &settings(),
    );
    assert_eq!(
        mutation.outcome,
        Outcome::Injected {
            mode: SidecarMode::Native
        }
    );
    json_patch::patch(&mut document, &mutation.patch).expect("patch applies");
    let template = &document["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["agent-sidecar.io/injected"],
        "true"
    );
    assert!(template["metadata"]["annotations"]["agent-sidecar.io/status"].is_string());
    assert_eq!(
        template["spec"]["initContainers"][0]["name"],
        "agent-sidecar"
    );
}

#[test]
fn missing_spec_is_skipped() {
    let metadata = ObjectMeta {
        annotations: Some(
            [("agent-sidecar.io/inject".to_owned(), "true".to_owned())]
                .into_iter()
                .collect(),
        ),
        ..ObjectMeta::default()
    };
    let mutation = mutate(
        Some(&metadata),
        None,
        &PointerBuf::root(),
        NamespaceInjection::NotEnabled,
        &settings(),
    );
    assert_eq!(mutation.outcome, Outcome::Skipped(SkipReason::NoPodSpec));
    assert!(mutation.patch.is_empty());
}
