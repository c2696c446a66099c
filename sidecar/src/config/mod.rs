//! Runtime configuration of `agent-sidecar serve`.
//!
//! Three layers, later ones winning: the YAML file (`--config`), `AGENT_SIDECAR_*`
//! environment variables, and command-line flags; clap merges the last two. The raw layer
//! is plain serde; `Config::resolve` validates everything and reports every problem at
//! once. Secrets (provider keys, the hash key) are read from the environment or files and
//! never appear in errors or `Debug` output.

pub mod routing;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::context::{CatalogEntry, ModelCatalog, ModelLimits};
use crate::state::StoreSettings;
use crate::state::redis::{RedisMode, RedisSettings};
use routing::{
    RawCircuitBreaker, RawHealthChecks, RawReadiness, RawRetry, RawRoute, RawRouting, RawTarget,
    RoutingConfig, TimeoutDefaults,
};

/// Model proxy address: loopback, so only containers in the pod reach it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:14100";
/// Admin address: all interfaces, because the kubelet probes and Prometheus scrapes it
/// from outside the pod's network namespace.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:14190";
/// gRPC API address: loopback, like the model proxy.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:14101";
pub const DEFAULT_OPENAI_UPSTREAM: &str = "https://api.openai.com/v1";
pub const DEFAULT_ANTHROPIC_UPSTREAM: &str = "https://api.anthropic.com";
/// 10 MiB fits a long conversation with a few inline images; larger bodies are
/// rejected with 413 before they are buffered.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Upstream responses are buffered whole to be guarded; 32 MiB bounds that memory.
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Connecting to a provider takes well under a second when it is healthy.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Long completions from reasoning models can take minutes.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 600;
/// Reasoning models can think for minutes before their first streamed token.
pub const DEFAULT_STREAM_IDLE_TIMEOUT_SECS: u64 = 300;
/// Time a shutdown waits for buffered turns to reach Redis: well inside Kubernetes'
/// default 30-second termination grace period, which also covers connection draining.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Longest accepted shutdown grace period, so a misconfiguration cannot hold a pod in
/// `Terminating` for long.
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 300;
/// Shortest accepted vault key: 32 bytes, as from `openssl rand -base64 32`.
pub const MIN_VAULT_KEY_BYTES: usize = 32;

/// The YAML configuration file as written by users.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    /// gRPC API address: `IP:PORT`, or `unix:PATH` for a Unix domain socket.
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
    /// Redis connection details beyond the URL in `redisUrl`.
    #[serde(default)]
    pub redis: RawRedis,
    /// Conversation store limits.
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub vault: RawVault,
    /// Model catalog entries, consulted before the built-in ones.
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// Upstream targets that routes send requests to.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    /// Model name (exact or glob) to ordered targets; the first matching route wins.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Retries on one target before falling back to the next.
    #[serde(default)]
    pub retry: RawRetry,
    /// Per-target circuit breaker.
    #[serde(default)]
    pub circuit_breaker: RawCircuitBreaker,
    /// Active checks of idle targets.
    #[serde(default)]
    pub health_checks: RawHealthChecks,
    /// Requirements of `/readyz` beyond the policy and the state store.
    #[serde(default)]
    pub readiness: RawReadiness,
}

/// Redis deployment mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RawRedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRedis {
    pub mode: Option<RawRedisMode>,
    /// Cluster: more seed nodes. Sentinel: more sentinels. URLs like `redisUrl`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Sentinel: the name of the monitored master.
    pub sentinel_master_name: Option<String>,
    /// Prefix of every key the sidecar writes.
    pub key_prefix: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    /// Maximum time for one Redis command before the turn is buffered instead.
    pub command_timeout_ms: Option<u64>,
    /// PEM file of CA certificates trusted for `rediss://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawStore {
    /// In-memory store: conversations kept before the least recently updated is evicted.
    pub max_conversations: Option<usize>,
    /// Turns kept per conversation; older ones are trimmed.
    pub max_turns_per_conversation: Option<usize>,
    /// Redis store: turns buffered while Redis is unreachable.
    pub outage_buffer_turns: Option<usize>,
    /// Redis store: bytes buffered while Redis is unreachable.
    pub outage_buffer_bytes: Option<usize>,
    /// Seconds a shutdown waits for buffered turns to reach Redis.
    pub shutdown_grace_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawVault {
    /// File holding the pseudonym vault secret; `AGENT_SIDECAR_VAULT_KEY` otherwise.
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModel {
    /// Exact model name, or a prefix ending in `*` (`*` alone matches every model).
    pub name: String,
    pub context_window: u32,
    pub max_output_tokens: u32,
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
    /// Maximum silence between two chunks of a streamed response.
    pub stream_idle_timeout_secs: Option<u64>,
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

/// Source of a secret, for logs.
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
    pub grpc_listen: ListenAddress,
    pub policy: Option<PathBuf>,
    pub openai: Provider,
    pub anthropic: Provider,
    pub max_request_body_bytes: usize,
    pub max_response_body_bytes: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub passthrough_unknown_paths: bool,
    pub hash_key: Option<Secret>,
    pub store: StoreConfig,
    /// Secret the pseudonym vault key is derived from.
    pub vault_key: Option<(Secret, SecretSource)>,
    pub models: ModelCatalog,
    /// Targets, routes, retries, breakers and readiness requirements.
    pub routing: RoutingConfig,
}

/// Conversation store configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub settings: StoreSettings,
    /// Set when `redisUrl` is; the in-memory store otherwise.
    pub redis: Option<RedisSettings>,
    /// Time a shutdown waits for buffered turns to reach Redis.
    pub shutdown_grace: Duration,
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
        let grpc_listen = parse_listen_address(
            "grpcListen",
            overrides.grpc_listen.or(raw.grpc_listen),
            DEFAULT_GRPC_LISTEN,
            &mut errors,
        );
        if let (Some(a), Some(b)) = (listen, admin_listen)
            && a.port() != 0
            && a.port() == b.port()
        {
            errors.push(format!(
                "listen and adminListen both use port {}; give each its own port",
                a.port()
            ));
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
        let redis_url = overrides
            .redis_url
            .or(raw.redis_url)
            .filter(|u| !u.is_empty());
        let store = resolve_store(redis_url, &raw.redis, &raw.store, &mut errors);
        let vault_key = match &raw.vault.key_file {
            Some(path) => read_secret_file("vault.keyFile", path, &mut errors)
                .map(|secret| (secret, SecretSource::File)),
            None => env
                .var("AGENT_SIDECAR_VAULT_KEY")
                .map(|key| (Secret(key.trim().to_owned()), SecretSource::Environment)),
        };
        if let Some((key, source)) = &vault_key
            && key.expose().len() < MIN_VAULT_KEY_BYTES
        {
            let field = match source {
                SecretSource::File => "vault.keyFile",
                SecretSource::Environment => "AGENT_SIDECAR_VAULT_KEY",
            };
            errors.push(format!(
                "{field}: the vault key has {} bytes, fewer than {MIN_VAULT_KEY_BYTES}; \
                     generate one with `openssl rand -base64 32`",
                key.expose().len()
            ));
        }
        let models = resolve_models(&raw.models, &mut errors);
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
        let stream_idle_timeout_secs = positive(
            "upstream.streamIdleTimeoutSecs",
            raw.upstream.stream_idle_timeout_secs,
            DEFAULT_STREAM_IDLE_TIMEOUT_SECS,
            &mut errors,
        );
        let routing = routing::resolve_routing(
            RawRouting {
                targets: &raw.targets,
                routes: &raw.routes,
                retry: &raw.retry,
                circuit_breaker: &raw.circuit_breaker,
                health_checks: &raw.health_checks,
                readiness: &raw.readiness,
            },
            openai.as_ref(),
            anthropic.as_ref(),
            TimeoutDefaults {
                connect: Duration::from_millis(connect_timeout_ms),
                first_byte: Duration::from_secs(request_timeout_secs),
                stream_idle: Duration::from_secs(stream_idle_timeout_secs),
            },
            env,
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
            stream_idle_timeout: Duration::from_secs(stream_idle_timeout_secs),
            passthrough_unknown_paths: raw.passthrough_unknown_paths.unwrap_or(false),
            hash_key,
            store,
            vault_key,
            models,
            routing,
        })
    }
}

/// An address a server listens on: a TCP socket address or a Unix domain socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(address) => write!(f, "{address}"),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Parses `IP:PORT`, or `unix:PATH` (also `unix://PATH`, as gRPC clients write it).
fn parse_listen_address(
    field: &str,
    value: Option<String>,
    default: &str,
    errors: &mut Vec<String>,
) -> Option<ListenAddress> {
    let text = value.unwrap_or_else(|| default.to_owned());
    let Some(path) = text.strip_prefix("unix:") else {
        return parse_addr(field, Some(text), default, errors).map(ListenAddress::Tcp);
    };
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() {
        errors.push(format!(
            "{field}: invalid address {text:?}; a Unix socket needs a path, such as unix:/run/agent-sidecar/grpc.sock"
        ));
        return None;
    }
    Some(ListenAddress::Unix(PathBuf::from(path)))
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

fn resolve_store(
    redis_url: Option<String>,
    redis: &RawRedis,
    store: &RawStore,
    errors: &mut Vec<String>,
) -> StoreConfig {
    let defaults = StoreSettings::default();
    let settings = StoreSettings {
        max_conversations: positive(
            "store.maxConversations",
            store.max_conversations,
            defaults.max_conversations,
            errors,
        ),
        max_turns_per_conversation: positive(
            "store.maxTurnsPerConversation",
            store.max_turns_per_conversation,
            defaults.max_turns_per_conversation,
            errors,
        ),
        outage_buffer_turns: positive(
            "store.outageBufferTurns",
            store.outage_buffer_turns,
            defaults.outage_buffer_turns,
            errors,
        ),
        outage_buffer_bytes: positive(
            "store.outageBufferBytes",
            store.outage_buffer_bytes,
            defaults.outage_buffer_bytes,
            errors,
        ),
    };
    let grace_secs = store
        .shutdown_grace_secs
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
    if grace_secs > MAX_SHUTDOWN_GRACE_SECS {
        errors.push(format!(
            "store.shutdownGraceSecs: must be at most {MAX_SHUTDOWN_GRACE_SECS}, found {grace_secs}"
        ));
    }
    let redis = resolve_redis(redis_url, redis, errors);
    StoreConfig {
        settings,
        redis,
        shutdown_grace: Duration::from_secs(grace_secs.min(MAX_SHUTDOWN_GRACE_SECS)),
    }
}

fn resolve_redis(
    url: Option<String>,
    raw: &RawRedis,
    errors: &mut Vec<String>,
) -> Option<RedisSettings> {
    let Some(url) = url else {
        let configured = raw.mode.is_some()
            || !raw.nodes.is_empty()
            || raw.sentinel_master_name.is_some()
            || raw.key_prefix.is_some()
            || raw.connect_timeout_ms.is_some()
            || raw.command_timeout_ms.is_some()
            || raw.ca_file.is_some();
        if configured {
            errors.push(
                "redis: settings are present but redisUrl is not set; set redisUrl \
                 (AGENT_SIDECAR_REDIS_URL, --redis-url) or remove the redis section"
                    .to_owned(),
            );
        }
        return None;
    };
    let url_valid = check_redis_url("redisUrl", &url, errors);
    for (i, node) in raw.nodes.iter().enumerate() {
        check_redis_url(&format!("redis.nodes[{i}]"), node, errors);
    }
    let mode = match raw.mode.unwrap_or_default() {
        RawRedisMode::Standalone => {
            if !raw.nodes.is_empty() {
                errors.push(
                    "redis.nodes: only cluster and sentinel modes use more nodes; set \
                     redis.mode or remove redis.nodes"
                        .to_owned(),
                );
            }
            RedisMode::Standalone
        }
        RawRedisMode::Cluster => RedisMode::Cluster {
            nodes: raw.nodes.clone(),
        },
        RawRedisMode::Sentinel => match raw.sentinel_master_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => RedisMode::Sentinel {
                master_name: name.to_owned(),
                nodes: raw.nodes.clone(),
            },
            _ => {
                errors.push(
                    "redis.sentinelMasterName: missing; sentinel mode needs the name of the \
                     monitored master, such as mymaster"
                        .to_owned(),
                );
                RedisMode::Standalone
            }
        },
    };
    if raw.sentinel_master_name.is_some() && raw.mode != Some(RawRedisMode::Sentinel) {
        errors.push(
            "redis.sentinelMasterName: only sentinel mode uses it; set redis.mode: sentinel"
                .to_owned(),
        );
    }
    let key_prefix = raw
        .key_prefix
        .clone()
        .unwrap_or_else(|| crate::state::redis::DEFAULT_KEY_PREFIX.to_owned());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}']) {
        errors.push(format!(
            "redis.keyPrefix: invalid prefix {key_prefix:?}; use a non-empty string without \
             braces, which are reserved for the conversation's hash tag"
        ));
    }
    let connect_timeout_ms = positive(
        "redis.connectTimeoutMs",
        raw.connect_timeout_ms,
        crate::state::redis::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64,
        errors,
    );
    let command_timeout_ms = positive(
        "redis.commandTimeoutMs",
        raw.command_timeout_ms,
        crate::state::redis::DEFAULT_COMMAND_TIMEOUT.as_millis() as u64,
        errors,
    );
    let ca_certificates_pem = raw
        .ca_file
        .as_deref()
        .and_then(|path| read_ca_file(path, &url, &mode, errors));
    url_valid.then(|| RedisSettings {
        url,
        mode,
        key_prefix,
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        command_timeout: Duration::from_millis(command_timeout_ms),
        ca_certificates_pem,
    })
}

/// Reads `redis.caFile`, which only a `rediss://` URL in standalone or cluster mode uses.
fn read_ca_file(
    path: &Path,
    url: &str,
    mode: &RedisMode,
    errors: &mut Vec<String>,
) -> Option<Vec<u8>> {
    if !url.starts_with("rediss://") {
        errors.push(
            "redis.caFile: only TLS connections use it; use a rediss:// URL or remove caFile"
                .to_owned(),
        );
        return None;
    }
    if matches!(mode, RedisMode::Sentinel { .. }) {
        errors.push(
            "redis.caFile: sentinel mode does not support a custom CA yet; use certificates \
             the system trusts or remove caFile"
                .to_owned(),
        );
        return None;
    }
    match std::fs::read(path) {
        Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => {
            Some(pem)
        }
        Ok(_) => {
            errors.push(format!(
                "redis.caFile: {} contains no PEM certificate",
                path.display()
            ));
            None
        }
        Err(e) => {
            errors.push(format!("redis.caFile: cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Checks a `redis://` or `rediss://` URL; errors never show its password.
fn check_redis_url(field: &str, text: &str, errors: &mut Vec<String>) -> bool {
    let example = "redis://[user:password@]host:6379[/db] or rediss:// for TLS";
    let Ok(mut url) = reqwest::Url::parse(text) else {
        errors.push(format!("{field}: not a valid URL; use {example}"));
        return false;
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("redacted"));
    }
    let shown = url.to_string();
    if !matches!(url.scheme(), "redis" | "rediss") {
        errors.push(format!(
            "{field}: unsupported scheme in {shown:?}; use {example}"
        ));
        return false;
    }
    if url.host_str().is_none_or(str::is_empty) {
        errors.push(format!("{field}: missing host in {shown:?}; use {example}"));
        return false;
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u32>().is_err() {
        errors.push(format!(
            "{field}: database {db:?} in {shown:?} is not a number; use {example}"
        ));
        return false;
    }
    true
}

fn resolve_models(models: &[RawModel], errors: &mut Vec<String>) -> ModelCatalog {
    let mut entries = Vec::with_capacity(models.len());
    for (i, model) in models.iter().enumerate() {
        let path = format!("models[{i}]");
        let name = model.name.trim();
        let star_inside = name.trim_end_matches('*').contains('*');
        if name.is_empty() || star_inside {
            errors.push(format!(
                "{path}.name: invalid name {name:?}; use a model name, or a prefix ending in *"
            ));
            continue;
        }
        if model.context_window == 0 {
            errors.push(format!("{path}.contextWindow: must be greater than 0"));
            continue;
        }
        if model.max_output_tokens == 0 || model.max_output_tokens > model.context_window {
            errors.push(format!(
                "{path}.maxOutputTokens: must be between 1 and contextWindow ({}), found {}",
                model.context_window, model.max_output_tokens
            ));
            continue;
        }
        entries.push(CatalogEntry {
            pattern: name.to_owned(),
            limits: ModelLimits {
                context_window: model.context_window,
                max_output_tokens: model.max_output_tokens,
            },
        });
    }
    ModelCatalog::new(entries, crate::context::catalog::DEFAULT_LIMITS)
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
    fn redis_url_selects_the_redis_store() {
        let overrides = Overrides {
            redis_url: Some("rediss://app:s3cret@redis.example:6380/2".to_owned()),
            ..Overrides::default()
        };
        let config = Config::resolve(RawConfig::default(), overrides, &no_env()).expect("valid");
        let redis = config.store.redis.expect("redis configured");
        assert_eq!(redis.mode, RedisMode::Standalone);
        assert_eq!(redis.key_prefix, "agent-sidecar");
        assert!(!format!("{redis:?}").contains("s3cret"));
        assert_eq!(
            config.store.shutdown_grace,
            Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS)
        );
    }

    #[test]
    fn no_redis_url_means_memory_store() {
        let config =
            Config::resolve(RawConfig::default(), Overrides::default(), &no_env()).expect("valid");
        assert!(config.store.redis.is_none());
    }

    #[test]
    fn redis_errors_are_reported_without_the_password() {
        let raw: RawConfig = serde_norway::from_str(
            "redisUrl: 'http://app:s3cret@host/x'\nredis: {mode: sentinel, nodes: ['nope'], keyPrefix: 'a{b}', commandTimeoutMs: 0}\nstore: {outageBufferTurns: 0, shutdownGraceSecs: 900}\n",
        )
        .expect("valid yaml");
        let errors = Config::resolve(raw, Overrides::default(), &no_env())
            .expect_err("invalid")
            .0;
        let joined = errors.join("\n");
        for expected in [
            "redisUrl: unsupported scheme",
            "redis.nodes[0]: not a valid URL",
            "redis.sentinelMasterName: missing",
            "redis.keyPrefix: invalid prefix",
            "redis.commandTimeoutMs: must be greater than 0",
            "store.outageBufferTurns: must be greater than 0",
            "store.shutdownGraceSecs: must be at most 300",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in\n{joined}"
            );
        }
        assert!(!joined.contains("s3cret"), "{joined}");
    }

    #[test]
    fn redis_settings_without_url_are_an_error() {
        let raw: RawConfig = serde_norway::from_str("redis: {mode: cluster}\n").expect("yaml");
        let errors = Config::resolve(raw, Overrides::default(), &no_env())
            .expect_err("no url")
            .0;
        assert!(errors[0].contains("redisUrl is not set"), "{errors:?}");
    }

    #[test]
    fn cluster_and_sentinel_modes_resolve() {
        let raw: RawConfig = serde_norway::from_str(
            "redisUrl: redis://a:7000\nredis: {mode: cluster, nodes: ['redis://b:7001']}\n",
        )
        .expect("yaml");
        let config = Config::resolve(raw, Overrides::default(), &no_env()).expect("valid");
        assert_eq!(
            config.store.redis.expect("redis").mode,
            RedisMode::Cluster {
                nodes: vec!["redis://b:7001".to_owned()]
            }
        );
        let raw: RawConfig = serde_norway::from_str(
            "redisUrl: redis://s1:26379\nredis: {mode: sentinel, sentinelMasterName: mymaster}\n",
        )
        .expect("yaml");
        let config = Config::resolve(raw, Overrides::default(), &no_env()).expect("valid");
        assert_eq!(
            config.store.redis.expect("redis").mode,
            RedisMode::Sentinel {
                master_name: "mymaster".to_owned(),
                nodes: Vec::new()
            }
        );
    }

    #[test]
    fn redis_ca_file_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").expect("write");
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");

        let resolve = |url: &str, file: &Path| {
            let raw = RawConfig {
                redis_url: Some(url.to_owned()),
                redis: RawRedis {
                    ca_file: Some(file.to_owned()),
                    ..RawRedis::default()
                },
                ..RawConfig::default()
            };
            Config::resolve(raw, Overrides::default(), &no_env())
        };
        let plain = resolve("redis://h:6379", &pem)
            .expect_err("caFile needs TLS")
            .0;
        assert!(plain[0].contains("rediss://"), "{plain:?}");
        let garbage = resolve("rediss://h:6379", &not_pem)
            .expect_err("not a certificate")
            .0;
        assert!(garbage[0].contains("no PEM certificate"), "{garbage:?}");
        let config = resolve("rediss://h:6379", &pem).expect("valid");
        let redis = config.store.redis.expect("redis configured");
        assert!(redis.ca_certificates_pem.is_some());
    }

    #[test]
    fn short_vault_key_is_rejected() {
        let env = FakeEnvironment(HashMap::from([("AGENT_SIDECAR_VAULT_KEY", "short")]));
        let errors = Config::resolve(RawConfig::default(), Overrides::default(), &env)
            .expect_err("too short")
            .0;
        assert!(errors[0].contains("AGENT_SIDECAR_VAULT_KEY"), "{errors:?}");
        let env = FakeEnvironment(HashMap::from([(
            "AGENT_SIDECAR_VAULT_KEY",
            "0123456789abcdef0123456789abcdef",
        )]));
        let config =
            Config::resolve(RawConfig::default(), Overrides::default(), &env).expect("valid");
        assert!(config.vault_key.is_some());
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn model_catalog_entries_are_validated() {
        let raw: RawConfig = serde_norway::from_str(
            "models:\n  - {name: 'llama-*', contextWindow: 131072, maxOutputTokens: 2048}\n  - {name: 'a*b', contextWindow: 10, maxOutputTokens: 1}\n  - {name: x, contextWindow: 10, maxOutputTokens: 20}\n",
        )
        .expect("yaml");
        let errors = Config::resolve(raw, Overrides::default(), &no_env())
            .expect_err("two bad entries")
            .0;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("models[1].name"), "{errors:?}");
        assert!(
            errors[1].starts_with("models[2].maxOutputTokens"),
            "{errors:?}"
        );

        let raw: RawConfig = serde_norway::from_str(
            "models:\n  - {name: 'llama-*', contextWindow: 131072, maxOutputTokens: 2048}\n",
        )
        .expect("yaml");
        let config = Config::resolve(raw, Overrides::default(), &no_env()).expect("valid");
        assert_eq!(config.models.limits("llama-3.1-8b").context_window, 131_072);
    }
}
