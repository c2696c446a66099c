//! Policy hot reload: the guard that requests take a snapshot of, and the watcher that
//! polls the policy path and swaps in each new valid policy.
//!
//! The watcher reads the policy's files every interval and compiles them only when their
//! content hash changed. Reading resolves symlinks on every poll, so a ConfigMap volume,
//! where Kubernetes replaces the `..data` symlink in one rename, is seen as a new version
//! once its swap is complete. An editor that rewrites a file in place can be read half
//! written. That version is rejected like any invalid one, and the next poll reads the
//! finished file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::load::{self, PolicyErrors};
use super::{Policy, content_hash};
use crate::events::{EventBus, EventPayload};
use crate::guard::Guard;
use crate::guard::pii::HashKey;
use crate::telemetry::metrics::Metrics;

/// Default time between two reads of the policy path. The kubelet refreshes a mounted
/// ConfigMap on its sync period (one minute by default), so a one-second poll adds little
/// to that delay, and reading a few kilobytes once a second is cheap.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 1_000;

/// Outcome label of a reload, as counted by `agent_sidecar_policy_reloads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadOutcome {
    Success,
    Failure,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Success => "success",
            ReloadOutcome::Failure => "failure",
        }
    }
}

/// Reload history shown in `/readyz`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadStatus {
    pub successes: u64,
    pub failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<ReloadOutcome>,
    /// Time of the last reload attempt, in seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_unix_secs: Option<u64>,
    /// Content hash of the rejected version on disk, `None` once the files on disk are
    /// the enforced policy again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_hash: Option<String>,
    /// Every problem of the rejected version, empty when nothing is rejected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The guard new requests use. A request takes one snapshot with [`GuardHandle::current`]
/// and keeps it to its end, so a reload never changes the policy under a request in flight.
#[derive(Debug)]
pub struct GuardHandle {
    current: ArcSwap<Guard>,
    hash_key: Arc<HashKey>,
    status: Mutex<ReloadStatus>,
}

impl GuardHandle {
    pub fn new(policy: Arc<Policy>, hash_key: Arc<HashKey>) -> GuardHandle {
        GuardHandle {
            current: ArcSwap::from_pointee(Guard::new(policy, hash_key.clone())),
            hash_key,
            status: Mutex::new(ReloadStatus::default()),
        }
    }

    /// Returns the guard of the policy enforced now.
    pub fn current(&self) -> Arc<Guard> {
        self.current.load_full()
    }

    /// Returns a copy of the reload history.
    pub fn status(&self) -> ReloadStatus {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        // The status holds plain counters and strings, so a panic while it was locked
        // leaves it usable.
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `policy` the enforced policy. Requests that already hold a snapshot keep
    /// the previous one.
    fn install(&self, policy: Policy) {
        let guard = Guard::new(Arc::new(policy), self.hash_key.clone());
        self.current.store(Arc::new(guard));
        let mut status = self.lock_status();
        status.successes += 1;
        status.last_outcome = Some(ReloadOutcome::Success);
        status.last_attempt_unix_secs = Some(unix_now());
        status.rejected_hash = None;
        status.errors.clear();
    }

    fn reject(&self, hash: Option<String>, errors: &PolicyErrors) {
        let mut status = self.lock_status();
        status.failures += 1;
        status.last_outcome = Some(ReloadOutcome::Failure);
        status.last_attempt_unix_secs = Some(unix_now());
        status.rejected_hash = hash;
        status.errors = errors.0.iter().map(ToString::to_string).collect();
    }

    /// Clears a rejection because the files on disk are the enforced policy again.
    fn clear_rejection(&self) {
        let mut status = self.lock_status();
        status.rejected_hash = None;
        status.errors.clear();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Content the watcher last read from the policy path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// Files with this content hash.
    Content(String),
    /// A read that failed with this report.
    Unreadable(String),
}

/// Polls a policy path and installs each new valid version into a [`GuardHandle`].
#[derive(Debug)]
pub struct PolicyWatcher {
    handle: Arc<GuardHandle>,
    path: PathBuf,
    metrics: Arc<Metrics>,
    seen: Seen,
    /// Bus that gRPC event watchers read; `None` publishes nothing.
    events: Option<EventBus>,
}

impl PolicyWatcher {
    /// Creates a watcher of `path`, whose enforced version is the handle's current policy.
    pub fn new(handle: Arc<GuardHandle>, path: PathBuf, metrics: Arc<Metrics>) -> PolicyWatcher {
        let seen = Seen::Content(handle.current().policy().identity.hash.clone());
        PolicyWatcher {
            handle,
            path,
            metrics,
            seen,
            events: None,
        }
    }

    /// Publishes each reload outcome, applied or rejected, on `events`.
    pub fn with_events(mut self, events: EventBus) -> PolicyWatcher {
        self.events = Some(events);
        self
    }

    fn publish(&self, payload: EventPayload) {
        if let Some(events) = &self.events {
            events.publish(None, payload);
        }
    }

    /// Reads the policy path once and installs or rejects what changed since the last
    /// read. Returns the outcome when a new version was found. Blocks on file reads and
    /// on compiling the policy.
    pub fn poll(&mut self) -> Option<ReloadOutcome> {
        let sources = match load::read_sources(&self.path) {
            Ok(sources) => sources,
            Err(errors) => {
                let seen = Seen::Unreadable(errors.to_string());
                if seen == self.seen {
                    return None;
                }
                self.seen = seen;
                return Some(self.rejected(None, &errors));
            }
        };
        let hash = content_hash(&sources);
        let seen = Seen::Content(hash.clone());
        if seen == self.seen {
            return None;
        }
        self.seen = seen;
        let enforced = self.handle.current();
        if enforced.policy().identity.hash == hash {
            // The files went back to the enforced version, for example after a rejected
            // edit was reverted, so there is nothing to compile.
            self.handle.clear_rejection();
            tracing::info!(
                policy = %enforced.policy().identity.name,
                policy.hash = %hash,
                "policy files match the enforced policy again"
            );
            return None;
        }
        match Policy::from_sources(&sources, &self.path) {
            Ok(policy) => {
                tracing::info!(
                    policy = %policy.identity.name,
                    policy.hash = %policy.identity.hash,
                    policy.generation = policy.identity.generation,
                    policy.previous_hash = %enforced.policy().identity.hash,
                    rules = policy.rule_count,
                    "policy reloaded"
                );
                self.metrics.record_policy_loaded(&policy);
                self.metrics.record_policy_reload(ReloadOutcome::Success);
                self.publish(EventPayload::PolicyReloaded {
                    applied: true,
                    policy_name: policy.identity.name.clone(),
                    policy_hash: policy.identity.hash.clone(),
                    error: None,
                });
                self.handle.install(policy);
                Some(ReloadOutcome::Success)
            }
            Err(errors) => Some(self.rejected(Some(hash), &errors)),
        }
    }

    fn rejected(&self, hash: Option<String>, errors: &PolicyErrors) -> ReloadOutcome {
        let enforced = self.handle.current();
        // One line, so log collectors keep the whole report in one record.
        let report = errors
            .0
            .iter()
            .map(|e| e.to_string().replace('\n', " "))
            .collect::<Vec<_>>()
            .join("; ");
        // Logged once per rejected version, because the next poll finds the same hash and
        // returns early.
        tracing::error!(
            policy.source = %self.path.display(),
            policy.rejected_hash = hash.as_deref().unwrap_or("unreadable"),
            policy = %enforced.policy().identity.name,
            policy.hash = %enforced.policy().identity.hash,
            problems = errors.0.len(),
            errors = %report,
            "policy reload rejected; the last valid policy stays enforced"
        );
        self.metrics.record_policy_reload(ReloadOutcome::Failure);
        self.publish(EventPayload::PolicyReloaded {
            applied: false,
            policy_name: enforced.policy().identity.name.clone(),
            policy_hash: hash.clone().unwrap_or_default(),
            error: Some(report),
        });
        self.handle.reject(hash, errors);
        ReloadOutcome::Failure
    }

    /// Polls every `interval` until `shutdown` turns true.
    pub async fn run(
        mut self,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once, and the policy was just loaded.
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let polled = tokio::task::spawn_blocking(move || {
                self.poll();
                self
            })
            .await;
            self = match polled {
                Ok(watcher) => watcher,
                Err(error) => {
                    tracing::error!(error = %error, "policy watcher stopped; restart the sidecar to reload the policy");
                    return;
                }
            };
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
