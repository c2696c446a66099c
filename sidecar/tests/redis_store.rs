//! The Redis conversation store against real `redis-server` processes that each test
//! starts on free loopback ports, with its own data directory. Every server is killed by
//! PID when its guard is dropped, also when a test fails.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sidecar::dialect::{Message, Part, Role};
use agent_sidecar::state::redis::{RedisMode, RedisSettings, RedisStore};
use agent_sidecar::state::vault::{PseudonymVault, VaultKey};
use support::{Cluster, RedisServer};

use agent_sidecar::state::{
    Admission, Append, Appended, ConversationStore, FailurePolicy, StoreError, StoreSettings,
    StoreStatus, Summary, Turn,
};

const HOUR: Duration = Duration::from_secs(3600);

fn settings(url: String) -> RedisSettings {
    RedisSettings {
        command_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..RedisSettings::standalone(url)
    }
}

fn store_settings() -> StoreSettings {
    StoreSettings::default()
}

fn turn(label: &str) -> Turn {
    Turn::new(
        "gpt-4o",
        "policy@abc",
        vec![
            Message {
                role: Role::User,
                parts: vec![Part::Text {
                    text: format!("question {label}"),
                }],
            },
            Message {
                role: Role::Assistant,
                parts: vec![Part::Text {
                    text: format!("answer {label}"),
                }],
            },
        ],
    )
    .with_tokens(12)
}

fn append(label: &str) -> Append {
    Append {
        turn: turn(label),
        vault: Vec::new(),
        expected_version: None,
        ttl: HOUR,
    }
}

fn labels(turns: &[Turn]) -> Vec<String> {
    turns
        .iter()
        .map(|t| match &t.messages[0].parts[0] {
            Part::Text { text } => text.trim_start_matches("question ").to_owned(),
            other => panic!("unexpected part {other:?}"),
        })
        .collect()
}

async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("test connects to its server")
}

/// Polls `condition` every 20 ms for at most `limit`.
async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn append_and_load_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let store = RedisStore::open(settings(server.url()), store_settings()).expect("open");

    let key = VaultKey::from_secret(b"integration test vault key, 32+ bytes");
    let mut vault = PseudonymVault::open(key.clone(), "conv-1", &[]);
    let placeholder = vault.pseudonym("EMAIL", "jane@example.com");
    let first = Append {
        vault: vault.take_new_entries(),
        ..append("one")
    };
    let sent = first.turn.clone();
    assert_eq!(
        store.append("conv-1", first).await.expect("append"),
        Appended::Stored { version: 1 }
    );
    assert_eq!(
        store.append("conv-1", append("two")).await.expect("append"),
        Appended::Stored { version: 2 }
    );

    let loaded = store.load("conv-1").await.expect("load").expect("exists");
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.turns[0], sent, "a turn reads back exactly");
    assert_eq!(labels(&loaded.turns), ["one", "two"]);
    assert_eq!(loaded.metadata.model, "gpt-4o");
    assert_eq!(loaded.metadata.policy, "policy@abc");
    assert!(loaded.metadata.created_at_ms > 0);
    assert!(loaded.metadata.updated_at_ms >= loaded.metadata.created_at_ms);
    let reopened = PseudonymVault::open(key, "conv-1", &loaded.vault);
    assert_eq!(reopened.value(&placeholder), Some("jane@example.com"));

    let summary = Summary {
        text: "They talked.".to_owned(),
        first_turn: 0,
        end_turn: 1,
        covered_messages: 2,
        tokens: 3,
        model: "gpt-4o-mini".to_owned(),
        created_at_ms: 1,
    };
    assert!(
        store
            .save_summary("conv-1", summary.clone(), HOUR)
            .await
            .expect("save")
    );
    let older = Summary {
        end_turn: 0,
        ..summary.clone()
    };
    assert!(
        !store
            .save_summary("conv-1", older, HOUR)
            .await
            .expect("save")
    );
    let loaded = store.load("conv-1").await.expect("load").expect("exists");
    assert_eq!(loaded.summary, Some(summary));
    assert!(store.load("missing").await.expect("load").is_none());
    assert_eq!(store.health().status, StoreStatus::Ok);
}

#[tokio::test]
async fn stale_version_conflicts_and_replay_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let store = RedisStore::open(settings(server.url()), store_settings()).expect("open");
    let first = append("one");
    store.append("c", first.clone()).await.expect("append");
    assert_eq!(
        store.append("c", first).await.expect("replay"),
        Appended::Duplicate { version: 1 }
    );
    let stale = Append {
        expected_version: Some(0),
        ..append("two")
    };
    let error = store.append("c", stale).await.expect_err("stale version");
    assert!(
        matches!(
            error,
            StoreError::Conflict {
                expected: 0,
                current: 1
            }
        ),
        "{error}"
    );
    let current = Append {
        expected_version: Some(1),
        ..append("two")
    };
    assert_eq!(
        store.append("c", current).await.expect("append"),
        Appended::Stored { version: 2 }
    );
}

#[tokio::test]
async fn concurrent_appenders_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    // Two stores play two sidecars appending to one conversation at once.
    let stores: Vec<Arc<RedisStore>> = (0..2)
        .map(|_| {
            Arc::new(RedisStore::open(settings(server.url()), store_settings()).expect("open"))
        })
        .collect();
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let outcome = store
                    .append("shared", append(&format!("{s}-{i}")))
                    .await
                    .expect("append");
                assert!(matches!(outcome, Appended::Stored { .. }), "{outcome:?}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender finished");
    }
    let loaded = stores[0]
        .load("shared")
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(loaded.version, 100);
    let labels = labels(&loaded.turns);
    let unique: HashSet<&String> = labels.iter().collect();
    assert_eq!(unique.len(), 100, "every turn once");
    for s in 0..2 {
        let own: Vec<&String> = labels
            .iter()
            .filter(|l| l.starts_with(&format!("{s}-")))
            .collect();
        let expected: Vec<String> = (0..50).map(|i| format!("{s}-{i}")).collect();
        assert_eq!(
            own.into_iter().cloned().collect::<Vec<_>>(),
            expected,
            "each appender's turns keep their order"
        );
    }
}

#[tokio::test]
async fn ttl_is_set_and_refreshed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let store = RedisStore::open(settings(server.url()), store_settings()).expect("open");
    let mut raw = raw_connection(&server.url()).await;

    let short = Append {
        ttl: Duration::from_secs(60),
        ..append("one")
    };
    store.append("ttl", short).await.expect("append");
    for key in ["agent-sidecar:{ttl}:meta", "agent-sidecar:{ttl}:turns"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .expect("PTTL");
        assert!((59_000..=60_000).contains(&ttl), "{key}: {ttl}");
    }

    let long = Append {
        ttl: Duration::from_secs(600),
        ..append("two")
    };
    store.append("ttl", long).await.expect("append");
    for key in ["agent-sidecar:{ttl}:meta", "agent-sidecar:{ttl}:turns"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .expect("PTTL");
        assert!(ttl > 590_000, "{key} refreshed on write: {ttl}");
    }
}

#[tokio::test]
async fn idle_timeout_does_not_fail_the_next_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &["--timeout", "1"]);
    let store = RedisStore::open(settings(server.url()), store_settings()).expect("open");
    store.append("idle", append("one")).await.expect("append");
    // Redis checks idle clients about once a second, so 2.5 s closes the connection.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        store.append("idle", append("two")).await.expect("append"),
        Appended::Stored { version: 2 },
        "the write after the idle close goes straight to Redis"
    );
    assert_eq!(store.health().buffered_turns, 0);
}

#[tokio::test]
async fn outage_turns_are_replayed_in_order_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = RedisServer::start(dir.path(), &[]);
    let store = RedisStore::open(settings(server.url()), store_settings()).expect("open");
    for label in ["before-1", "before-2"] {
        store.append("outage", append(label)).await.expect("append");
    }

    server.kill();
    let outage: Vec<String> = (1..=5).map(|i| format!("during-{i}")).collect();
    for label in &outage {
        let started = Instant::now();
        let outcome = store
            .append("outage", append(label))
            .await
            .expect("buffered");
        assert!(
            matches!(outcome, Appended::Buffered { .. }),
            "{label}: {outcome:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "append stays bounded"
        );
    }
    assert!(matches!(
        store.load("outage").await,
        Err(StoreError::Unavailable(_))
    ));
    let health = store.health();
    assert_eq!(health.status, StoreStatus::Degraded);
    assert_eq!(health.buffered_turns, 5);
    assert_eq!(
        store.admission(FailurePolicy::FailClosed),
        Admission::Accept
    );

    server.restart();
    let drained = eventually(Duration::from_secs(10), async || {
        store.health().status == StoreStatus::Ok
    })
    .await;
    assert!(drained, "store recovers: {:?}", store.health());
    store
        .append("outage", append("after"))
        .await
        .expect("append");

    // Kill again and restart, so what is checked is what the AOF made durable.
    server.restart();
    let loaded = eventually(Duration::from_secs(10), async || {
        store.load("outage").await.is_ok()
    })
    .await;
    assert!(loaded, "store reads again after the second restart");
    let conversation = store.load("outage").await.expect("load").expect("exists");
    let mut expected = vec!["before-1".to_owned(), "before-2".to_owned()];
    expected.extend(outage);
    expected.push("after".to_owned());
    assert_eq!(labels(&conversation.turns), expected);
    assert_eq!(conversation.version, 8);
}

#[tokio::test]
async fn stopped_server_fills_the_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path(), &[]);
    let small = StoreSettings {
        outage_buffer_turns: 3,
        ..store_settings()
    };
    let store = RedisStore::open(settings(server.url()), small).expect("open");
    store
        .append("paused", append("first"))
        .await
        .expect("append");

    // SIGSTOP freezes the server: connections stay open but no reply comes.
    server.signal("-STOP");
    for label in ["a", "b", "c"] {
        let outcome = store
            .append("paused", append(label))
            .await
            .expect("buffered");
        assert!(matches!(outcome, Appended::Buffered { .. }), "{outcome:?}");
    }
    let error = store
        .append("paused", append("d"))
        .await
        .expect_err("buffer full");
    assert!(matches!(
        error,
        StoreError::BufferFull { capacity_turns: 3 }
    ));
    assert_eq!(store.admission(FailurePolicy::FailOpen), Admission::Accept);
    assert!(matches!(
        store.admission(FailurePolicy::FailClosed),
        Admission::Reject { .. }
    ));
    let health = store.health();
    assert!(health.buffer_full);
    assert_eq!(health.dropped_turns, 1);

    server.signal("-CONT");
    let report = store.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.remaining, 0, "{report:?}");
    let conversation = store.load("paused").await.expect("load").expect("exists");
    assert_eq!(labels(&conversation.turns), ["first", "a", "b", "c"]);
    assert_eq!(
        store.admission(FailurePolicy::FailClosed),
        Admission::Accept
    );
}

#[tokio::test]
async fn cluster_of_three_masters_stores_conversations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path());
    let nodes: Vec<String> = cluster.servers[1..].iter().map(RedisServer::url).collect();
    let redis = RedisSettings {
        mode: RedisMode::Cluster { nodes },
        command_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..RedisSettings::standalone(cluster.servers[0].url())
    };
    let store = RedisStore::open(redis, store_settings()).expect("open");

    // Enough conversations that their hash tags land on every master.
    let ids: Vec<String> = (0..12).map(|i| format!("cluster-conv-{i}")).collect();
    for id in &ids {
        for label in ["one", "two"] {
            let outcome = store.append(id, append(label)).await.expect("append");
            assert!(
                matches!(outcome, Appended::Stored { .. }),
                "{id}: {outcome:?}"
            );
        }
        let summary = Summary {
            text: "s".to_owned(),
            first_turn: 0,
            end_turn: 1,
            covered_messages: 2,
            tokens: 1,
            model: "m".to_owned(),
            created_at_ms: 0,
        };
        assert!(store.save_summary(id, summary, HOUR).await.expect("save"));
    }
    for id in &ids {
        let conversation = store.load(id).await.expect("load").expect("exists");
        assert_eq!(labels(&conversation.turns), ["one", "two"], "{id}");
        assert_eq!(conversation.version, 2);
        assert!(conversation.summary.is_some());
    }
    let mut masters_with_keys = 0;
    for server in &cluster.servers {
        let mut raw = raw_connection(&server.url()).await;
        let keys: i64 = redis::cmd("DBSIZE")
            .query_async(&mut raw)
            .await
            .expect("DBSIZE");
        if keys > 0 {
            masters_with_keys += 1;
        }
    }
    assert_eq!(
        masters_with_keys, 3,
        "conversations spread over every master"
    );
}

#[tokio::test]
async fn sentinel_mode_finds_the_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master_dir = dir.path().join("master");
    let sentinel_dir = dir.path().join("sentinel");
    std::fs::create_dir_all(&master_dir).expect("master dir");
    std::fs::create_dir_all(&sentinel_dir).expect("sentinel dir");
    let master = RedisServer::start(&master_dir, &[]);
    let sentinel = RedisServer::sentinel(&sentinel_dir, master.port);
    let redis = RedisSettings {
        mode: RedisMode::Sentinel {
            master_name: "mymaster".to_owned(),
            nodes: Vec::new(),
        },
        command_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..RedisSettings::standalone(sentinel.url())
    };
    let store = RedisStore::open(redis, store_settings()).expect("open");
    store
        .append("via-sentinel", append("one"))
        .await
        .expect("append");
    let conversation = store
        .load("via-sentinel")
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(labels(&conversation.turns), ["one"]);

    let mut raw = raw_connection(&master.url()).await;
    let length: i64 = redis::cmd("LLEN")
        .arg("agent-sidecar:{via-sentinel}:turns")
        .query_async(&mut raw)
        .await
        .expect("LLEN");
    assert_eq!(length, 1, "the turn is on the master the sentinel named");
}

/// Writes a CA and a certificate it signs for `localhost` into `dir`; returns the CA PEM.
fn write_tls_files(dir: &std::path::Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server parameters");
    let certificate = params.signed_by(&key, &ca).expect("server certificate");
    std::fs::write(dir.join("server.crt"), certificate.pem()).expect("write certificate");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
    ca.pem()
}

#[tokio::test]
async fn tls_password_and_database_from_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_pem = write_tls_files(dir.path());
    let tls_port = support::free_port().to_string();
    let certificate = dir.path().join("server.crt").display().to_string();
    let key = dir.path().join("server.key").display().to_string();
    let server = RedisServer::start(
        dir.path(),
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &certificate,
            "--tls-key-file",
            &key,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret",
        ],
    );
    let redis = RedisSettings {
        ca_certificates_pem: Some(ca_pem.into_bytes()),
        ..settings(format!("rediss://:s3cret@localhost:{tls_port}/3"))
    };
    let store = RedisStore::open(redis, store_settings()).expect("open");
    store.append("tls", append("one")).await.expect("append");
    let conversation = store.load("tls").await.expect("load").expect("exists");
    assert_eq!(labels(&conversation.turns), ["one"]);

    for (database, expected) in [(3, 1), (0, 0)] {
        let url = format!("redis://:s3cret@127.0.0.1:{}/{database}", server.port);
        let mut raw = raw_connection(&url).await;
        let exists: i64 = redis::cmd("EXISTS")
            .arg("agent-sidecar:{tls}:meta")
            .query_async(&mut raw)
            .await
            .expect("EXISTS");
        assert_eq!(exists, expected, "database {database}");
    }
}
