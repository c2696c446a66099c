//! `agent-sidecar inject`: add the sidecar to the workloads in a YAML manifest without a
//! cluster, for GitOps pipelines. The injection settings flags are shared with
//! `agent-sidecar webhook`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::webhook::mutate::{NamespaceInjection, Outcome};
use crate::webhook::settings::{
    self, InjectionSettings, RedisSetting, SidecarMode, SidecarResources,
};
use crate::webhook::workload::inject_manifest;

/// Settings of injected sidecars; pod annotations override most of these.
#[derive(Debug, Args)]
pub struct InjectionArgs {
    /// Sidecar image [default: the release matching this binary].
    #[arg(long, env = "AGENT_SIDECAR_INJECT_IMAGE")]
    pub sidecar_image: Option<String>,
    /// Image pull policy of the sidecar: Always, IfNotPresent or Never.
    #[arg(
        long,
        env = "AGENT_SIDECAR_INJECT_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_image_pull_policy: String,
    /// ConfigMap holding the GuardrailPolicy for pods that name none; without it such
    /// sidecars run the embedded default policy.
    #[arg(long, env = "AGENT_SIDECAR_INJECT_DEFAULT_POLICY")]
    pub default_policy: Option<String>,
    /// Secret in the pod's namespace with the keys openai-api-key and anthropic-api-key.
    #[arg(long, env = "AGENT_SIDECAR_INJECT_CREDENTIALS_SECRET")]
    pub credentials_secret: Option<String>,
    /// Redis URL written into the sidecar's environment; use --redis-url-secret for a URL
    /// with a password.
    #[arg(
        long,
        env = "AGENT_SIDECAR_INJECT_REDIS_URL",
        conflicts_with = "redis_url_secret"
    )]
    pub redis_url: Option<String>,
    /// Secret in the pod's namespace whose redis-url key contains the Redis URL.
    #[arg(long, env = "AGENT_SIDECAR_INJECT_REDIS_URL_SECRET")]
    pub redis_url_secret: Option<String>,
    /// The sidecar's log level (RUST_LOG).
    #[arg(long, env = "AGENT_SIDECAR_INJECT_LOG_LEVEL", default_value = "info")]
    pub sidecar_log_level: String,
    /// The sidecar's log format: text or json.
    #[arg(long, env = "AGENT_SIDECAR_INJECT_LOG_FORMAT", default_value = "json")]
    pub sidecar_log_format: String,
    /// native (an init container with restartPolicy Always, Kubernetes 1.29+) or classic
    /// (a regular container that the others wait for).
    #[arg(
        long,
        env = "AGENT_SIDECAR_INJECT_MODE",
        value_enum,
        default_value = "native"
    )]
    pub mode: SidecarMode,
    /// CPU request of the sidecar (Kubernetes quantity).
    #[arg(long, env = "AGENT_SIDECAR_INJECT_CPU_REQUEST", default_value = settings::DEFAULT_CPU_REQUEST)]
    pub cpu_request: String,
    /// CPU limit of the sidecar (Kubernetes quantity).
    #[arg(long, env = "AGENT_SIDECAR_INJECT_CPU_LIMIT", default_value = settings::DEFAULT_CPU_LIMIT)]
    pub cpu_limit: String,
    /// Memory request of the sidecar (Kubernetes quantity).
    #[arg(long, env = "AGENT_SIDECAR_INJECT_MEMORY_REQUEST", default_value = settings::DEFAULT_MEMORY_REQUEST)]
    pub memory_request: String,
    /// Memory limit of the sidecar (Kubernetes quantity).
    #[arg(long, env = "AGENT_SIDECAR_INJECT_MEMORY_LIMIT", default_value = settings::DEFAULT_MEMORY_LIMIT)]
    pub memory_limit: String,
}

impl InjectionArgs {
    /// Validated settings, or every problem with the flags.
    pub fn to_settings(&self) -> Result<InjectionSettings, Vec<String>> {
        let redis = match (&self.redis_url, &self.redis_url_secret) {
            (Some(url), _) => RedisSetting::Url(url.clone()),
            (None, Some(secret)) => RedisSetting::Secret(secret.clone()),
            (None, None) => RedisSetting::None,
        };
        let settings = InjectionSettings {
            image: self
                .sidecar_image
                .clone()
                .unwrap_or_else(settings::default_image),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            default_policy: self.default_policy.clone(),
            credentials_secret: self.credentials_secret.clone(),
            redis,
            log_level: self.sidecar_log_level.clone(),
            log_format: self.sidecar_log_format.clone(),
            mode: self.mode,
            resources: SidecarResources {
                cpu_request: self.cpu_request.clone(),
                cpu_limit: self.cpu_limit.clone(),
                memory_request: self.memory_request.clone(),
                memory_limit: self.memory_limit.clone(),
            },
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// Flags of `inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML manifest to read (one or more documents); `-` reads standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub filename: PathBuf,
    /// Inject only pod templates annotated agent-sidecar.io/inject: "true", as the webhook
    /// does outside labelled namespaces. Without it every template is injected unless
    /// annotated "false".
    #[arg(long)]
    pub require_annotation: bool,
    #[command(flatten)]
    pub injection: InjectionArgs,
}

pub fn run(args: InjectArgs) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    let settings = match args.injection.to_settings() {
        Ok(settings) => settings,
        Err(problems) => {
            for problem in problems {
                let _ = writeln!(stderr, "error: {problem}");
            }
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let text = match read_input(&args.filename) {
        Ok(text) => text,
        Err(message) => {
            let _ = writeln!(stderr, "error: {message}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let namespace = if args.require_annotation {
        NamespaceInjection::NotEnabled
    } else {
        NamespaceInjection::Enabled
    };
    let injected = match inject_manifest(&text, namespace, &settings) {
        Ok(injected) => injected,
        Err(errors) => {
            for error in errors {
                let _ = writeln!(stderr, "error: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    for template in &injected.templates {
        for warning in &template.warnings {
            let _ = writeln!(stderr, "warning: {}: {warning}", template.object);
        }
        if let Outcome::Skipped(reason) = template.outcome {
            tracing::debug!(object = %template.object, reason = reason.as_str(), "not injected");
        }
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(injected.text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        let _ = writeln!(stderr, "error: cannot write the output: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn read_input(path: &PathBuf) -> Result<String, String> {
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        bytes
    } else {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
    };
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{} is not valid UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}
