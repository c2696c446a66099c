//! Model routing, retries, circuit breakers, active health checks and readiness: the
//! raw YAML sections and their validated form.
//!
//! ```yaml
//! targets:
//!   - name: openai-primary
//!     dialect: openai
//!     baseUrl: https://api.openai.com/v1
//!     credential: {env: OPENAI_API_KEY}
//!   - name: azure-backup
//!     dialect: openai
//!     baseUrl: https://example.openai.azure.com/openai/v1
//!     credential: {file: /var/run/secrets/azure-key}
//!     model: gpt-4o-backup
//! routes:
//!   - model: "gpt-4o*"
//!     targets: [openai-primary, azure-backup]
//! readiness:
//!   requireModels: [gpt-4o]
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Environment, Provider, Secret, SecretSource, positive, read_secret_file};

/// Attempts on one target before the request falls back to the next: the first try and
/// one retry absorb a single dropped connection or brief overload without doubling the
/// wait on a target that is really down.
pub const DEFAULT_MAX_ATTEMPTS_PER_TARGET: u32 = 2;
/// First retry delay; providers recover from short overloads within a few hundred ms.
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 200;
/// Maximum delay between two attempts, so backoff alone never stalls an agent for long.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 5_000;
/// Maximum `Retry-After` the sidecar waits for before it tries the next target instead.
/// A provider requesting minutes would otherwise hold the agent's request open that long.
pub const DEFAULT_MAX_RETRY_AFTER_MS: u64 = 10_000;
/// Consecutive failures that open a target's breaker.
pub const DEFAULT_BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
/// Share of failed requests in the window that opens a breaker.
pub const DEFAULT_BREAKER_FAILURE_RATIO: f64 = 0.5;
/// Requests the window needs before the failure ratio counts, so two requests with one
/// failure do not open a breaker.
pub const DEFAULT_BREAKER_MINIMUM_REQUESTS: u32 = 10;
/// Length of the failure-ratio window.
pub const DEFAULT_BREAKER_WINDOW_SECS: u64 = 30;
/// Time an open breaker waits before it lets one probe request through.
pub const DEFAULT_BREAKER_COOLDOWN_SECS: u64 = 15;
/// Maximum wait for an active health check's response.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT_MS: u64 = 5_000;

/// Wire format a target speaks. A route sends a request only to targets of the
/// dialect the client used, because the sidecar does not translate between them.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
        }
    }
}

/// One upstream a route can send requests to.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTarget {
    /// Name used in routes, metrics (`target` label), logs and `/readyz`.
    pub name: String,
    pub dialect: Dialect,
    /// Base URL, such as `https://api.openai.com/v1` or `https://api.anthropic.com`.
    pub base_url: String,
    /// Source of the API key. Without one, the client's own credential header is
    /// forwarded.
    pub credential: Option<RawCredential>,
    /// Model name sent to this target in place of the client's.
    pub model: Option<String>,
    /// Maximum time to open a connection; `upstream.connectTimeoutMs` when unset.
    pub connect_timeout_ms: Option<u64>,
    /// Maximum time from sending the request to the response headers;
    /// `upstream.requestTimeoutSecs` when unset.
    pub first_byte_timeout_ms: Option<u64>,
    /// Maximum silence between two chunks of a streamed response;
    /// `upstream.streamIdleTimeoutSecs` when unset.
    pub stream_idle_timeout_ms: Option<u64>,
}

/// Credential reference: exactly one of `env` and `file`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawCredential {
    /// Environment variable holding the API key.
    pub env: Option<String>,
    /// File holding the API key, such as a mounted Secret.
    pub file: Option<PathBuf>,
}

/// Models matched by name, exact or glob (`*`, `?`, `[...]`), sent to the targets in
/// order: the first available one, then the next when it fails.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRoute {
    pub model: String,
    /// Target names, in the order they are tried.
    pub targets: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts on one target (the first try included) before falling back to the next.
    pub max_attempts_per_target: Option<u32>,
    /// Delay before the first retry; it doubles with each further retry.
    pub initial_backoff_ms: Option<u64>,
    /// Upper bound of the delay between two attempts.
    pub max_backoff_ms: Option<u64>,
    /// Longest `Retry-After` honoured on the same target; a longer one moves the request
    /// to the next target at once.
    pub max_retry_after_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: Option<u32>,
    /// Share of failures (0 to 1, exclusive of 0) in the window that opens the breaker.
    pub failure_ratio: Option<f64>,
    /// Requests the window needs before the failure ratio applies.
    pub minimum_requests: Option<u32>,
    /// Length of the failure-ratio window in seconds.
    pub window_secs: Option<u64>,
    /// Seconds an open breaker waits before one probe request may pass.
    pub cooldown_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawHealthChecks {
    /// Seconds between active checks of a target that had no traffic in that time;
    /// unset or 0 turns active checks off.
    pub interval_secs: Option<u64>,
    /// Maximum wait for a check's response.
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawReadiness {
    /// Models that must have an available target for `/readyz` to return 200.
    #[serde(default)]
    pub require_models: Vec<String>,
}

/// A validated target.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub name: String,
    pub dialect: Dialect,
    pub provider: Provider,
    pub model: Option<String>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub stream_idle_timeout: Duration,
}

/// A validated route; `targets` are indexes into `RoutingConfig::targets`.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub model: String,
    pub dialect: Dialect,
    pub targets: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    pub max_attempts_per_target: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub minimum_requests: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Routing as configured: with no `routes`, one catch-all route per dialect to the
/// provider named by `openai.upstream` or `anthropic.upstream`.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub targets: Vec<TargetConfig>,
    pub routes: Vec<RouteConfig>,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    /// `None` when active checks are off.
    pub health_checks: Option<HealthCheckConfig>,
    pub require_models: Vec<String>,
}

/// Timeouts a target inherits from the `upstream` section.
#[derive(Clone, Copy, Debug)]
pub(super) struct TimeoutDefaults {
    pub connect: Duration,
    pub first_byte: Duration,
    pub stream_idle: Duration,
}

/// The sections of the raw file this module validates.
pub(super) struct RawRouting<'a> {
    pub targets: &'a [RawTarget],
    pub routes: &'a [RawRoute],
    pub retry: &'a RawRetry,
    pub circuit_breaker: &'a RawCircuitBreaker,
    pub health_checks: &'a RawHealthChecks,
    pub readiness: &'a RawReadiness,
}

pub(super) fn resolve_routing(
    raw: RawRouting<'_>,
    openai: Option<&Provider>,
    anthropic: Option<&Provider>,
    timeouts: TimeoutDefaults,
    env: &dyn Environment,
    errors: &mut Vec<String>,
) -> RoutingConfig {
    let mut targets: Vec<TargetConfig> = raw
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, target)| resolve_target(i, target, timeouts, env, errors))
        .collect();
    let mut seen = HashSet::new();
    for (i, target) in raw.targets.iter().enumerate() {
        if !seen.insert(target.name.as_str()) {
            errors.push(format!(
                "targets[{i}].name: duplicate name {:?}; give each target its own name",
                target.name
            ));
        }
    }
    if raw.routes.is_empty() && !raw.targets.is_empty() {
        errors
            .push("targets: defined but no route uses them; add routes that name them".to_owned());
    }

    let mut routes = Vec::new();
    for (i, route) in raw.routes.iter().enumerate() {
        if let Some(route) = resolve_route(i, route, &targets, errors) {
            routes.push(route);
        }
    }
    // A dialect without a route of its own keeps the provider upstream as its catch-all,
    // so configuring OpenAI routes does not cut off Anthropic clients.
    for (dialect, name, provider) in [
        (Dialect::OpenAi, "openai", openai),
        (Dialect::Anthropic, "anthropic", anthropic),
    ] {
        let covered = routes.iter().any(|route| route.dialect == dialect);
        if let (false, Some(provider)) = (covered, provider) {
            if targets.iter().any(|target| target.name == name) {
                errors.push(format!(
                    "targets: the name {name:?} belongs to the {name} provider's catch-all \
                     route, which applies because no route serves {name} requests; rename the \
                     target or add a route for {name} requests"
                ));
                continue;
            }
            let index = targets.len();
            targets.push(TargetConfig {
                name: name.to_owned(),
                dialect,
                provider: provider.clone(),
                model: None,
                connect_timeout: timeouts.connect,
                first_byte_timeout: timeouts.first_byte,
                stream_idle_timeout: timeouts.stream_idle,
            });
            routes.push(RouteConfig {
                model: "*".to_owned(),
                dialect,
                targets: vec![index],
            });
        }
    }

    let require_models = raw
        .readiness
        .require_models
        .iter()
        .enumerate()
        .filter_map(|(i, model)| {
            let model = model.trim();
            let routed = routes
                .iter()
                .any(|route| model_matches(&route.model, model));
            if model.is_empty() || !routed {
                errors.push(format!(
                    "readiness.requireModels[{i}]: no route matches model {model:?}; add a \
                     route for it or remove it from the list"
                ));
                return None;
            }
            Some(model.to_owned())
        })
        .collect();

    RoutingConfig {
        targets,
        routes,
        retry: resolve_retry(raw.retry, errors),
        breaker: resolve_breaker(raw.circuit_breaker, errors),
        health_checks: resolve_health_checks(raw.health_checks, errors),
        require_models,
    }
}

/// Returns whether `model` matches a route's model pattern, exact or glob.
pub fn model_matches(pattern: &str, model: &str) -> bool {
    if !is_glob(pattern) {
        return pattern == model;
    }
    globset::Glob::new(pattern).is_ok_and(|glob| glob.compile_matcher().is_match(model))
}

pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn resolve_target(
    index: usize,
    raw: &RawTarget,
    timeouts: TimeoutDefaults,
    env: &dyn Environment,
    errors: &mut Vec<String>,
) -> Option<TargetConfig> {
    let path = format!("targets[{index}]");
    let mut valid = true;
    if !valid_target_name(&raw.name) {
        errors.push(format!(
            "{path}.name: invalid name {:?}; use up to 64 letters, digits, '-', '_' or '.'",
            raw.name
        ));
        valid = false;
    }
    let base_url = match reqwest::Url::parse(&raw.base_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) | Err(_) => {
            errors.push(format!(
                "{path}.baseUrl: invalid URL {:?}; use an http or https base URL, such as \
                 https://api.openai.com/v1",
                raw.base_url
            ));
            None
        }
    };
    let api_key = raw
        .credential
        .as_ref()
        .and_then(|credential| resolve_credential(&path, credential, env, errors));
    if raw.credential.is_some() && api_key.is_none() {
        valid = false;
    }
    if raw.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
        errors.push(format!(
            "{path}.model: empty model name; remove it to send the client's model"
        ));
        valid = false;
    }
    let connect_timeout = optional_millis(
        &format!("{path}.connectTimeoutMs"),
        raw.connect_timeout_ms,
        timeouts.connect,
        errors,
    );
    let first_byte_timeout = optional_millis(
        &format!("{path}.firstByteTimeoutMs"),
        raw.first_byte_timeout_ms,
        timeouts.first_byte,
        errors,
    );
    let stream_idle_timeout = optional_millis(
        &format!("{path}.streamIdleTimeoutMs"),
        raw.stream_idle_timeout_ms,
        timeouts.stream_idle,
        errors,
    );
    let base_url = base_url?;
    valid.then(|| TargetConfig {
        name: raw.name.clone(),
        dialect: raw.dialect,
        provider: Provider { base_url, api_key },
        model: raw.model.as_ref().map(|m| m.trim().to_owned()),
        connect_timeout,
        first_byte_timeout,
        stream_idle_timeout,
    })
}

fn resolve_credential(
    path: &str,
    raw: &RawCredential,
    env: &dyn Environment,
    errors: &mut Vec<String>,
) -> Option<(Secret, SecretSource)> {
    match (&raw.env, &raw.file) {
        (Some(variable), None) => match env.var(variable) {
            Some(key) => Some((Secret(key.trim().to_owned()), SecretSource::Environment)),
            None => {
                errors.push(format!(
                    "{path}.credential.env: environment variable {variable} is not set; set \
                     it in the sidecar's environment or use credential.file"
                ));
                None
            }
        },
        (None, Some(file)) => read_secret_file(&format!("{path}.credential.file"), file, errors)
            .map(|secret| (secret, SecretSource::File)),
        _ => {
            errors.push(format!(
                "{path}.credential: set exactly one of env and file"
            ));
            None
        }
    }
}

fn resolve_route(
    index: usize,
    raw: &RawRoute,
    targets: &[TargetConfig],
    errors: &mut Vec<String>,
) -> Option<RouteConfig> {
    let path = format!("routes[{index}]");
    let model = raw.model.trim();
    if model.is_empty() {
        errors.push(format!(
            "{path}.model: empty; use a model name or a glob such as gpt-4o*"
        ));
        return None;
    }
    if is_glob(model)
        && let Err(e) = globset::Glob::new(model)
    {
        errors.push(format!("{path}.model: invalid glob {model:?}: {e}"));
        return None;
    }
    if raw.targets.is_empty() {
        errors.push(format!("{path}.targets: list at least one target name"));
        return None;
    }
    let mut indexes = Vec::with_capacity(raw.targets.len());
    for (j, name) in raw.targets.iter().enumerate() {
        match targets.iter().position(|t| &t.name == name) {
            Some(found) => indexes.push(found),
            None => {
                errors.push(format!(
                    "{path}.targets[{j}]: no valid target named {name:?}; define it under \
                     targets"
                ));
            }
        }
    }
    if indexes.len() != raw.targets.len() {
        return None;
    }
    let dialect = targets[indexes[0]].dialect;
    if indexes.iter().any(|&i| targets[i].dialect != dialect) {
        errors.push(format!(
            "{path}.targets: mixes openai and anthropic targets; the sidecar does not \
             translate between dialects, so give each dialect its own route"
        ));
        return None;
    }
    Some(RouteConfig {
        model: model.to_owned(),
        dialect,
        targets: indexes,
    })
}

fn resolve_retry(raw: &RawRetry, errors: &mut Vec<String>) -> RetryConfig {
    let initial_backoff_ms = positive(
        "retry.initialBackoffMs",
        raw.initial_backoff_ms,
        DEFAULT_INITIAL_BACKOFF_MS,
        errors,
    );
    let max_backoff_ms = positive(
        "retry.maxBackoffMs",
        raw.max_backoff_ms,
        DEFAULT_MAX_BACKOFF_MS.max(initial_backoff_ms),
        errors,
    );
    if max_backoff_ms < initial_backoff_ms {
        errors.push(format!(
            "retry.maxBackoffMs: {max_backoff_ms} is below retry.initialBackoffMs \
             ({initial_backoff_ms}); raise it or lower the initial backoff"
        ));
    }
    RetryConfig {
        max_attempts_per_target: positive(
            "retry.maxAttemptsPerTarget",
            raw.max_attempts_per_target,
            DEFAULT_MAX_ATTEMPTS_PER_TARGET,
            errors,
        ),
        initial_backoff: Duration::from_millis(initial_backoff_ms),
        max_backoff: Duration::from_millis(max_backoff_ms),
        max_retry_after: Duration::from_millis(
            raw.max_retry_after_ms.unwrap_or(DEFAULT_MAX_RETRY_AFTER_MS),
        ),
    }
}

fn resolve_breaker(raw: &RawCircuitBreaker, errors: &mut Vec<String>) -> BreakerConfig {
    let failure_ratio = raw.failure_ratio.unwrap_or(DEFAULT_BREAKER_FAILURE_RATIO);
    if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
        errors.push(format!(
            "circuitBreaker.failureRatio: must be greater than 0 and at most 1, found \
             {failure_ratio}"
        ));
    }
    BreakerConfig {
        consecutive_failures: positive(
            "circuitBreaker.consecutiveFailures",
            raw.consecutive_failures,
            DEFAULT_BREAKER_CONSECUTIVE_FAILURES,
            errors,
        ),
        failure_ratio,
        minimum_requests: positive(
            "circuitBreaker.minimumRequests",
            raw.minimum_requests,
            DEFAULT_BREAKER_MINIMUM_REQUESTS,
            errors,
        ),
        window: Duration::from_secs(positive(
            "circuitBreaker.windowSecs",
            raw.window_secs,
            DEFAULT_BREAKER_WINDOW_SECS,
            errors,
        )),
        cooldown: Duration::from_secs(positive(
            "circuitBreaker.cooldownSecs",
            raw.cooldown_secs,
            DEFAULT_BREAKER_COOLDOWN_SECS,
            errors,
        )),
    }
}

fn resolve_health_checks(
    raw: &RawHealthChecks,
    errors: &mut Vec<String>,
) -> Option<HealthCheckConfig> {
    let timeout_ms = positive(
        "healthChecks.timeoutMs",
        raw.timeout_ms,
        DEFAULT_HEALTH_CHECK_TIMEOUT_MS,
        errors,
    );
    match raw.interval_secs {
        None | Some(0) => None,
        Some(secs) => Some(HealthCheckConfig {
            interval: Duration::from_secs(secs),
            timeout: Duration::from_millis(timeout_ms),
        }),
    }
}

fn optional_millis(
    field: &str,
    value: Option<u64>,
    default: Duration,
    errors: &mut Vec<String>,
) -> Duration {
    match value {
        Some(0) => {
            errors.push(format!("{field}: must be greater than 0, found 0"));
            default
        }
        Some(ms) => Duration::from_millis(ms),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Overrides, RawConfig};
    use super::*;

    struct NoEnvironment;

    impl Environment for NoEnvironment {
        fn var(&self, _name: &str) -> Option<String> {
            None
        }
    }

    fn resolve(yaml: &str) -> Result<Config, Vec<String>> {
        let raw: RawConfig = serde_norway::from_str(yaml).expect("valid YAML");
        Config::resolve(raw, Overrides::default(), &NoEnvironment).map_err(|e| e.0)
    }

    #[test]
    fn no_routes_means_one_catch_all_per_provider() {
        let config = resolve("{}").expect("defaults are valid");
        let routing = &config.routing;
        assert_eq!(routing.routes.len(), 2);
        assert_eq!(routing.routes[0].model, "*");
        assert_eq!(routing.routes[0].dialect, Dialect::OpenAi);
        assert_eq!(routing.targets[0].name, "openai");
        assert_eq!(
            routing.targets[0].provider.base_url.as_str(),
            "https://api.openai.com/v1"
        );
        assert_eq!(routing.routes[1].dialect, Dialect::Anthropic);
        assert_eq!(routing.targets[1].name, "anthropic");
        assert!(routing.health_checks.is_none());
        assert_eq!(
            routing.retry.max_attempts_per_target,
            DEFAULT_MAX_ATTEMPTS_PER_TARGET
        );
    }

    #[test]
    fn openai_routes_keep_the_anthropic_catch_all() {
        let config = resolve(
            "targets:
  - {name: a, dialect: openai, baseUrl: 'http://127.0.0.1:1/v1', model: m2, firstByteTimeoutMs: 1500}
routes:
  - {model: 'gpt-*', targets: [a]}
",
        )
        .expect("valid");
        let routing = &config.routing;
        assert_eq!(routing.routes.len(), 2);
        assert_eq!(routing.routes[0].model, "gpt-*");
        assert_eq!(routing.routes[1].dialect, Dialect::Anthropic);
        assert_eq!(routing.targets[0].model.as_deref(), Some("m2"));
        assert_eq!(
            routing.targets[0].first_byte_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            routing.targets[0].stream_idle_timeout,
            config.stream_idle_timeout
        );
    }

    #[test]
    fn routing_errors_are_reported_together() {
        let errors = resolve(
            "targets:
  - {name: a, dialect: openai, baseUrl: 'http://127.0.0.1:1/v1'}
  - {name: a, dialect: anthropic, baseUrl: 'http://127.0.0.1:2', credential: {}}
  - {name: c, dialect: anthropic, baseUrl: 'http://127.0.0.1:3', connectTimeoutMs: 0}
routes:
  - {model: 'gpt-[', targets: [a]}
  - {model: 'x', targets: [a, c]}
  - {model: 'y', targets: []}
retry: {initialBackoffMs: 500, maxBackoffMs: 100}
",
        )
        .expect_err("invalid");
        let joined = errors.join("\n");
        for expected in [
            "targets[1].name: duplicate name \"a\"",
            "targets[1].credential: set exactly one of env and file",
            "targets[2].connectTimeoutMs: must be greater than 0",
            "routes[0].model: invalid glob",
            "routes[1].targets: mixes openai and anthropic targets",
            "routes[2].targets: list at least one target name",
            "retry.maxBackoffMs: 100 is below retry.initialBackoffMs (500)",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in\n{joined}"
            );
        }
    }

    #[test]
    fn catch_all_name_is_reserved() {
        let errors = resolve(
            "targets:
  - {name: openai, dialect: anthropic, baseUrl: 'http://127.0.0.1:1'}
routes:
  - {model: 'claude-*', targets: [openai]}
",
        )
        .expect_err("name clash");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("targets: the name \"openai\" belongs to"),
            "{errors:?}"
        );
    }

    #[test]
    fn required_model_needs_a_route() {
        let errors = resolve(
            "targets:
  - {name: a, dialect: openai, baseUrl: 'http://127.0.0.1:1/v1'}
  - {name: b, dialect: anthropic, baseUrl: 'http://127.0.0.1:2'}
routes:
  - {model: 'gpt-*', targets: [a]}
  - {model: 'claude-*', targets: [b]}
readiness: {requireModels: [gpt-4o, llama-3]}
",
        )
        .expect_err("llama-3 has no route");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("readiness.requireModels[1]: no route matches model \"llama-3\""),
            "{errors:?}"
        );
    }

    #[test]
    fn credential_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-from-file\n").expect("write key");
        let config = resolve(&format!(
            "targets:
  - {{name: a, dialect: anthropic, baseUrl: 'http://127.0.0.1:1', credential: {{file: '{}'}}}}
routes:
  - {{model: 'claude-*', targets: [a]}}
",
            key.display()
        ))
        .expect("valid");
        let (secret, source) = config.routing.targets[0]
            .provider
            .api_key
            .clone()
            .expect("credential");
        assert_eq!(secret.expose(), "sk-from-file");
        assert_eq!(source, SecretSource::File);
        assert!(!format!("{:?}", config.routing).contains("sk-from-file"));
    }

    #[test]
    fn glob_and_exact_patterns_match() {
        assert!(model_matches("gpt-4o*", "gpt-4o-mini"));
        assert!(!model_matches("gpt-4o*", "gpt-4"));
        assert!(model_matches("gpt-4o", "gpt-4o"));
        assert!(!model_matches("gpt-4o", "gpt-4o-mini"));
        assert!(model_matches("*", "anything"));
    }
}
