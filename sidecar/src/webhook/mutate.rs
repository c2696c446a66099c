//! The pod mutation: a pure function from a pod (or pod template), the namespace's
//! opt-in and the injection settings to a JSON Patch, shared by the admission webhook
//! and the offline `inject` command.
//!
//! The patch only adds or replaces what injection owns and addresses array elements by
//! index, so fields this build's `k8s-openapi` types do not know survive untouched.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::{Value, json};

use super::container::{PodSettings, app_env, policy_volume, sidecar_container};
use super::settings::{
    ADMIN_PORT, ANNOTATION_PREFIX, ANTHROPIC_UPSTREAM_ANNOTATION, CPU_LIMIT_ANNOTATION,
    CPU_REQUEST_ANNOTATION, CREDENTIALS_SECRET_ANNOTATION, ENV_CONTAINERS_ANNOTATION, GRPC_PORT,
    IMAGE_ANNOTATION, INIT_CONTAINERS_ANNOTATION, INJECT_ANNOTATION, INJECTED_LABEL,
    InjectionSettings, LOG_LEVEL_ANNOTATION, MEMORY_LIMIT_ANNOTATION, MEMORY_REQUEST_ANNOTATION,
    MESH_INIT_CONTAINERS, MODE_ANNOTATION, OPENAI_UPSTREAM_ANNOTATION, OVERRIDE_ENV_ANNOTATION,
    POLICY_ANNOTATION, POLICY_VOLUME, PROXY_PORT, SIDECAR_CONTAINER, STATUS_ANNOTATION,
    SidecarMode, USER_ANNOTATIONS, is_dns_subdomain, is_http_url, is_image_reference, is_log_level,
    is_quantity,
};

/// Whether the pod's namespace carries `agent-sidecar.io/inject=enabled`. The webhook
/// learns it from which of its two endpoints the API server called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceInjection {
    Enabled,
    NotEnabled,
}

/// Reason a pod was left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Neither the pod nor its namespace asked for injection.
    NotRequested,
    /// The pod's annotation is `"false"`, which overrides the namespace label.
    DisabledByAnnotation,
    /// The status annotation shows an earlier injection.
    AlreadyInjected,
    /// A container named `agent-sidecar` is already there.
    ContainerExists,
    /// The pod shares the node's network, where one sidecar's loopback ports would
    /// collide with every other such pod's on the node.
    HostNetwork,
    /// A container declares one of the sidecar's ports.
    PortConflict,
    /// The pod already has a volume named `agent-sidecar-policy`.
    VolumeConflict,
    /// The object has no pod spec.
    NoPodSpec,
}

impl SkipReason {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotRequested => "not_requested",
            SkipReason::DisabledByAnnotation => "disabled_by_annotation",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::ContainerExists => "container_exists",
            SkipReason::HostNetwork => "host_network",
            SkipReason::PortConflict => "port_conflict",
            SkipReason::VolumeConflict => "volume_conflict",
            SkipReason::NoPodSpec => "no_pod_spec",
        }
    }
}

/// Decision of the mutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected {
        mode: SidecarMode,
    },
    Skipped(SkipReason),
    /// The pod asked for injection with settings that cannot work; every problem is
    /// listed. The webhook denies such a pod so the mistake surfaces at once.
    Rejected(Vec<String>),
}

/// The result of [`mutate`]: the decision, the patch (empty unless injected) and
/// warnings for the client that created the pod.
#[derive(Clone, Debug)]
pub struct Mutation {
    pub outcome: Outcome,
    pub patch: Vec<PatchOperation>,
    pub warnings: Vec<String>,
}

impl Mutation {
    fn skipped(reason: SkipReason, warnings: Vec<String>) -> Mutation {
        Mutation {
            outcome: Outcome::Skipped(reason),
            patch: Vec::new(),
            warnings,
        }
    }
}

/// The record written to the status annotation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    version: &'static str,
    mode: &'static str,
    container: &'static str,
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    env_containers: Vec<&'a str>,
}

/// Decides whether to inject the sidecar into a pod and returns the patch that does it.
///
/// `metadata` and `spec` belong to the pod or to a workload's pod template. `base` is
/// their location in the document the patch applies to: the root for a Pod,
/// `/spec/template` for a Deployment. `metadata` is `None` when the template has no
/// `metadata` key, so the patch creates it.
pub fn mutate(
    metadata: Option<&ObjectMeta>,
    spec: Option<&PodSpec>,
    base: &PointerBuf,
    namespace: NamespaceInjection,
    settings: &InjectionSettings,
) -> Mutation {
    let empty = BTreeMap::new();
    let annotations = metadata
        .and_then(|m| m.annotations.as_ref())
        .unwrap_or(&empty);
    let mut warnings = Vec::new();

    if annotations.contains_key(STATUS_ANNOTATION) {
        return Mutation::skipped(SkipReason::AlreadyInjected, warnings);
    }
    match requested(annotations, namespace, &mut warnings) {
        Request::Yes => {}
        Request::No(reason) => return Mutation::skipped(reason, warnings),
    }
    let Some(spec) = spec else {
        warnings.push("agent-sidecar not injected: the object has no pod spec".to_owned());
        return Mutation::skipped(SkipReason::NoPodSpec, warnings);
    };
    if let Some(reason) = conflict(spec) {
        warnings.push(format!("agent-sidecar not injected: {}", explain(reason)));
        return Mutation::skipped(reason, warnings);
    }
    let pod_settings = match resolve_settings(annotations, settings, &mut warnings) {
        Ok(pod_settings) => pod_settings,
        Err(problems) => {
            return Mutation {
                outcome: Outcome::Rejected(problems),
                patch: Vec::new(),
                warnings,
            };
        }
    };
    let patch = build_patch(
        metadata,
        spec,
        base,
        annotations,
        &pod_settings,
        &mut warnings,
    );
    if pod_settings.credentials_secret.is_none() {
        warnings.push(format!(
            "no credentials Secret: the sidecar holds no provider key and forwards the agent's \
             own; set annotation {CREDENTIALS_SECRET_ANNOTATION} or the injector's credentials \
             Secret to keep the key in the sidecar"
        ));
    }
    Mutation {
        outcome: Outcome::Injected {
            mode: pod_settings.mode,
        },
        patch,
        warnings,
    }
}

enum Request {
    Yes,
    No(SkipReason),
}

fn requested(
    annotations: &BTreeMap<String, String>,
    namespace: NamespaceInjection,
    warnings: &mut Vec<String>,
) -> Request {
    let pod_choice = annotations.get(INJECT_ANNOTATION).and_then(|value| {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "enabled" => Some(true),
            "false" | "disabled" => Some(false),
            _ => {
                warnings.push(format!(
                    "annotation {INJECT_ANNOTATION} has invalid value {value:?} and is ignored; \
                     use \"true\" or \"false\""
                ));
                None
            }
        }
    });
    match (pod_choice, namespace) {
        (Some(false), _) => Request::No(SkipReason::DisabledByAnnotation),
        (Some(true), _) | (None, NamespaceInjection::Enabled) => Request::Yes,
        (None, NamespaceInjection::NotEnabled) => Request::No(SkipReason::NotRequested),
    }
}

fn conflict(spec: &PodSpec) -> Option<SkipReason> {
    let all_containers = || {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
    };
    if all_containers().any(|c| c.name == SIDECAR_CONTAINER) {
        return Some(SkipReason::ContainerExists);
    }
    if spec.host_network == Some(true) {
        return Some(SkipReason::HostNetwork);
    }
    let sidecar_ports = [PROXY_PORT, GRPC_PORT, ADMIN_PORT].map(i32::from);
    let port_taken = all_containers()
        .flat_map(|c| c.ports.iter().flatten())
        .any(|p| sidecar_ports.contains(&p.container_port));
    if port_taken {
        return Some(SkipReason::PortConflict);
    }
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == POLICY_VOLUME)
    {
        return Some(SkipReason::VolumeConflict);
    }
    None
}

fn explain(reason: SkipReason) -> String {
    match reason {
        SkipReason::ContainerExists => {
            format!("the pod already has a container named {SIDECAR_CONTAINER}")
        }
        SkipReason::HostNetwork => "hostNetwork pods share the node's loopback interface, so \
                                    the sidecar's ports would collide with other pods on the node"
            .to_owned(),
        SkipReason::PortConflict => format!(
            "a container declares port {PROXY_PORT}, {GRPC_PORT} or {ADMIN_PORT}, which the \
             sidecar uses"
        ),
        SkipReason::VolumeConflict => {
            format!("the pod already has a volume named {POLICY_VOLUME}")
        }
        SkipReason::NotRequested
        | SkipReason::DisabledByAnnotation
        | SkipReason::AlreadyInjected
        | SkipReason::NoPodSpec => reason.as_str().replace('_', " "),
    }
}

/// Applies the pod's annotations to the cluster settings. Unknown annotation keys under
/// the prefix produce warnings; invalid values produce errors, all of them together.
fn resolve_settings(
    annotations: &BTreeMap<String, String>,
    settings: &InjectionSettings,
    warnings: &mut Vec<String>,
) -> Result<PodSettings, Vec<String>> {
    let mut problems = Vec::new();
    for key in annotations.keys() {
        if key.starts_with(ANNOTATION_PREFIX) && !USER_ANNOTATIONS.contains(&key.as_str()) {
            warnings.push(format!("unknown annotation {key} is ignored"));
        }
    }
    let mut value = |key: &str, valid: fn(&str) -> bool, expected: &str| -> Option<String> {
        let raw = annotations.get(key)?;
        let trimmed = raw.trim();
        if valid(trimmed) {
            Some(trimmed.to_owned())
        } else {
            problems.push(format!(
                "annotation {key} has invalid value {raw:?}; expected {expected}"
            ));
            None
        }
    };

    let quantity = "a Kubernetes quantity such as 100m, 1 or 128Mi";
    let mut resources = settings.resources.clone();
    if let Some(v) = value(CPU_REQUEST_ANNOTATION, is_quantity, quantity) {
        resources.cpu_request = v;
    }
    if let Some(v) = value(CPU_LIMIT_ANNOTATION, is_quantity, quantity) {
        resources.cpu_limit = v;
    }
    if let Some(v) = value(MEMORY_REQUEST_ANNOTATION, is_quantity, quantity) {
        resources.memory_request = v;
    }
    if let Some(v) = value(MEMORY_LIMIT_ANNOTATION, is_quantity, quantity) {
        resources.memory_limit = v;
    }
    let object_name = "a ConfigMap or Secret name (lower-case letters, digits, '-' and '.')";
    let policy = value(POLICY_ANNOTATION, is_dns_subdomain, object_name)
        .or_else(|| settings.default_policy.clone());
    let credentials_secret = value(CREDENTIALS_SECRET_ANNOTATION, is_dns_subdomain, object_name)
        .or_else(|| settings.credentials_secret.clone());
    let image = value(IMAGE_ANNOTATION, is_image_reference, "an image reference")
        .unwrap_or_else(|| settings.image.clone());
    let log_level = value(
        LOG_LEVEL_ANNOTATION,
        is_log_level,
        "off, error, warn, info, debug or trace",
    )
    .unwrap_or_else(|| settings.log_level.clone());
    let mode = match value(
        MODE_ANNOTATION,
        |v| v == "native" || v == "classic",
        "native or classic",
    )
    .as_deref()
    {
        Some("classic") => SidecarMode::Classic,
        Some(_) => SidecarMode::Native,
        None => settings.mode,
    };
    let openai_upstream = value(OPENAI_UPSTREAM_ANNOTATION, is_http_url, "an http(s) URL");
    let anthropic_upstream = value(ANTHROPIC_UPSTREAM_ANNOTATION, is_http_url, "an http(s) URL");
    value(
        OVERRIDE_ENV_ANNOTATION,
        |v| v == "true" || v == "false",
        "\"true\" or \"false\"",
    );

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(PodSettings {
        image,
        image_pull_policy: settings.image_pull_policy.clone(),
        policy,
        credentials_secret,
        redis: settings.redis.clone(),
        log_level,
        log_format: settings.log_format.clone(),
        mode,
        resources,
        openai_upstream,
        anthropic_upstream,
    })
}

/// Comma-separated names; blanks and surrounding spaces are dropped.
fn name_list(value: &str) -> BTreeSet<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect()
}

fn build_patch(
    metadata: Option<&ObjectMeta>,
    spec: &PodSpec,
    base: &PointerBuf,
    annotations: &BTreeMap<String, String>,
    settings: &PodSettings,
    warnings: &mut Vec<String>,
) -> Vec<PatchOperation> {
    let init_containers: &[Container] = spec.init_containers.as_deref().unwrap_or(&[]);
    let sidecar_index = sidecar_init_index(init_containers, annotations, settings.mode, warnings);
    let recipients = env_recipients(spec, sidecar_index, settings.mode, annotations, warnings);
    let override_env = annotations
        .get(OVERRIDE_ENV_ANNOTATION)
        .is_some_and(|v| v.trim() == "true");
    if settings.mode == SidecarMode::Classic
        && spec
            .restart_policy
            .as_deref()
            .is_some_and(|p| p != "Always")
    {
        warnings.push(
            "classic mode: the sidecar keeps running after the other containers exit, so a Job \
             using this pod never completes; use native mode on Kubernetes 1.29 or later"
                .to_owned(),
        );
    }

    // Environment operations come first: they address containers by their original
    // index, which the sidecar insertion below shifts.
    let mut patch = Vec::new();
    let mut env_containers = Vec::new();
    for (list, index, container) in &recipients {
        let path = pointer(base, &["spec", list, &index.to_string()]);
        if env_patch(&mut patch, &path, container, override_env, warnings) {
            env_containers.push(container.name.as_str());
        }
    }

    if let Some(volume) = policy_volume(settings) {
        let value = to_value(&volume);
        match &spec.volumes {
            None => add(
                &mut patch,
                pointer(base, &["spec", "volumes"]),
                json!([value]),
            ),
            Some(_) => add(&mut patch, pointer(base, &["spec", "volumes", "-"]), value),
        }
    }

    let sidecar = to_value(&sidecar_container(settings));
    match (settings.mode, &spec.init_containers) {
        (SidecarMode::Native, None) => add(
            &mut patch,
            pointer(base, &["spec", "initContainers"]),
            json!([sidecar]),
        ),
        (SidecarMode::Native, Some(_)) => {
            let index = sidecar_index.to_string();
            add(
                &mut patch,
                pointer(base, &["spec", "initContainers", &index]),
                sidecar,
            )
        }
        (SidecarMode::Classic, _) => add(
            &mut patch,
            pointer(base, &["spec", "containers", "0"]),
            sidecar,
        ),
    }

    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        mode: settings.mode.as_str(),
        container: SIDECAR_CONTAINER,
        image: &settings.image,
        policy: settings.policy.as_deref(),
        env_containers,
    };
    let status = serde_json::to_string(&status).unwrap_or_default();
    metadata_patch(&mut patch, metadata, base, status);
    patch
}

/// Index in `initContainers` where the native sidecar goes: before the first init
/// container that calls it. Those are the ones the annotation names, or by default all
/// of the pod's own, which excludes mesh containers a mesh injector placed in front.
fn sidecar_init_index(
    init_containers: &[Container],
    annotations: &BTreeMap<String, String>,
    mode: SidecarMode,
    warnings: &mut Vec<String>,
) -> usize {
    let named = annotations
        .get(INIT_CONTAINERS_ANNOTATION)
        .map(|value| name_list(value));
    if let Some(named) = &named {
        for name in named {
            if !init_containers.iter().any(|c| c.name == *name) {
                warnings.push(format!(
                    "annotation {INIT_CONTAINERS_ANNOTATION} names {name:?}, which is not an \
                     init container of this pod"
                ));
            }
        }
        if mode == SidecarMode::Classic && !named.is_empty() {
            warnings.push(format!(
                "classic mode: init containers run before the sidecar starts, so those named in \
                 {INIT_CONTAINERS_ANNOTATION} cannot reach it; use native mode"
            ));
        }
    }
    let uses_sidecar = |container: &Container| match &named {
        Some(named) => named.contains(container.name.as_str()),
        None => !MESH_INIT_CONTAINERS.contains(&container.name.as_str()),
    };
    init_containers
        .iter()
        .position(uses_sidecar)
        .unwrap_or(init_containers.len())
}

/// Containers that receive the base-URL variables, as (list key, index, container).
/// By default every app container and, in native mode, the init containers that run
/// after the sidecar and are not mesh containers.
fn env_recipients<'a>(
    spec: &'a PodSpec,
    sidecar_index: usize,
    mode: SidecarMode,
    annotations: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Vec<(&'static str, usize, &'a Container)> {
    let init_containers: &[Container] = spec.init_containers.as_deref().unwrap_or(&[]);
    let named = annotations
        .get(ENV_CONTAINERS_ANNOTATION)
        .map(|value| name_list(value));
    let mut recipients = Vec::new();
    for (index, container) in init_containers.iter().enumerate() {
        let reaches_sidecar = mode == SidecarMode::Native && index >= sidecar_index;
        let wanted = match &named {
            Some(named) => named.contains(container.name.as_str()),
            None => reaches_sidecar && !MESH_INIT_CONTAINERS.contains(&container.name.as_str()),
        };
        if !wanted {
            continue;
        }
        if reaches_sidecar {
            recipients.push(("initContainers", index, container));
        } else {
            warnings.push(format!(
                "init container {:?} runs before the sidecar starts, so it does not receive the \
                 base-URL variables",
                container.name
            ));
        }
    }
    for (index, container) in spec.containers.iter().enumerate() {
        let wanted = named
            .as_ref()
            .is_none_or(|named| named.contains(container.name.as_str()));
        if wanted {
            recipients.push(("containers", index, container));
        }
    }
    if let Some(named) = &named {
        for name in named {
            let exists = spec
                .containers
                .iter()
                .chain(init_containers)
                .any(|c| c.name == *name);
            if !exists {
                warnings.push(format!(
                    "annotation {ENV_CONTAINERS_ANNOTATION} names {name:?}, which is not a \
                     container of this pod"
                ));
            }
        }
    }
    recipients
}

/// Adds the base-URL variables to one container. Returns whether the container ends up
/// pointed at the sidecar for every variable.
fn env_patch(
    patch: &mut Vec<PatchOperation>,
    container_path: &PointerBuf,
    container: &Container,
    override_env: bool,
    warnings: &mut Vec<String>,
) -> bool {
    let wanted = app_env();
    let env_path = container_path.with_trailing_token("env");
    let Some(existing) = &container.env else {
        add(patch, env_path, to_value(&wanted));
        return true;
    };
    let mut all_point_at_sidecar = true;
    for var in wanted {
        match existing.iter().position(|e| e.name == var.name) {
            None => add(patch, env_path.with_trailing_token("-"), to_value(&var)),
            Some(index) if existing[index] == var => {}
            Some(index) if override_env => patch.push(PatchOperation::Replace(ReplaceOperation {
                path: env_path.with_trailing_token(index.to_string()),
                value: to_value(&var),
            })),
            Some(_) => {
                all_point_at_sidecar = false;
                warnings.push(existing_env_warning(&container.name, &var));
            }
        }
    }
    all_point_at_sidecar
}

fn existing_env_warning(container: &str, var: &EnvVar) -> String {
    format!(
        "container {container:?} already sets {}, so that traffic bypasses the sidecar; set \
         {OVERRIDE_ENV_ANNOTATION}: \"true\" to replace it",
        var.name
    )
}

fn metadata_patch(
    patch: &mut Vec<PatchOperation>,
    metadata: Option<&ObjectMeta>,
    base: &PointerBuf,
    status: String,
) {
    let Some(metadata) = metadata else {
        add(
            patch,
            pointer(base, &["metadata"]),
            json!({
                "annotations": {STATUS_ANNOTATION: status},
                "labels": {INJECTED_LABEL: "true"},
            }),
        );
        return;
    };
    match &metadata.annotations {
        None => add(
            patch,
            pointer(base, &["metadata", "annotations"]),
            json!({STATUS_ANNOTATION: status}),
        ),
        Some(_) => add(
            patch,
            pointer(base, &["metadata", "annotations", STATUS_ANNOTATION]),
            Value::String(status),
        ),
    }
    match &metadata.labels {
        None => add(
            patch,
            pointer(base, &["metadata", "labels"]),
            json!({INJECTED_LABEL: "true"}),
        ),
        // `add` replaces an existing member, so a stale label value is corrected too.
        Some(_) => add(
            patch,
            pointer(base, &["metadata", "labels", INJECTED_LABEL]),
            Value::String("true".to_owned()),
        ),
    }
}

fn pointer(base: &PointerBuf, tokens: &[&str]) -> PointerBuf {
    let mut path = base.clone();
    for token in tokens {
        path.push_back(*token);
    }
    path
}

fn add(patch: &mut Vec<PatchOperation>, path: PointerBuf, value: Value) {
    patch.push(PatchOperation::Add(AddOperation { path, value }));
}

fn to_value<T: Serialize>(value: &T) -> Value {
    // k8s-openapi types serialize to plain JSON objects; the conversion has no failure
    // path for them.
    serde_json::to_value(value).unwrap_or(Value::Null)
}
