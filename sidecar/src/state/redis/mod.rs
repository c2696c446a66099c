//! The Redis conversation store.
//!
//! Every operation is one Lua script call, so an append is atomic and takes one round
//! trip (see `scripts`). When Redis is unreachable, appends go to a bounded in-memory
//! outage buffer, and a background task replays them in order once Redis replies again.
//! Each turn carries a random id and the append script skips an id it already stored, so
//! a replay never duplicates a turn whose first attempt reached Redis. While the
//! buffer holds turns, new appends queue behind them to keep each conversation's order.
//!
//! The store reports itself degraded while Redis is unreachable or the buffer is not
//! empty. Nothing here is on the liveness path, and start-up never waits for Redis.

mod backend;
pub mod escalation_scripts;
mod escalations;
pub mod scripts;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use backend::RedisMode;
use backend::{Backend, Connection};
pub use escalations::RedisEscalations;
use scripts::{APPEND_CONFLICT, APPEND_DUPLICATE, APPEND_STORED, Keys, Scripts};

use super::memory::DEDUP_WINDOW_TURNS;
use super::record::{decode_summary, decode_turn, encode_summary, encode_turn};
use super::{
    Admission, Append, Appended, Conversation, ConversationStore, FailurePolicy, FlushReport,
    Metadata, SealedEntry, StoreError, StoreHealth, StoreSettings, StoreStatus, Summary, now_ms,
};

/// Key prefix, so the sidecar's keys are easy to find and cannot clash with an
/// application's keys in a shared Redis.
pub const DEFAULT_KEY_PREFIX: &str = "agent-sidecar";
/// Establishing a TCP (and TLS) connection to a healthy Redis in the same cluster takes
/// milliseconds; a second means it is unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A single script call on a healthy server takes well under a millisecond; 500 ms
/// bounds how long a request waits before its turn is buffered instead.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the replay task checks whether Redis is back while degraded.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Maximum wait between replay attempts while Redis stays down.
const MAX_REPLAY_BACKOFF: Duration = Duration::from_secs(2);
/// Pause between flush attempts during shutdown.
const SHUTDOWN_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Connection settings. `Debug` does not show the URL, which may contain a password.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS) URL with optional `user:password@` and `/db`.
    pub url: String,
    pub mode: RedisMode,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    /// Maximum time for one command, connecting included.
    pub command_timeout: Duration,
    /// PEM certificates trusted for `rediss://` instead of the system's roots, for a
    /// Redis whose certificate a private CA signed. Standalone and cluster modes only.
    pub ca_certificates_pem: Option<Vec<u8>>,
}

impl RedisSettings {
    /// Settings for a standalone server at `url` with the default prefix and timeouts.
    pub fn standalone(url: impl Into<String>) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            mode: RedisMode::Standalone,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            ca_certificates_pem: None,
        }
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("mode", &self.mode)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("ca_certificates", &self.ca_certificates_pem.is_some())
            .finish()
    }
}

/// A turn waiting in the outage buffer.
#[derive(Clone)]
struct Pending {
    conversation_id: String,
    append: Append,
    encoded: Vec<u8>,
}

impl Pending {
    /// Bytes this turn counts against the outage buffer's byte limit.
    fn size(&self) -> usize {
        self.encoded.len()
            + self
                .append
                .vault
                .iter()
                .map(|e| e.sealed.len())
                .sum::<usize>()
    }
}

#[derive(Default)]
struct Buffer {
    queue: VecDeque<Pending>,
    bytes: usize,
}

struct Shared {
    backend: Backend,
    scripts: Scripts,
    key_prefix: String,
    /// Bound for one script call, connecting included.
    operation_timeout: Duration,
    settings: StoreSettings,
    buffer: Mutex<Buffer>,
    /// Held while replaying, so the replay task and a shutdown flush never send the same
    /// buffered turn at once.
    replay: tokio::sync::Mutex<()>,
    wake: Notify,
    degraded: AtomicBool,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The Redis store. Cloning is not needed: share it in an `Arc`.
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("mode", &self.shared.backend.mode_name())
            .field("key_prefix", &self.shared.key_prefix)
            .finish()
    }
}

/// Failure of one script call.
enum CallError {
    Redis(RedisError),
    TimedOut,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Redis(e) => write!(f, "{e}"),
            CallError::TimedOut => f.write_str("command timed out"),
        }
    }
}

impl CallError {
    /// Returns whether the failure means Redis is unreachable or busy, as opposed to
    /// Redis rejecting this particular command.
    fn is_outage(&self) -> bool {
        match self {
            CallError::TimedOut => true,
            CallError::Redis(e) => {
                matches!(
                    e.kind(),
                    ErrorKind::Io
                        | ErrorKind::ClusterConnectionNotFound
                        | ErrorKind::MasterNameNotFoundBySentinel
                        | ErrorKind::EmptySentinelList
                        | ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ReadOnly
                        )
                ) || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
            }
        }
    }
}

impl RedisStore {
    /// Prepares the store and starts its replay task without connecting, so Redis being
    /// down delays nothing. Must be called inside a Tokio runtime.
    pub fn open(redis: RedisSettings, settings: StoreSettings) -> Result<RedisStore, StoreError> {
        let backend = Backend::new(&redis)
            .map_err(|e| StoreError::Unavailable(format!("invalid Redis settings: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Unavailable("the Redis store needs a Tokio runtime".to_owned())
        })?;
        let shared = Arc::new(Shared {
            backend,
            scripts: Scripts::new(),
            key_prefix: redis.key_prefix,
            operation_timeout: redis.connect_timeout + redis.command_timeout,
            settings,
            buffer: Mutex::new(Buffer::default()),
            replay: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            degraded: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        runtime.spawn(replay_loop(Arc::downgrade(&shared)));
        tracing::info!(
            redis.mode = shared.backend.mode_name(),
            "conversation store: redis"
        );
        Ok(RedisStore { shared })
    }

    /// Turns waiting in the outage buffer.
    pub fn buffered_turns(&self) -> usize {
        lock(&self.shared.buffer).queue.len()
    }
}

impl Shared {
    fn keys(&self, conversation_id: &str) -> Keys {
        Keys::new(&self.key_prefix, conversation_id)
    }

    async fn connection(&self) -> Result<Connection, CallError> {
        self.backend.connection().await.map_err(CallError::Redis)
    }

    /// Runs one append script call, bounded by the operation timeout.
    async fn call_append(
        &self,
        conversation_id: &str,
        append: &Append,
        encoded: &[u8],
    ) -> Result<(i64, u64), CallError> {
        let keys = self.keys(conversation_id);
        let mut invocation = self.scripts.append.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.turns)
            .key(&keys.vault)
            .arg(
                append
                    .expected_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .arg(duration_ms(append.ttl))
            .arg(self.settings.max_turns_per_conversation.max(1))
            .arg(now_ms())
            .arg(&append.turn.model)
            .arg(&append.turn.policy)
            .arg(&append.turn.id)
            .arg(encoded)
            .arg(DEDUP_WINDOW_TURNS);
        for entry in &append.vault {
            invocation.arg(&entry.placeholder).arg(&entry.sealed);
        }
        let call = async {
            let mut connection = self.connection().await?;
            invocation
                .invoke_async::<(i64, u64)>(&mut connection)
                .await
                .map_err(CallError::Redis)
        };
        self.bounded(call).await
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        let result = match tokio::time::timeout(self.operation_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::TimedOut),
        };
        if let Err(CallError::Redis(e)) = &result {
            self.backend.on_error(e);
        }
        result
    }

    /// Appends directly to Redis, retrying once after an outage-type failure because the
    /// connection manager reconnects after the first failure (for example when the
    /// server closed an idle connection). The retry is safe: a turn id is stored once.
    async fn append_direct(
        &self,
        conversation_id: &str,
        append: &Append,
        encoded: &[u8],
    ) -> Result<(i64, u64), CallError> {
        match self.call_append(conversation_id, append, encoded).await {
            Err(error) if error.is_outage() => {
                tracing::debug!(error = %error, "redis append failed; retrying once");
                self.call_append(conversation_id, append, encoded).await
            }
            other => other,
        }
    }

    fn mark_degraded(&self, error: &CallError) {
        *lock(&self.last_error) = Some(error.to_string());
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %error, "redis unreachable; conversation store degraded, buffering turns");
        }
    }

    fn mark_healthy(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            *lock(&self.last_error) = None;
            tracing::info!("redis reachable again; conversation store recovered");
        }
    }

    fn buffer_full(&self, buffer: &Buffer) -> bool {
        buffer.queue.len() >= self.settings.outage_buffer_turns
            || buffer.bytes >= self.settings.outage_buffer_bytes
    }

    /// Queues a turn for replay, or drops and counts it when the buffer is full.
    fn enqueue(
        &self,
        conversation_id: &str,
        mut append: Append,
        encoded: Vec<u8>,
    ) -> Result<Appended, StoreError> {
        // A buffered turn is replayed unconditionally because the client already has its
        // response, so rejecting it later would only lose it.
        append.expected_version = None;
        let size = encoded.len() + append.vault.iter().map(|e| e.sealed.len()).sum::<usize>();
        let mut buffer = lock(&self.buffer);
        let no_room = buffer.queue.len() >= self.settings.outage_buffer_turns
            || buffer.bytes + size > self.settings.outage_buffer_bytes;
        if no_room {
            drop(buffer);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(
                    dropped_turns = dropped,
                    "redis outage buffer full; conversation turns are being dropped"
                );
            }
            return Err(StoreError::BufferFull {
                capacity_turns: self.settings.outage_buffer_turns,
            });
        }
        buffer.bytes += size;
        buffer.queue.push_back(Pending {
            conversation_id: conversation_id.to_owned(),
            append,
            encoded,
        });
        let queued = buffer.queue.len();
        drop(buffer);
        self.wake.notify_one();
        Ok(Appended::Buffered { queued })
    }

    /// Replays buffered turns in order until the buffer is empty, Redis fails, or
    /// `deadline` passes. Returns how many were written.
    async fn drain(&self, deadline: Option<Instant>) -> Result<usize, CallError> {
        let _replaying = self.replay.lock().await;
        let mut written = 0;
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(written);
            }
            let Some(next) = lock(&self.buffer).queue.front().cloned() else {
                if written > 0 {
                    // Writes just succeeded, so Redis is reachable again.
                    self.mark_healthy();
                }
                return Ok(written);
            };
            match self
                .call_append(&next.conversation_id, &next.append, &next.encoded)
                .await
            {
                Ok(_) => written += 1,
                Err(error) if error.is_outage() => return Err(error),
                Err(error) => {
                    // Redis rejected this turn itself (not an outage); retrying cannot
                    // succeed, so it is dropped rather than blocking every later turn.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        conversation.id = %next.conversation_id,
                        error = %error,
                        "redis rejected a buffered turn; dropping it"
                    );
                }
            }
            let mut buffer = lock(&self.buffer);
            if buffer
                .queue
                .front()
                .is_some_and(|front| front.append.turn.id == next.append.turn.id)
            {
                let size = next.encoded.len()
                    + next
                        .append
                        .vault
                        .iter()
                        .map(|e| e.sealed.len())
                        .sum::<usize>();
                buffer.bytes = buffer.bytes.saturating_sub(size);
                buffer.queue.pop_front();
            }
        }
    }

    async fn ping(&self) -> Result<(), CallError> {
        let call = async {
            let mut connection = self.connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
                .map_err(CallError::Redis)
        };
        self.bounded(call).await
    }

    fn decode(
        &self,
        conversation_id: &str,
        meta: Vec<Vec<u8>>,
        turns: Vec<Vec<u8>>,
        vault: Vec<Vec<u8>>,
    ) -> Result<Option<Conversation>, StoreError> {
        if meta.is_empty() {
            return Ok(None);
        }
        let fields: HashMap<String, Vec<u8>> = pairs(meta)
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect();
        let text = |name: &str| {
            fields
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let number = |name: &str| text(name).parse::<u64>().unwrap_or(0);
        let summary = match fields.get("summary") {
            Some(bytes) => Some(decode_summary(bytes)?),
            None => None,
        };
        let turns = turns
            .into_iter()
            .map(|item| {
                let split = item.iter().position(|&b| b == b'\n').ok_or_else(|| {
                    StoreError::Corrupt("turn record without an id line".to_owned())
                })?;
                let id = String::from_utf8_lossy(&item[..split]).into_owned();
                decode_turn(id, &item[split + 1..])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vault = pairs(vault)
            .map(|(placeholder, sealed)| SealedEntry {
                placeholder: String::from_utf8_lossy(&placeholder).into_owned(),
                sealed,
            })
            .collect();
        Ok(Some(Conversation {
            id: conversation_id.to_owned(),
            version: number("version"),
            metadata: Metadata {
                model: text("model"),
                policy: text("policy"),
                created_at_ms: number("created_ms"),
                updated_at_ms: number("updated_ms"),
            },
            first_seq: number("first_seq"),
            turns,
            summary,
            vault,
        }))
    }

    /// Adds the buffered turns of `conversation` that Redis does not have yet, so a load
    /// during replay shows every turn this sidecar accepted.
    fn overlay_buffered(&self, conversation_id: &str, conversation: &mut Option<Conversation>) {
        let buffer = lock(&self.buffer);
        for pending in buffer
            .queue
            .iter()
            .filter(|p| p.conversation_id == conversation_id)
        {
            let target = conversation.get_or_insert_with(|| Conversation {
                id: conversation_id.to_owned(),
                ..Conversation::default()
            });
            if target.turns.iter().any(|t| t.id == pending.append.turn.id) {
                continue;
            }
            target.version += 1;
            target.turns.push(pending.append.turn.clone());
            for entry in &pending.append.vault {
                if !target
                    .vault
                    .iter()
                    .any(|e| e.placeholder == entry.placeholder)
                {
                    target.vault.push(entry.clone());
                }
            }
        }
    }
}

/// Replays buffered turns and probes Redis while degraded. Exits when the store is
/// dropped.
async fn replay_loop(shared: Weak<Shared>) {
    let mut backoff = PROBE_INTERVAL;
    loop {
        let wake = match shared.upgrade() {
            Some(shared) => {
                let idle = !shared.degraded.load(Ordering::Acquire)
                    && lock(&shared.buffer).queue.is_empty();
                let waiting = async move {
                    if idle {
                        shared.wake.notified().await;
                    } else {
                        tokio::time::sleep(backoff).await;
                    }
                };
                tokio::time::timeout(PROBE_INTERVAL.max(backoff), waiting)
            }
            None => return,
        };
        let _ = wake.await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let result = match shared.drain(None).await {
            Ok(_) if shared.degraded.load(Ordering::Acquire) => shared.ping().await,
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => {
                if lock(&shared.buffer).queue.is_empty() {
                    shared.mark_healthy();
                }
                backoff = PROBE_INTERVAL;
            }
            Err(error) => {
                shared.mark_degraded(&error);
                backoff = (backoff * 2).min(MAX_REPLAY_BACKOFF);
            }
        }
    }
}

#[async_trait]
impl ConversationStore for RedisStore {
    async fn load(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError> {
        let shared = &self.shared;
        if shared.degraded.load(Ordering::Acquire) {
            // Fail fast: the replay task probes Redis and clears the flag once Redis replies.
            return Err(StoreError::Unavailable(
                "redis is unreachable; the store is degraded".to_owned(),
            ));
        }
        let keys = shared.keys(conversation_id);
        let call = async {
            let mut connection = shared.connection().await?;
            shared
                .scripts
                .load
                .key(&keys.meta)
                .key(&keys.turns)
                .key(&keys.vault)
                .invoke_async::<(Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>)>(&mut connection)
                .await
                .map_err(CallError::Redis)
        };
        let (meta, turns, vault) = match shared.bounded(call).await {
            Ok(parts) => parts,
            Err(error) => {
                if error.is_outage() {
                    shared.mark_degraded(&error);
                    shared.wake.notify_one();
                }
                return Err(StoreError::Unavailable(error.to_string()));
            }
        };
        let mut conversation = shared.decode(conversation_id, meta, turns, vault)?;
        shared.overlay_buffered(conversation_id, &mut conversation);
        Ok(conversation)
    }

    async fn append(&self, conversation_id: &str, append: Append) -> Result<Appended, StoreError> {
        let shared = &self.shared;
        let encoded = encode_turn(&append.turn);
        let queue_behind =
            shared.degraded.load(Ordering::Acquire) || !lock(&shared.buffer).queue.is_empty();
        if queue_behind {
            return shared.enqueue(conversation_id, append, encoded);
        }
        match shared
            .append_direct(conversation_id, &append, &encoded)
            .await
        {
            Ok((APPEND_STORED, version)) => Ok(Appended::Stored { version }),
            Ok((APPEND_DUPLICATE, version)) => Ok(Appended::Duplicate { version }),
            Ok((APPEND_CONFLICT, current)) => Err(StoreError::Conflict {
                expected: append.expected_version.unwrap_or_default(),
                current,
            }),
            Ok((code, _)) => Err(StoreError::Corrupt(format!(
                "append script returned unknown code {code}"
            ))),
            Err(error) if error.is_outage() => {
                shared.mark_degraded(&error);
                shared.enqueue(conversation_id, append, encoded)
            }
            Err(error) => Err(StoreError::Unavailable(error.to_string())),
        }
    }

    async fn save_summary(
        &self,
        conversation_id: &str,
        summary: Summary,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let shared = &self.shared;
        if shared.degraded.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "redis is unreachable; the store is degraded".to_owned(),
            ));
        }
        let keys = shared.keys(conversation_id);
        let encoded = encode_summary(&summary);
        let call = async {
            let mut connection = shared.connection().await?;
            shared
                .scripts
                .save_summary
                .key(&keys.meta)
                .key(&keys.turns)
                .key(&keys.vault)
                .arg(summary.end_turn)
                .arg(&encoded)
                .arg(duration_ms(ttl))
                .invoke_async::<i64>(&mut connection)
                .await
                .map_err(CallError::Redis)
        };
        match shared.bounded(call).await {
            Ok(stored) => Ok(stored == 1),
            Err(error) => {
                if error.is_outage() {
                    shared.mark_degraded(&error);
                    shared.wake.notify_one();
                }
                Err(StoreError::Unavailable(error.to_string()))
            }
        }
    }

    async fn delete(&self, conversation_id: &str) -> Result<bool, StoreError> {
        let shared = &self.shared;
        {
            let mut buffer = lock(&shared.buffer);
            let mut removed_bytes = 0;
            buffer.queue.retain(|pending| {
                let keep = pending.conversation_id != conversation_id;
                if !keep {
                    removed_bytes += pending.size();
                }
                keep
            });
            buffer.bytes = buffer.bytes.saturating_sub(removed_bytes);
        }
        let keys = shared.keys(conversation_id);
        // The three keys share one hash tag, so one DEL works on Redis Cluster too.
        let call = async {
            let mut connection = shared.connection().await?;
            redis::cmd("DEL")
                .arg(&keys.meta)
                .arg(&keys.turns)
                .arg(&keys.vault)
                .query_async::<u64>(&mut connection)
                .await
                .map_err(CallError::Redis)
        };
        match shared.bounded(call).await {
            Ok(deleted) => Ok(deleted > 0),
            Err(error) => {
                if error.is_outage() {
                    shared.mark_degraded(&error);
                    shared.wake.notify_one();
                }
                Err(StoreError::Unavailable(error.to_string()))
            }
        }
    }

    fn admission(&self, policy: FailurePolicy) -> Admission {
        let full = self.shared.buffer_full(&lock(&self.shared.buffer));
        if full && policy == FailurePolicy::FailClosed {
            Admission::Reject {
                reason: "conversation store unavailable and its outage buffer is full; retry later"
                    .to_owned(),
            }
        } else {
            Admission::Accept
        }
    }

    fn health(&self) -> StoreHealth {
        let shared = &self.shared;
        let buffer = lock(&shared.buffer);
        let degraded = shared.degraded.load(Ordering::Acquire) || !buffer.queue.is_empty();
        StoreHealth {
            kind: self.kind(),
            status: if degraded {
                StoreStatus::Degraded
            } else {
                StoreStatus::Ok
            },
            buffered_turns: buffer.queue.len(),
            buffer_full: shared.buffer_full(&buffer),
            dropped_turns: shared.dropped.load(Ordering::Relaxed),
            last_error: lock(&shared.last_error).clone(),
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn shutdown(&self, grace: Duration) -> FlushReport {
        let shared = &self.shared;
        let deadline = Instant::now() + grace;
        let mut flushed = 0;
        while !lock(&shared.buffer).queue.is_empty() && Instant::now() < deadline {
            match shared.drain(Some(deadline)).await {
                Ok(written) => flushed += written,
                Err(error) => {
                    tracing::debug!(error = %error, "flush attempt failed; retrying");
                    tokio::time::sleep(SHUTDOWN_RETRY_INTERVAL).await;
                }
            }
        }
        let remaining = lock(&shared.buffer).queue.len();
        if remaining > 0 {
            tracing::error!(
                flushed,
                remaining,
                "shutdown grace period ended before every buffered turn reached redis; \
                 the remaining turns are lost"
            );
        } else if flushed > 0 {
            tracing::info!(flushed, "buffered turns written to redis before shutdown");
        }
        FlushReport { flushed, remaining }
    }
}

fn pairs(flat: Vec<Vec<u8>>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    let mut items = flat.into_iter();
    std::iter::from_fn(move || Some((items.next()?, items.next()?)))
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section leaves the guarded value consistent before it can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
