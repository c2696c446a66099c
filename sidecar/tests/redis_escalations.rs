//! The Redis escalation store against real `redis-server` processes that each test
//! starts on a free loopback port, with its own data directory. Every server is killed
//! by PID when its guard is dropped, also when a test fails.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_sidecar::guard::Guard;
use agent_sidecar::guard::pii::HashKey;
use agent_sidecar::policy::Policy;
use agent_sidecar::state::StoreError;
use agent_sidecar::state::escalation::{
    DEFAULT_ESCALATION_TTL, Escalation, EscalationState, EscalationStore, Resolution, ResolveError,
};
use agent_sidecar::state::redis::{RedisEscalations, RedisMode, RedisSettings};
use serde_json::json;
use support::{Cluster, RedisServer};

fn settings(url: String) -> RedisSettings {
    RedisSettings {
        command_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..RedisSettings::standalone(url)
    }
}

fn guard() -> Guard {
    let policy = Policy::embedded_default().expect("embedded policy compiles");
    Guard::new(Arc::new(policy), Arc::new(HashKey::new(b"test key")))
}

fn escalation(guard: &Guard, conversation: &str, amount: u64, ttl: Duration) -> Escalation {
    Escalation::new(
        guard,
        conversation,
        "wire_transfer",
        Some(&json!({"amount": amount, "to": "jane.doe@example.com"})),
        "wire-review",
        ttl,
    )
}

fn approve(by: &str) -> Resolution {
    Resolution {
        approve: true,
        resolved_by: by.to_owned(),
        reason: Some("verified by phone".to_owned()),
    }
}

async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable")
}

#[tokio::test]
async fn create_find_list_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let store = RedisEscalations::open(&settings(server.url())).expect("store opens");
    let guard = guard();

    let first = escalation(&guard, "c1", 5, DEFAULT_ESCALATION_TTL);
    let created = store.create(first.clone()).await.expect("create");
    assert_eq!(created, first);
    assert!(
        !created.arguments.contains("jane.doe"),
        "{}",
        created.arguments
    );

    let found = store.find(&first.fingerprint).await.expect("find");
    assert_eq!(found.as_ref(), Some(&first));
    let other = escalation(&guard, "c1", 6, DEFAULT_ESCALATION_TTL);
    assert_eq!(store.find(&other.fingerprint).await.expect("find"), None);

    tokio::time::sleep(Duration::from_millis(2)).await;
    let second = store.create(other.clone()).await.expect("create");
    let third = store
        .create(escalation(&guard, "c2", 5, DEFAULT_ESCALATION_TTL))
        .await
        .expect("create");

    let in_c1: Vec<String> = store
        .list(Some("c1"))
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(in_c1, vec![second.id.clone(), first.id.clone()]);
    let all = store.list(None).await.expect("list");
    assert_eq!(all.len(), 3);
    assert!(all.iter().any(|e| e.id == third.id));
    assert!(store.list(Some("c3")).await.expect("list").is_empty());

    let resolved = store
        .resolve(&first.id, approve("oncall"))
        .await
        .expect("resolve");
    assert_eq!(resolved.state, EscalationState::Approved);
    assert_eq!(resolved.resolved_by.as_deref(), Some("oncall"));
    assert_eq!(resolved.reason.as_deref(), Some("verified by phone"));
    assert!(resolved.resolved_at_ms.is_some());

    let found = store
        .find(&first.fingerprint)
        .await
        .expect("find")
        .expect("still in force");
    assert_eq!(found, resolved);

    let denied = store
        .resolve(
            &second.id,
            Resolution {
                approve: false,
                resolved_by: "oncall".to_owned(),
                reason: None,
            },
        )
        .await
        .expect("resolve");
    assert_eq!(denied.state, EscalationState::Denied);
    assert_eq!(denied.reason, None);
}

#[tokio::test]
async fn create_is_idempotent_per_fingerprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let store = Arc::new(RedisEscalations::open(&settings(server.url())).expect("store opens"));
    let guard = guard();

    let candidates: Vec<Escalation> = (0..8)
        .map(|_| escalation(&guard, "c1", 5, DEFAULT_ESCALATION_TTL))
        .collect();
    let tasks: Vec<_> = candidates
        .into_iter()
        .map(|candidate| {
            let store = store.clone();
            tokio::spawn(async move { store.create(candidate).await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("task").expect("create").id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "concurrent creates returned {ids:?}");
    assert_eq!(store.list(Some("c1")).await.expect("list").len(), 1);

    store
        .resolve(&ids[0], approve("oncall"))
        .await
        .expect("resolve");
    let again = store
        .create(escalation(&guard, "c1", 5, DEFAULT_ESCALATION_TTL))
        .await
        .expect("create");
    assert_eq!(again.id, ids[0], "a resolved escalation stays in force");
    assert_eq!(again.state, EscalationState::Approved);
}

#[tokio::test]
async fn resolve_succeeds_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let store = Arc::new(RedisEscalations::open(&settings(server.url())).expect("store opens"));
    let guard = guard();
    let created = store
        .create(escalation(&guard, "c1", 5, DEFAULT_ESCALATION_TTL))
        .await
        .expect("create");

    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            let id = created.id.clone();
            tokio::spawn(async move { store.resolve(&id, approve(&format!("user{n}"))).await })
        })
        .collect();
    let mut succeeded = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => succeeded += 1,
            Err(ResolveError::AlreadyResolved { state, .. }) => {
                assert_eq!(state, EscalationState::Approved);
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(succeeded, 1);

    let error = store
        .resolve(&created.id, approve("late"))
        .await
        .expect_err("already resolved");
    assert!(
        matches!(error, ResolveError::AlreadyResolved { ref id, state: EscalationState::Approved } if id == &created.id),
        "{error}"
    );
    let error = store
        .resolve("esc_missing", approve("oncall"))
        .await
        .expect_err("unknown id");
    assert!(
        matches!(error, ResolveError::NotFound(ref id) if id == "esc_missing"),
        "{error}"
    );
}

#[tokio::test]
async fn escalations_expire_with_their_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let store = RedisEscalations::open(&settings(server.url())).expect("store opens");
    let guard = guard();
    let ttl = Duration::from_millis(400);
    let short = store
        .create(escalation(&guard, "c1", 5, ttl))
        .await
        .expect("create");

    let mut raw = raw_connection(&server.url()).await;
    let record_key = format!("agent-sidecar:{{escalations}}:id:{}", short.id);
    let remaining: i64 = redis::cmd("PTTL")
        .arg(&record_key)
        .query_async(&mut raw)
        .await
        .expect("PTTL");
    assert!(
        remaining > 0 && remaining <= 400,
        "record PTTL {remaining} ms"
    );
    let fingerprint_key = format!(
        "agent-sidecar:{{escalations}}:fingerprint:{}",
        short.fingerprint
    );
    let remaining: i64 = redis::cmd("PTTL")
        .arg(&fingerprint_key)
        .query_async(&mut raw)
        .await
        .expect("PTTL");
    assert!(
        remaining > 0 && remaining <= 400,
        "fingerprint PTTL {remaining} ms"
    );

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.find(&short.fingerprint).await.expect("find"), None);
    assert!(store.list(Some("c1")).await.expect("list").is_empty());
    assert!(store.list(None).await.expect("list").is_empty());
    let error = store
        .resolve(&short.id, approve("oncall"))
        .await
        .expect_err("expired");
    assert!(matches!(error, ResolveError::NotFound(_)), "{error}");

    let replacement = store
        .create(escalation(&guard, "c1", 5, DEFAULT_ESCALATION_TTL))
        .await
        .expect("create");
    assert_ne!(
        replacement.id, short.id,
        "an expired escalation is replaced"
    );
}

#[tokio::test]
async fn escalations_survive_restart_and_are_shared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = RedisServer::start(dir.path(), &[]);
    let guard = guard();
    let created = {
        let first = RedisEscalations::open(&settings(server.url())).expect("store opens");
        first
            .create(escalation(&guard, "c1", 5, DEFAULT_ESCALATION_TTL))
            .await
            .expect("create")
    };

    // Another sidecar process: a second store on the same Redis, after Redis restarted
    // and reloaded its append-only file.
    server.restart();
    let second = RedisEscalations::open(&settings(server.url())).expect("store opens");
    let found = second
        .find(&created.fingerprint)
        .await
        .expect("find")
        .expect("escalation survives");
    assert_eq!(found, created);
    let resolved = second
        .resolve(&created.id, approve("oncall"))
        .await
        .expect("resolve");
    assert_eq!(resolved.state, EscalationState::Approved);

    let third = RedisEscalations::open(&settings(server.url())).expect("store opens");
    let listed = third.list(Some("c1")).await.expect("list");
    assert_eq!(listed, vec![resolved]);
}

#[tokio::test]
async fn unreachable_redis_is_unavailable() {
    let url = format!("redis://127.0.0.1:{}", support::free_port());
    let store = RedisEscalations::open(&settings(url)).expect("opening does not connect");
    let error = store.find("fingerprint").await.expect_err("no server");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    let error = store
        .resolve("esc_1", approve("oncall"))
        .await
        .expect_err("no server");
    assert!(
        matches!(error, ResolveError::Store(StoreError::Unavailable(_))),
        "{error}"
    );
}

#[tokio::test]
async fn cluster_keeps_escalations_in_one_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path());
    let nodes: Vec<String> = cluster.servers[1..].iter().map(RedisServer::url).collect();
    let redis = RedisSettings {
        mode: RedisMode::Cluster { nodes },
        command_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..RedisSettings::standalone(cluster.servers[0].url())
    };
    let store = RedisEscalations::open(&redis).expect("store opens");
    let guard = guard();

    // Escalations of several conversations; their keys all share the `{escalations}` tag.
    let mut created = Vec::new();
    for conversation in ["c1", "c2", "c3", "c4", "c5", "c6"] {
        let candidate = escalation(&guard, conversation, 5, DEFAULT_ESCALATION_TTL);
        let stored = store.create(candidate.clone()).await.expect("create");
        assert_eq!(stored.id, candidate.id);
        let again = store
            .create(escalation(&guard, conversation, 5, DEFAULT_ESCALATION_TTL))
            .await
            .expect("create");
        assert_eq!(
            again.id, candidate.id,
            "{conversation}: create is idempotent"
        );
        created.push(stored);
    }

    assert_eq!(store.list(None).await.expect("list").len(), created.len());
    for escalation in &created {
        let listed = store
            .list(Some(&escalation.conversation_id))
            .await
            .expect("list");
        assert_eq!(listed, vec![escalation.clone()]);
        let resolved = store
            .resolve(&escalation.id, approve("oncall"))
            .await
            .expect("resolve");
        assert_eq!(resolved.state, EscalationState::Approved);
        let found = store
            .find(&escalation.fingerprint)
            .await
            .expect("find")
            .expect("still in force");
        assert_eq!(found, resolved);
    }
}
