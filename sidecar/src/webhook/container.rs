//! The injected container, its policy volume and the variables app containers receive,
//! built as `k8s-openapi` types from resolved per-pod settings.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::settings::{
    ADMIN_PORT, ADMIN_PORT_NAME, ANTHROPIC_KEY_SECRET_KEY, GRPC_PORT, OPENAI_KEY_SECRET_KEY,
    POLICY_MOUNT_PATH, POLICY_VOLUME, PROXY_PORT, REDIS_URL_SECRET_KEY, RedisSetting,
    SIDECAR_BINARY, SIDECAR_CONTAINER, SIDECAR_USER_ID, SidecarMode, SidecarResources,
};

/// Settings for one pod: the cluster defaults with the pod's annotations applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSettings {
    pub image: String,
    pub image_pull_policy: String,
    pub policy: Option<String>,
    pub credentials_secret: Option<String>,
    pub redis: RedisSetting,
    pub log_level: String,
    pub log_format: String,
    pub mode: SidecarMode,
    pub resources: SidecarResources,
    pub openai_upstream: Option<String>,
    pub anthropic_upstream: Option<String>,
}

/// Seconds the classic-mode `postStart` hook waits for the sidecar's readiness. The
/// kubelet starts the next container only after the hook returns, and kills the sidecar
/// when it fails, so this bounds how long a broken sidecar delays the pod.
pub const CLASSIC_WAIT_TIMEOUT_SECS: u32 = 120;

/// Variables that point an app container's SDKs at the sidecar.
pub fn app_env() -> Vec<EnvVar> {
    vec![
        plain_env(
            "OPENAI_BASE_URL",
            &format!("http://127.0.0.1:{PROXY_PORT}/v1"),
        ),
        plain_env(
            "ANTHROPIC_BASE_URL",
            &format!("http://127.0.0.1:{PROXY_PORT}"),
        ),
        plain_env("AGENT_SIDECAR_GRPC_ADDR", &format!("127.0.0.1:{GRPC_PORT}")),
    ]
}

/// Builds the volume that carries the policy ConfigMap, when the pod has a policy.
pub fn policy_volume(settings: &PodSettings) -> Option<Volume> {
    let name = settings.policy.as_ref()?;
    Some(Volume {
        name: POLICY_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.clone(),
            // A missing ConfigMap keeps the pod pending with a clear event, which is
            // better than a sidecar silently running the embedded default policy.
            optional: Some(false),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    })
}

/// Builds the sidecar container for `settings`.
pub fn sidecar_container(settings: &PodSettings) -> Container {
    let mut container = Container {
        name: SIDECAR_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(vec![SIDECAR_BINARY.to_owned()]),
        args: Some(vec!["serve".to_owned()]),
        env: Some(sidecar_env(settings)),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_owned()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(settings.resources.to_requirements()),
        security_context: Some(security_context()),
        // The readiness probe keeps the pod out of Service endpoints while the sidecar
        // cannot guard traffic; liveness depends on nothing outside the process.
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/livez", 10, 3)),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    };
    if settings.policy.is_some() {
        container.volume_mounts = Some(vec![VolumeMount {
            name: POLICY_VOLUME.to_owned(),
            mount_path: POLICY_MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]);
    }
    match settings.mode {
        SidecarMode::Native => {
            container.restart_policy = Some("Always".to_owned());
            // The kubelet starts the next init container only once this probe passes,
            // so the agent never starts before the sidecar listens. One-second checks
            // for up to two minutes cover a slow image pull of the policy volume.
            container.startup_probe = Some(http_probe("/startupz", 1, 120));
        }
        SidecarMode::Classic => {
            // NOTE: classic mode has no shutdown ordering: at pod deletion the sidecar and
            // the app get SIGTERM together, so app requests sent after the sidecar closes
            // its listener fail. Native mode stops the sidecar after the app containers.
            container.lifecycle = Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec![
                            SIDECAR_BINARY.to_owned(),
                            "wait-ready".to_owned(),
                            "--url".to_owned(),
                            format!("http://127.0.0.1:{ADMIN_PORT}/readyz"),
                            "--timeout-secs".to_owned(),
                            CLASSIC_WAIT_TIMEOUT_SECS.to_string(),
                        ]),
                    }),
                    ..LifecycleHandler::default()
                }),
                ..Lifecycle::default()
            });
        }
    }
    container
}

fn sidecar_env(settings: &PodSettings) -> Vec<EnvVar> {
    let mut env = vec![
        plain_env("AGENT_SIDECAR_LISTEN", &format!("127.0.0.1:{PROXY_PORT}")),
        plain_env(
            "AGENT_SIDECAR_GRPC_LISTEN",
            &format!("127.0.0.1:{GRPC_PORT}"),
        ),
        plain_env(
            "AGENT_SIDECAR_ADMIN_LISTEN",
            &format!("0.0.0.0:{ADMIN_PORT}"),
        ),
        plain_env("AGENT_SIDECAR_LOG_FORMAT", &settings.log_format),
        plain_env("RUST_LOG", &settings.log_level),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    if settings.policy.is_some() {
        env.push(plain_env("AGENT_SIDECAR_POLICY", POLICY_MOUNT_PATH));
    }
    if let Some(url) = &settings.openai_upstream {
        env.push(plain_env("AGENT_SIDECAR_OPENAI_UPSTREAM", url));
    }
    if let Some(url) = &settings.anthropic_upstream {
        env.push(plain_env("AGENT_SIDECAR_ANTHROPIC_UPSTREAM", url));
    }
    match &settings.redis {
        RedisSetting::None => {}
        RedisSetting::Url(url) => env.push(plain_env("AGENT_SIDECAR_REDIS_URL", url)),
        RedisSetting::Secret(name) => env.push(secret_env(
            "AGENT_SIDECAR_REDIS_URL",
            name,
            REDIS_URL_SECRET_KEY,
            false,
        )),
    }
    if let Some(secret) = &settings.credentials_secret {
        // Optional keys: a Secret with only one provider's key still starts the pod, and
        // the sidecar forwards the agent's own Authorization header for the other.
        env.push(secret_env(
            "OPENAI_API_KEY",
            secret,
            OPENAI_KEY_SECRET_KEY,
            true,
        ));
        env.push(secret_env(
            "ANTHROPIC_API_KEY",
            secret,
            ANTHROPIC_KEY_SECRET_KEY,
            true,
        ));
    }
    env
}

/// Builds a security context that meets the restricted Pod Security Standard, with a
/// read-only root filesystem because the sidecar writes nothing to disk.
fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_USER_ID),
        run_as_group: Some(SIDECAR_USER_ID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

pub(crate) fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: field_path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
    }
}
