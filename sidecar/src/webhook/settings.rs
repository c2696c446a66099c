//! Injection settings: the cluster-wide defaults the injector starts with, the pod
//! annotations that override them, and the fixed names and ports both sides rely on.

use std::fmt;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Prefix of every annotation and label the injector reads or writes.
pub const ANNOTATION_PREFIX: &str = "agent-sidecar.io/";
/// Pod annotation that requests (`"true"`) or refuses (`"false"`) injection.
pub const INJECT_ANNOTATION: &str = "agent-sidecar.io/inject";
/// Namespace label that opts every pod in the namespace in (`enabled`) or out
/// (`disabled`). The webhook configuration's namespace selectors read it.
pub const NAMESPACE_LABEL: &str = "agent-sidecar.io/inject";
/// Pod annotation written at injection: a JSON record of what was injected. Its
/// presence makes a second admission of the same pod a no-op.
pub const STATUS_ANNOTATION: &str = "agent-sidecar.io/status";
/// Pod label written at injection, for PodMonitor and NetworkPolicy selectors.
pub const INJECTED_LABEL: &str = "agent-sidecar.io/injected";
/// Name of the ConfigMap that contains the pod's `GuardrailPolicy`.
pub const POLICY_ANNOTATION: &str = "agent-sidecar.io/policy";
/// Sidecar image.
pub const IMAGE_ANNOTATION: &str = "agent-sidecar.io/image";
pub const CPU_REQUEST_ANNOTATION: &str = "agent-sidecar.io/cpu-request";
pub const CPU_LIMIT_ANNOTATION: &str = "agent-sidecar.io/cpu-limit";
pub const MEMORY_REQUEST_ANNOTATION: &str = "agent-sidecar.io/memory-request";
pub const MEMORY_LIMIT_ANNOTATION: &str = "agent-sidecar.io/memory-limit";
/// The sidecar's `RUST_LOG` level.
pub const LOG_LEVEL_ANNOTATION: &str = "agent-sidecar.io/log-level";
/// `native` or `classic`.
pub const MODE_ANNOTATION: &str = "agent-sidecar.io/mode";
/// Comma-separated names of the containers that receive the base-URL variables.
pub const ENV_CONTAINERS_ANNOTATION: &str = "agent-sidecar.io/env-containers";
/// `"true"` replaces base-URL variables a container already sets.
pub const OVERRIDE_ENV_ANNOTATION: &str = "agent-sidecar.io/override-env";
/// Comma-separated names of the pod's init containers that call the sidecar; the
/// sidecar starts before the first of them.
pub const INIT_CONTAINERS_ANNOTATION: &str = "agent-sidecar.io/init-containers-using-sidecar";
/// Secret with the provider keys (`openai-api-key`, `anthropic-api-key`).
pub const CREDENTIALS_SECRET_ANNOTATION: &str = "agent-sidecar.io/credentials-secret";
pub const OPENAI_UPSTREAM_ANNOTATION: &str = "agent-sidecar.io/openai-upstream";
pub const ANTHROPIC_UPSTREAM_ANNOTATION: &str = "agent-sidecar.io/anthropic-upstream";

/// Every annotation a user may set; the injector warns about other keys under the prefix.
pub const USER_ANNOTATIONS: &[&str] = &[
    INJECT_ANNOTATION,
    POLICY_ANNOTATION,
    IMAGE_ANNOTATION,
    CPU_REQUEST_ANNOTATION,
    CPU_LIMIT_ANNOTATION,
    MEMORY_REQUEST_ANNOTATION,
    MEMORY_LIMIT_ANNOTATION,
    LOG_LEVEL_ANNOTATION,
    MODE_ANNOTATION,
    ENV_CONTAINERS_ANNOTATION,
    OVERRIDE_ENV_ANNOTATION,
    INIT_CONTAINERS_ANNOTATION,
    CREDENTIALS_SECRET_ANNOTATION,
    OPENAI_UPSTREAM_ANNOTATION,
    ANTHROPIC_UPSTREAM_ANNOTATION,
];

/// Name of the injected container.
pub const SIDECAR_CONTAINER: &str = "agent-sidecar";
/// Name of the volume that carries the policy ConfigMap.
pub const POLICY_VOLUME: &str = "agent-sidecar-policy";
/// Mount path of the policy ConfigMap in the sidecar.
pub const POLICY_MOUNT_PATH: &str = "/etc/agent-sidecar/policy";
/// Path of the binary inside the sidecar image; the classic-mode `postStart` hook runs it.
pub const SIDECAR_BINARY: &str = "/usr/local/bin/agent-sidecar";
/// Name of the sidecar's admin port (probes and metrics), at most 15 characters as
/// Kubernetes requires.
pub const ADMIN_PORT_NAME: &str = "sidecar-admin";

/// Model proxy port, on loopback. Chosen outside the ranges Istio (15000-15090),
/// Linkerd (4140-4191) and Dapr (3500-3501, 50001) reserve.
pub const PROXY_PORT: u16 = 14100;
/// gRPC port, on loopback.
pub const GRPC_PORT: u16 = 14101;
/// Admin port (probes, metrics), on all interfaces so the kubelet and Prometheus reach it.
pub const ADMIN_PORT: u16 = 14190;

/// Key in the credentials Secret that contains the OpenAI key.
pub const OPENAI_KEY_SECRET_KEY: &str = "openai-api-key";
/// Key in the credentials Secret that contains the Anthropic key.
pub const ANTHROPIC_KEY_SECRET_KEY: &str = "anthropic-api-key";
/// Key in the Redis Secret that contains the URL.
pub const REDIS_URL_SECRET_KEY: &str = "redis-url";

/// Non-root user and group of the injected container; 65532 is the `nonroot` user of
/// distroless images.
pub const SIDECAR_USER_ID: i64 = 65532;

/// Mesh containers that a mesh injector puts before the pod's own init containers. They
/// never call the sidecar, so the sidecar goes after them and starts inside the mesh's
/// network setup.
pub const MESH_INIT_CONTAINERS: &[&str] = &[
    "istio-init",
    "istio-validation",
    "istio-proxy",
    "linkerd-init",
    "linkerd-network-validator",
    "linkerd-proxy",
];

/// Placement of the sidecar container in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29 and later): it is
    /// ready before the pod's other containers start and does not keep a Job running.
    Native,
    /// A regular container placed first, whose `postStart` hook waits for readiness, for
    /// clusters before 1.29.
    Classic,
}

impl SidecarMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Classic => "classic",
        }
    }
}

impl fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Source of the sidecar's Redis URL, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisSetting {
    /// No Redis: the sidecar uses its in-memory store.
    None,
    /// A URL written into the pod spec; use it only for URLs without a password.
    Url(String),
    /// A Secret in the pod's namespace whose `redis-url` key contains the URL.
    Secret(String),
}

/// CPU and memory requests and limits of the sidecar container, as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarResources {
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl SidecarResources {
    pub fn to_requirements(&self) -> ResourceRequirements {
        let pair = |cpu: &str, memory: &str| {
            [
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ]
            .into_iter()
            .collect()
        };
        ResourceRequirements {
            requests: Some(pair(&self.cpu_request, &self.memory_request)),
            limits: Some(pair(&self.cpu_limit, &self.memory_limit)),
            ..ResourceRequirements::default()
        }
    }
}

/// Defaults sized for the sidecar's budget: about 25 MB resident when idle and 120 MB
/// with 1,000 open streams, and a guarded request costing tens of microseconds of CPU.
/// The memory limit leaves room above that; the CPU limit keeps a runaway sidecar from
/// starving the agent on the same node.
pub const DEFAULT_CPU_REQUEST: &str = "50m";
pub const DEFAULT_CPU_LIMIT: &str = "1";
pub const DEFAULT_MEMORY_REQUEST: &str = "64Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "256Mi";

/// Default sidecar image: the release that matches this binary.
pub fn default_image() -> String {
    format!(
        "ghcr.io/agent-sidecar/agent-sidecar:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Cluster-wide injection settings, from the webhook's or `inject`'s flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectionSettings {
    pub image: String,
    pub image_pull_policy: String,
    /// ConfigMap used when a pod names none; `None` leaves the sidecar on its embedded
    /// default policy.
    pub default_policy: Option<String>,
    /// Secret with provider keys; `None` gives the sidecar no provider credential, so it
    /// forwards the agent's own `Authorization` header.
    pub credentials_secret: Option<String>,
    pub redis: RedisSetting,
    /// The sidecar's `RUST_LOG`.
    pub log_level: String,
    /// The sidecar's `AGENT_SIDECAR_LOG_FORMAT`: `text` or `json`.
    pub log_format: String,
    pub mode: SidecarMode,
    pub resources: SidecarResources,
}

impl Default for InjectionSettings {
    fn default() -> Self {
        InjectionSettings {
            image: default_image(),
            image_pull_policy: "IfNotPresent".to_owned(),
            default_policy: None,
            credentials_secret: None,
            redis: RedisSetting::None,
            log_level: "info".to_owned(),
            log_format: "json".to_owned(),
            mode: SidecarMode::Native,
            resources: SidecarResources {
                cpu_request: DEFAULT_CPU_REQUEST.to_owned(),
                cpu_limit: DEFAULT_CPU_LIMIT.to_owned(),
                memory_request: DEFAULT_MEMORY_REQUEST.to_owned(),
                memory_limit: DEFAULT_MEMORY_LIMIT.to_owned(),
            },
        }
    }
}

impl InjectionSettings {
    /// Checks every value a pod spec would carry, so a bad flag stops the injector at
    /// start instead of producing pods the API server rejects. Returns every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !is_image_reference(&self.image) {
            problems.push(format!(
                "sidecar image {:?} is not a valid image reference",
                self.image
            ));
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            problems.push(format!(
                "image pull policy {:?} is invalid; use Always, IfNotPresent or Never",
                self.image_pull_policy
            ));
        }
        for (what, name) in [
            ("default policy ConfigMap", &self.default_policy),
            ("credentials Secret", &self.credentials_secret),
        ] {
            if let Some(name) = name
                && !is_dns_subdomain(name)
            {
                problems.push(format!(
                    "{what} name {name:?} is not a valid Kubernetes object name"
                ));
            }
        }
        if let RedisSetting::Secret(name) = &self.redis
            && !is_dns_subdomain(name)
        {
            problems.push(format!(
                "Redis Secret name {name:?} is not a valid Kubernetes object name"
            ));
        }
        if !is_log_level(&self.log_level) {
            problems.push(format!(
                "log level {:?} is invalid; use error, warn, info, debug or trace",
                self.log_level
            ));
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            problems.push(format!(
                "log format {:?} is invalid; use text or json",
                self.log_format
            ));
        }
        let resources = &self.resources;
        for (what, value) in [
            ("CPU request", &resources.cpu_request),
            ("CPU limit", &resources.cpu_limit),
            ("memory request", &resources.memory_request),
            ("memory limit", &resources.memory_limit),
        ] {
            if !is_quantity(value) {
                problems.push(format!(
                    "{what} {value:?} is not a Kubernetes quantity such as 100m, 1 or 128Mi"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Checks Kubernetes resource quantity syntax: a signed decimal number followed by a binary
/// suffix (Ki..Ei), a decimal suffix (n, u, m, k, M..E) or a decimal exponent.
pub fn is_quantity(value: &str) -> bool {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    PATTERN
        .get_or_init(|| {
            regex::Regex::new(
                r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$",
            )
            .expect("the quantity pattern is a valid regex")
        })
        .is_match(value)
}

/// Checks the RFC 1123 subdomain rule for ConfigMap and Secret names: at most 253 characters
/// of lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit.
pub fn is_dns_subdomain(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Checks for a log level that the sidecar's `RUST_LOG` accepts on its own.
pub fn is_log_level(value: &str) -> bool {
    ["off", "error", "warn", "info", "debug", "trace"].contains(&value)
}

/// Checks for a plausible image reference: non-empty, no whitespace or control
/// characters. The registry checks the rest when the kubelet pulls it.
pub fn is_image_reference(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 512
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Checks for an `http://` or `https://` URL without whitespace, for the upstream
/// annotations.
pub fn is_http_url(value: &str) -> bool {
    (value.starts_with("http://") || value.starts_with("https://"))
        && value.len() > "https://".len()
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_kubernetes_syntax() {
        for valid in ["50m", "1", "0.5", "128Mi", "1Gi", "1e3", "2k", "+1", ".5"] {
            assert!(is_quantity(valid), "{valid} should be a quantity");
        }
        for invalid in ["", "1 core", "128MB", "m", "1.2.3", "Mi"] {
            assert!(!is_quantity(invalid), "{invalid} should not be a quantity");
        }
    }

    #[test]
    fn object_names_follow_rfc_1123() {
        assert!(is_dns_subdomain("support-agent.policy"));
        assert!(!is_dns_subdomain("Support"));
        assert!(!is_dns_subdomain("-policy"));
        assert!(!is_dns_subdomain(""));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
    }

    #[test]
    fn default_settings_are_valid() {
        assert_eq!(InjectionSettings::default().validate(), Ok(()));
    }

    #[test]
    fn settings_validation_reports_every_problem() {
        let settings = InjectionSettings {
            image: "bad image".to_owned(),
            log_level: "loud".to_owned(),
            resources: SidecarResources {
                cpu_request: "1 core".to_owned(),
                ..InjectionSettings::default().resources
            },
            ..InjectionSettings::default()
        };
        let problems = settings.validate().expect_err("three problems");
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
