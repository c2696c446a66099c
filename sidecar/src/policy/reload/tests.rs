use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::events::{EventBus, EventPayload};
use crate::guard::pii::HashKey;
use crate::policy::spec::Direction;

fn policy_text(name: &str, phrase: &str) -> String {
    format!(
        "apiVersion: agent-sidecar.io/v1alpha1\n\
         kind: GuardrailPolicy\n\
         metadata:\n  name: {name}\n\
         spec:\n  topics:\n    - id: denied\n      phrases: [\"{phrase}\"]\n"
    )
}

const INVALID_POLICY: &str = "apiVersion: agent-sidecar.io/v1alpha1\n\
     kind: GuardrailPolicy\n\
     metadata:\n  name: broken\n\
     spec:\n  topics:\n    - id: bad-pattern\n      patterns: ['(unclosed']\n  \
     pii:\n    - id: bad-entity\n      entities: [NOT_AN_ENTITY]\n";

fn watcher_for(path: &Path) -> (Arc<GuardHandle>, PolicyWatcher, Arc<Metrics>) {
    let policy = Policy::load(path).expect("initial policy is valid");
    let handle = Arc::new(GuardHandle::new(
        Arc::new(policy),
        Arc::new(HashKey::new(b"test key")),
    ));
    let metrics = Metrics::new();
    let watcher = PolicyWatcher::new(handle.clone(), path.to_owned(), metrics.clone());
    (handle, watcher, metrics)
}

fn blocks(guard: &Guard, text: &str) -> bool {
    guard
        .check_content(Direction::Input, &[text])
        .verdict
        .is_blocking()
}

#[test]
fn unchanged_file_is_not_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text("first", "alpha")).expect("write");
    let (_, mut watcher, _) = watcher_for(&path);

    assert_eq!(watcher.poll(), None);
}

#[test]
fn valid_change_is_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text("first", "alpha")).expect("write");
    let (handle, mut watcher, metrics) = watcher_for(&path);
    let before = handle.current();

    std::fs::write(&path, policy_text("second", "beta")).expect("write");

    assert_eq!(watcher.poll(), Some(ReloadOutcome::Success));
    let after = handle.current();
    assert_eq!(after.policy().identity.name, "second");
    assert!(
        blocks(&after, "say beta"),
        "new policy must block its phrase"
    );
    assert!(
        !blocks(&after, "say alpha"),
        "old phrase must no longer block"
    );
    assert!(
        blocks(&before, "say alpha"),
        "a snapshot taken before the reload keeps the old policy"
    );
    assert_eq!(handle.status().successes, 1);
    assert!(
        metrics
            .encode()
            .contains("agent_sidecar_policy_reloads_total{outcome=\"success\"} 1")
    );
}

#[test]
fn invalid_change_keeps_last_good_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text("first", "alpha")).expect("write");
    let (handle, mut watcher, metrics) = watcher_for(&path);

    std::fs::write(&path, INVALID_POLICY).expect("write");

    assert_eq!(watcher.poll(), Some(ReloadOutcome::Failure));
    assert_eq!(handle.current().policy().identity.name, "first");
    assert!(blocks(&handle.current(), "say alpha"));
    let status = handle.status();
    assert_eq!(status.failures, 1);
    assert_eq!(status.last_outcome, Some(ReloadOutcome::Failure));
    assert!(status.rejected_hash.is_some());
    assert_eq!(
        status.errors.len(),
        2,
        "both problems are reported: {:?}",
        status.errors
    );
    assert!(
        metrics
            .encode()
            .contains("agent_sidecar_policy_reloads_total{outcome=\"failure\"} 1")
    );

    assert_eq!(watcher.poll(), None, "a rejected version is reported once");
    assert_eq!(handle.status().failures, 1);
}

#[test]
fn valid_change_after_rejection_is_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text("first", "alpha")).expect("write");
    let (handle, mut watcher, _) = watcher_for(&path);
    std::fs::write(&path, INVALID_POLICY).expect("write");
    watcher.poll();

    std::fs::write(&path, policy_text("third", "gamma")).expect("write");

    assert_eq!(watcher.poll(), Some(ReloadOutcome::Success));
    assert_eq!(handle.current().policy().identity.name, "third");
    let status = handle.status();
    assert!(
        status.errors.is_empty(),
        "errors cleared: {:?}",
        status.errors
    );
    assert_eq!(status.rejected_hash, None);
}

#[test]
fn reverted_file_clears_rejection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text("first", "alpha")).expect("write");
    let (handle, mut watcher, _) = watcher_for(&path);
    std::fs::write(&path, INVALID_POLICY).expect("write");
    watcher.poll();

    std::fs::write(&path, policy_text("first", "alpha")).expect("write");

    assert_eq!(watcher.poll(), None);
    assert!(handle.status().errors.is_empty());
    assert_eq!(handle.status().successes, 0);
}

#[test]
fn missing_file_is_rejected_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text("first", "alpha")).expect("write");
    let (handle, mut watcher, _) = watcher_for(&path);

    std::fs::remove_file(&path).expect("remove");

    assert_eq!(watcher.poll(), Some(ReloadOutcome::Failure));
    assert_eq!(watcher.poll(), None);
    assert_eq!(handle.current().policy().identity.name, "first");
    assert_eq!(handle.status().rejected_hash, None);
}

/// Builds the layout Kubernetes gives a ConfigMap volume: a timestamped directory, a
/// `..data` symlink to it and a file symlink through `..data`.
#[cfg(unix)]
fn configmap_version(dir: &Path, version: &str, text: &str) {
    let target = dir.join(format!("..{version}"));
    std::fs::create_dir(&target).expect("create version directory");
    std::fs::write(target.join("policy.yaml"), text).expect("write");
    let staging = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &staging).expect("symlink");
    std::fs::rename(&staging, dir.join("..data")).expect("swap ..data");
    let file_link = dir.join("policy.yaml");
    if std::fs::symlink_metadata(&file_link).is_err() {
        std::os::unix::fs::symlink("..data/policy.yaml", &file_link).expect("symlink");
    }
}

#[cfg(unix)]
#[test]
fn configmap_symlink_swap_is_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    configmap_version(dir.path(), "v1", &policy_text("first", "alpha"));
    let (handle, mut watcher, _) = watcher_for(dir.path());

    configmap_version(dir.path(), "v2", &policy_text("second", "beta"));

    assert_eq!(watcher.poll(), Some(ReloadOutcome::Success));
    assert_eq!(handle.current().policy().identity.name, "second");
}

#[tokio::test]
async fn reload_outcomes_are_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text("first", "alpha")).expect("write");
    let (_, watcher, _) = watcher_for(&path);
    let events = EventBus::new();
    let mut received = events.subscribe();
    let mut watcher = watcher.with_events(events);

    std::fs::write(&path, INVALID_POLICY).expect("write");
    watcher.poll();
    std::fs::write(&path, policy_text("second", "beta")).expect("write");
    watcher.poll();

    let rejected = received.recv().await.expect("rejection event");
    let EventPayload::PolicyReloaded {
        applied,
        policy_name,
        error,
        ..
    } = &rejected.payload
    else {
        panic!("expected a policy reload event, got {:?}", rejected.payload);
    };
    assert!(!applied);
    assert_eq!(policy_name, "first");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("spec.topics[0].patterns[0]")),
        "{error:?}"
    );

    let applied_event = received.recv().await.expect("reload event");
    assert!(matches!(
        &applied_event.payload,
        EventPayload::PolicyReloaded { applied: true, policy_name, error: None, .. } if policy_name == "second"
    ));
}
