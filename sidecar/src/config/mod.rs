//! Runtime configuration of `agent-sidecar serve`.
//!
//! Three layers, later ones winning: the YAML file (`--config`), `AGENT_SIDECAR_*`
//! environment variables, and command-line flags; clap merges the last two. The raw layer
//! is plain serde; `Config::resolve` validates everything and reports every problem at
//! once. Secrets (provider keys, the hash key) are read from the environment or files and
//! never appear in errors or `Debug` output.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Model proxy address: loopback, so only containers in the pod reach it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:14100";
/// Admin address: all interfaces, because the kubelet probes and Prometheus scrapes it
/// from outside the pod's network namespace.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:14190";
/// gRPC address, reserved for the local gRPC API.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:14101";
pub const DEFAULT_OPENAI_UPSTREAM: &str = "https://api.openai.com/v1";
pub const DEFAULT_ANTHROPIC_UPSTREAM: &str = "https://api.anthropic.com";
/// 10 MiB holds a long conversation with a few inline images; larger bodies are
/// rejected with 413 before they are buffered.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Upstream responses are buffered whole to be guarded; 32 MiB bounds that memory.
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Connecting to a provider takes well under a second when it is healthy.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Long completions from reasoning models can take minutes.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 600;

/// The YAML configuration file as written by users.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub grpc_listen: Option<String>,
    /// Policy file or directory; the embedded default policy when unset.
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub openai: RawProvider,
    #[serde(default)]
    pub anthropic: RawProvider,
    pub redis_url: Option<String>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstream: RawUpstream,
    /// Forward `/v1/*` paths the sidecar does not guard, unchecked.
    pub passthrough_unknown_paths: Option<bool>,
    #[serde(default)]
    pub pii: RawPii,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawProvider {
    /// Base URL, such as `https://api.openai.com/v1`.
    pub upstream: Option<String>,
    /// File holding the API key; overrides the provider's environment variable.
    pub api_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_body_bytes: Option<usize>,
    pub max_response_body_bytes: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawUpstream {
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPii {
    /// File holding the key for the `hash` action; `AGENT_SIDECAR_HASH_KEY` otherwise.
    pub hash_key_file: Option<PathBuf>,
}

/// Values from flags and environment variables, which override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub grpc_listen: Option<String>,
    pub policy: Option<PathBuf>,
    pub openai_upstream: Option<String>,
    pub anthropic_upstream: Option<String>,
    pub redis_url: Option<String>,
}

/// A credential. `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret came from, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    File,
}

/// A provider upstream.
#[derive(Clone, Debug)]
pub struct Provider {
    pub base_url: reqwest::Url,
    pub api_key: Option<(Secret, SecretSource)>,
}

/// The validated runtime configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub policy: Option<PathBuf>,
    pub openai: Provider,
    pub anthropic: Provider,
    pub max_request_body_bytes: usize,
    pub max_response_body_bytes: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub passthrough_unknown_paths: bool,
    pub hash_key: Option<Secret>,
}

/// Every problem found in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// Reads the process environment; a seam so tests can supply their own.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl RawConfig {
    /// Reads the YAML file at `path`.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![format!(
                "cannot read config file {}: {e}",
                path.display()
            )])
        })?;
        serde_norway::from_str(&text)
            .map_err(|e| ConfigErrors(vec![format!("invalid config file {}: {e}", path.display())]))
    }
}

impl Config {
    /// Applies the overrides to the file layer, fills defaults, reads secrets and
    /// validates the result.
    pub fn resolve(
        raw: RawConfig,
        overrides: Overrides,
        env: &dyn Environment,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let listen = parse_addr(
            "listen",
            overrides.listen.or(raw.listen),
            DEFAULT_LISTEN,
            &mut errors,
        );
        let admin_listen = parse_addr(
            "adminListen",
            overrides.admin_listen.or(raw.admin_listen),
            DEFAULT_ADMIN_LISTEN,
            &mut errors,
        );
        let grpc_listen = parse_addr(
            "grpcListen",
            overrides.grpc_listen.or(raw.grpc_listen),
            DEFAULT_GRPC_LISTEN,
            &mut errors,
        );
        if let (Some(a), Some(b)) = (listen, admin_listen) {
            if a.port() != 0 && a.port() == b.port() {
                errors.push(format!(
                    "listen and adminListen both use port {}; give each its own port",
                    a.port()
                ));
            }
        }
        let openai = resolve_provider(
            "openai",
            overrides.openai_upstream.or(raw.openai.upstream),
            DEFAULT_OPENAI_UPSTREAM,
            raw.openai.api_key_file.as_deref(),
            "OPENAI_API_KEY",
            env,
            &mut errors,
        );
        let anthropic = resolve_provider(
            "anthropic",
            overrides.anthropic_upstream.or(raw.anthropic.upstream),
            DEFAULT_ANTHROPIC_UPSTREAM,
            raw.anthropic.api_key_file.as_deref(),
            "ANTHROPIC_API_KEY",
            env,
            &mut errors,
        );
        if let Some(url) = overrides.redis_url.or(raw.redis_url) {
            if !url.is_empty() {
                errors.push(
                    "redisUrl is set, but this version keeps conversations only in the \
                     in-memory store; unset redisUrl (AGENT_SIDECAR_REDIS_URL, --redis-url)"
                        .to_owned(),
                );
            }
        }
        let max_request_body_bytes = positive(
            "limits.maxRequestBodyBytes",
            raw.limits.max_request_body_bytes,
            DEFAULT_MAX_REQUEST_BODY_BYTES,
            &mut errors,
        );
        let max_response_body_bytes = positive(
            "limits.maxResponseBodyBytes",
            raw.limits.max_response_body_bytes,
            DEFAULT_MAX_RESPONSE_BODY_BYTES,
            &mut errors,
        );
        let connect_timeout_ms = positive(
            "upstream.connectTimeoutMs",
            raw.upstream.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
            &mut errors,
        );
        let request_timeout_secs = positive(
            "upstream.requestTimeoutSecs",
            raw.upstream.request_timeout_secs,
            DEFAULT_REQUEST_TIMEOUT_SECS,
            &mut errors,
        );
        let hash_key = match raw.pii.hash_key_file {
            Some(path) => read_secret_file("pii.hashKeyFile", &path, &mut errors),
            None => env.var("AGENT_SIDECAR_HASH_KEY").map(Secret),
        };

        let (Some(listen), Some(admin_listen), Some(grpc_listen), Some(openai), Some(anthropic)) =
            (listen, admin_listen, grpc_listen, openai, anthropic)
        else {
            return Err(ConfigErrors(errors));
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            listen,
            admin_listen,
            grpc_listen,
            policy: overrides.policy.or(raw.policy),
            openai,
            anthropic,
            max_request_body_bytes,
            max_response_body_bytes,
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            request_timeout: Duration::from_secs(request_timeout_secs),
            passthrough_unknown_paths: raw.passthrough_unknown_paths.unwrap_or(false),
            hash_key,
        })
    }
}

fn parse_addr(
    field: &str,
    value: Option<String>,
    default: &str,
    errors: &mut Vec<String>,
) -> Option<SocketAddr> {
    let text = value.unwrap_or_else(|| default.to_owned());
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(format!(
                "{field}: invalid address {text:?}; use IP:PORT, such as {default}"
            ));
            None
        }
    }
}

fn positive<T: PartialOrd + Default + Copy + fmt::Display>(
    field: &str,
    value: Option<T>,
    default: T,
    errors: &mut Vec<String>,
) -> T {
    match value {
        Some(v) if v <= T::default() => {
            errors.push(format!("{field}: must be greater than 0, found {v}"));
            default
        }
        Some(v) => v,
        None => default,
    }
}

fn resolve_provider(
    name: &str,
    upstream: Option<String>,
    default: &str,
    key_file: Option<&Path>,
    key_variable: &str,
    env: &dyn Environment,
    errors: &mut Vec<String>,
) -> Option<Provider> {
    let text = upstream.unwrap_or_else(|| default.to_owned());
    let base_url = match reqwest::Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) | Err(_) => {
            errors.push(format!(
                "{name}.upstream: invalid URL {text:?}; use an http or https base URL, such as {default}"
            ));
            None
        }
    };
    let api_key = match key_file {
        Some(path) => read_secret_file(&format!("{name}.apiKeyFile"), path, errors)
            .map(|secret| (secret, SecretSource::File)),
        None => env
            .var(key_variable)
            .map(|key| (Secret(key.trim().to_owned()), SecretSource::Environment)),
    };
    Some(Provider {
        base_url: base_url?,
        api_key,
    })
}

fn read_secret_file(field: &str, path: &Path, errors: &mut Vec<String>) -> Option<Secret> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Some(Secret(text.trim().to_owned())),
        Ok(_) => {
            errors.push(format!("{field}: file {} is empty", path.display()));
            None
        }
        Err(e) => {
            errors.push(format!("{field}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnvironment(HashMap<&'static str, &'static str>);

    impl Environment for FakeEnvironment {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn no_env() -> FakeEnvironment {
        FakeEnvironment(HashMap::new())
    }

    #[test]
    fn defaults_apply_without_configuration() {
        let config = Config::resolve(RawConfig::default(), Overrides::default(), &no_env())
            .expect("defaults are valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.openai.base_url.as_str(), DEFAULT_OPENAI_UPSTREAM);
        assert!(config.openai.api_key.is_none());
        assert!(config.policy.is_none());
    }

    #[test]
    fn overrides_win_over_file() {
        let raw: RawConfig = serde_norway::from_str(
            "listen: 127.0.0.1:1000\nopenai: {upstream: 'http://file/v1'}\n",
        )
        .expect("valid yaml");
        let overrides = Overrides {
            listen: Some("127.0.0.1:2000".to_owned()),
            ..Overrides::default()
        };
        let config = Config::resolve(raw, overrides, &no_env()).expect("valid");
        assert_eq!(config.listen.port(), 2000);
        assert_eq!(config.openai.base_url.as_str(), "http://file/v1");
    }

    #[test]
    fn all_errors_are_reported() {
        let raw: RawConfig = serde_norway::from_str(
            "listen: nowhere\nopenai: {upstream: 'ftp://x'}\nlimits: {maxRequestBodyBytes: 0}\n",
        )
        .expect("valid yaml");
        let errors = Config::resolve(raw, Overrides::default(), &no_env())
            .expect_err("invalid")
            .0;
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("\"nowhere\""));
    }

    #[test]
    fn unknown_file_field_is_rejected() {
        let result: Result<RawConfig, _> = serde_norway::from_str("lisen: 1\n");
        assert!(result.is_err());
    }

    #[test]
    fn api_key_comes_from_environment_and_is_hidden() {
        let env = FakeEnvironment(HashMap::from([("OPENAI_API_KEY", "sk-test-123")]));
        let config =
            Config::resolve(RawConfig::default(), Overrides::default(), &env).expect("valid");
        let (key, source) = config.openai.api_key.clone().expect("key set");
        assert_eq!(key.expose(), "sk-test-123");
        assert_eq!(source, SecretSource::Environment);
        assert!(!format!("{config:?}").contains("sk-test-123"));
    }

    #[test]
    fn api_key_file_overrides_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "from-file\n").expect("write");
        let raw = RawConfig {
            openai: RawProvider {
                upstream: None,
                api_key_file: Some(path),
            },
            ..RawConfig::default()
        };
        let env = FakeEnvironment(HashMap::from([("OPENAI_API_KEY", "from-env")]));
        let config = Config::resolve(raw, Overrides::default(), &env).expect("valid");
        let (key, source) = config.openai.api_key.expect("key set");
        assert_eq!(key.expose(), "from-file");
        assert_eq!(source, SecretSource::File);
    }

    #[test]
    fn redis_url_is_rejected_with_the_fix() {
        let overrides = Overrides {
            redis_url: Some("redis://127.0.0.1:6379".to_owned()),
            ..Overrides::default()
        };
        let errors = Config::resolve(RawConfig::default(), overrides, &no_env())
            .expect_err("not supported")
            .0;
        assert!(errors[0].contains("unset redisUrl"));
    }
}
