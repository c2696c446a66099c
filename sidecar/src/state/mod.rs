//! Conversation state: the `ConversationStore` trait, the in-memory store (the embedded
//! default), the Redis store and the pseudonym vault.
//!
//! A conversation is an append-only list of turns plus a running summary, a version and
//! the sealed entries of its pseudonym vault. Each append is atomic and increments the
//! version by one. A caller that read version `v` can make its append conditional on the
//! conversation still being at `v`, so two sidecars appending to one conversation cannot
//! silently interleave.

pub mod escalation;
pub mod id;
pub mod memory;
pub mod metered;
pub mod record;
pub mod redis;
pub mod vault;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::dialect::Message;
pub use vault::SealedEntry;

/// Store behaviour when its outage buffer is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Keep serving requests and drop the turns that do not fit, counting them.
    #[default]
    FailOpen,
    /// Reject new requests (the proxy responds with 503) until the buffer has room again.
    FailClosed,
}

/// One exchange with the model, as recorded in the conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    /// Random id that makes a replayed append idempotent: the store ignores an append
    /// whose turn id is already among the conversation's most recent turns.
    pub id: String,
    /// The messages this turn adds, in order: the request messages the conversation did
    /// not yet contain, then the reply. They are stored as sent upstream (after input
    /// guardrails, so pseudonymized values stay as placeholders).
    pub messages: Vec<Message>,
    /// Token count of `messages` for `model`, from `context::TokenCounter`.
    pub tokens: u32,
    pub model: String,
    /// Identity of the policy that guarded the turn, as `name@hash`.
    pub policy: String,
    /// Milliseconds since the Unix epoch when the turn was recorded.
    pub recorded_at_ms: u64,
}

impl Turn {
    /// Creates a turn with a fresh random id, recorded now.
    pub fn new(
        model: impl Into<String>,
        policy: impl Into<String>,
        messages: Vec<Message>,
    ) -> Turn {
        Turn {
            id: random_id(),
            messages,
            tokens: 0,
            model: model.into(),
            policy: policy.into(),
            recorded_at_ms: now_ms(),
        }
    }

    /// Sets the token count.
    pub fn with_tokens(mut self, tokens: u32) -> Turn {
        self.tokens = tokens;
        self
    }
}

/// A stored summary of the oldest part of a conversation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub text: String,
    /// Sequence number of the first turn the summary covers (0 for the first turn).
    pub first_turn: u64,
    /// Sequence number one past the last turn the summary covers.
    pub end_turn: u64,
    /// Number of non-system messages, counted from the start of the conversation, that
    /// the summary replaces. `context::window` keeps only messages after these.
    pub covered_messages: u64,
    /// Token count of `text` for the model that will read it.
    pub tokens: u32,
    /// Model that wrote the summary.
    pub model: String,
    pub created_at_ms: u64,
}

/// Per-conversation metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// Model of the most recent turn.
    pub model: String,
    /// Policy identity (`name@hash`) of the most recent turn.
    pub policy: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// A conversation as loaded from a store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversation {
    pub id: String,
    /// Number of turns ever appended; the value an append's `expected_version` compares to.
    pub version: u64,
    pub metadata: Metadata,
    /// Sequence number of `turns[0]`; larger than 0 once old turns were trimmed.
    pub first_seq: u64,
    /// The stored turns, oldest first.
    pub turns: Vec<Turn>,
    pub summary: Option<Summary>,
    /// Sealed pseudonym mappings; `vault::PseudonymVault::open` decrypts them.
    pub vault: Vec<SealedEntry>,
}

impl Conversation {
    /// Returns every stored message, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        self.turns
            .iter()
            .flat_map(|turn| turn.messages.iter().cloned())
            .collect()
    }

    /// Returns the sum of the stored turns' token counts.
    pub fn tokens(&self) -> u64 {
        self.turns.iter().map(|turn| u64::from(turn.tokens)).sum()
    }

    /// Returns the suffix of `request` that the conversation does not contain yet.
    ///
    /// Chat Completions clients resend the whole history, so the stored messages are
    /// usually a prefix of the request's. When they are, the rest is new. When they are
    /// not (the client edited or trimmed its history), the whole request is new, except
    /// that a stored tail matching the request's start is not repeated.
    pub fn new_messages<'a>(&self, request: &'a [Message]) -> &'a [Message] {
        let stored = self.messages();
        if stored.len() <= request.len() && request[..stored.len()] == stored[..] {
            return &request[stored.len()..];
        }
        request
    }
}

/// An append request.
#[derive(Clone, Debug)]
pub struct Append {
    pub turn: Turn,
    /// Pseudonym mappings first created during this turn.
    pub vault: Vec<SealedEntry>,
    /// When set, the append applies only while the conversation's version equals it.
    pub expected_version: Option<u64>,
    /// Time to live of the whole conversation, refreshed by this write.
    pub ttl: Duration,
}

/// Outcome of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The turn is stored; `version` is the conversation's new version.
    Stored { version: u64 },
    /// A turn with the same id was already stored, so nothing changed.
    Duplicate { version: u64 },
    /// The store is unreachable; the turn waits in the outage buffer and will be written
    /// in order when the store returns.
    Buffered { queued: usize },
}

/// Failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conversation is at version {current}, not the expected {expected}")]
    Conflict { expected: u64, current: u64 },
    #[error("conversation store unavailable: {0}")]
    Unavailable(String),
    #[error("outage buffer is full ({capacity_turns} turns); the turn was dropped")]
    BufferFull { capacity_turns: usize },
    #[error("stored conversation data is invalid: {0}")]
    Corrupt(String),
}

/// Whether the proxy may accept a new request, given the store's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Respond with 503. `reason` is safe to show to the client.
    Reject {
        reason: String,
    },
}

/// Store status for readiness detail and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreStatus {
    Ok,
    /// The backend is unreachable or still replaying buffered turns.
    Degraded,
}

/// A point-in-time view of a store's health.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    pub kind: &'static str,
    pub status: StoreStatus,
    /// Turns waiting in the outage buffer.
    pub buffered_turns: usize,
    /// Whether the outage buffer has no room for another turn.
    pub buffer_full: bool,
    /// Turns dropped because the outage buffer was full, since the process started.
    pub dropped_turns: u64,
    /// Short description of the last backend error while degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Result of a shutdown flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Buffered turns written during the flush.
    pub flushed: usize,
    /// Buffered turns still unwritten when the grace period ended; they are lost.
    pub remaining: usize,
}

/// A store of conversations keyed by conversation id.
#[async_trait]
pub trait ConversationStore: Send + Sync + fmt::Debug {
    /// Loads a conversation; `Ok(None)` when it does not exist or has expired.
    async fn load(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError>;

    /// Appends a turn atomically, creating the conversation when new, and refreshes the
    /// conversation's time to live.
    ///
    /// Errors: `Conflict` when `expected_version` is set and differs. `BufferFull` when
    /// the backend is unreachable and the outage buffer has no room, in which case the
    /// turn is dropped and counted.
    async fn append(&self, conversation_id: &str, append: Append) -> Result<Appended, StoreError>;

    /// Stores `summary` unless the conversation already has one that covers as many
    /// turns or more. Returns whether it was stored. A missing conversation stores
    /// nothing.
    async fn save_summary(
        &self,
        conversation_id: &str,
        summary: Summary,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Deletes a conversation: its turns, summary and pseudonym vault. Returns whether it
    /// existed. Turns of it still waiting in an outage buffer are dropped too.
    async fn delete(&self, conversation_id: &str) -> Result<bool, StoreError>;

    /// Returns whether a new request may be accepted. Only a store whose outage buffer is
    /// full under `FailurePolicy::FailClosed` rejects.
    fn admission(&self, policy: FailurePolicy) -> Admission;

    /// Returns the store's current health.
    fn health(&self) -> StoreHealth;

    /// Name shown in readiness detail.
    fn kind(&self) -> &'static str;

    /// Writes buffered turns until the buffer is empty or `grace` has passed.
    async fn shutdown(&self, grace: Duration) -> FlushReport;
}

/// The compiled `spec.conversation` section of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationPolicy {
    /// Time to live of a conversation after its last write.
    pub ttl: Duration,
    /// Handling of new requests when the store's outage buffer is full.
    pub on_store_full: FailurePolicy,
    /// Request field that carries the conversation id when the header is absent.
    pub id_source: id::IdSource,
}

impl Default for ConversationPolicy {
    fn default() -> Self {
        ConversationPolicy {
            ttl: DEFAULT_CONVERSATION_TTL,
            on_store_full: FailurePolicy::default(),
            id_source: id::IdSource::default(),
        }
    }
}

/// Settings shared by every store implementation.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// Turns kept per conversation; older ones are trimmed on append.
    pub max_turns_per_conversation: usize,
    /// Conversations kept by the in-memory store; the least recently updated one is
    /// evicted first.
    pub max_conversations: usize,
    /// Turns the Redis store buffers while Redis is unreachable.
    pub outage_buffer_turns: usize,
    /// Encoded bytes the Redis store buffers while Redis is unreachable.
    pub outage_buffer_bytes: usize,
}

/// Conversation time to live when the policy sets none: a working day, so an agent
/// resuming the next morning starts fresh while a paused conversation survives lunch.
pub const DEFAULT_CONVERSATION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Sized well above the few hundred live conversations a single agent pod typically has.
pub const DEFAULT_MAX_CONVERSATIONS: usize = 10_000;
/// Enough for long agent loops; older turns matter only through summaries.
pub const DEFAULT_MAX_TURNS_PER_CONVERSATION: usize = 1_000;
/// About a minute of a busy pod's turns; each buffered turn also counts against
/// `DEFAULT_OUTAGE_BUFFER_BYTES`.
pub const DEFAULT_OUTAGE_BUFFER_TURNS: usize = 10_000;
/// Caps the memory an outage can pin: 64 MiB.
pub const DEFAULT_OUTAGE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_turns_per_conversation: DEFAULT_MAX_TURNS_PER_CONVERSATION,
            max_conversations: DEFAULT_MAX_CONVERSATIONS,
            outage_buffer_turns: DEFAULT_OUTAGE_BUFFER_TURNS,
            outage_buffer_bytes: DEFAULT_OUTAGE_BUFFER_BYTES,
        }
    }
}

/// Opens the configured store: Redis when `redis` is set, else the in-memory store.
///
/// Never waits for Redis: the Redis store connects on its first command, so a Redis
/// outage cannot delay or fail start-up. It reports itself degraded once a command fails.
pub fn open(
    settings: StoreSettings,
    redis: Option<redis::RedisSettings>,
) -> Result<Arc<dyn ConversationStore>, StoreError> {
    match redis {
        Some(redis) => Ok(Arc::new(redis::RedisStore::open(redis, settings)?)),
        None => Ok(Arc::new(memory::MemoryStore::new(
            settings.max_conversations,
            settings.max_turns_per_conversation,
        ))),
    }
}

/// Returns the current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Returns 128 random bits as 32 hex digits.
pub(crate) fn random_id() -> String {
    use chacha20poly1305::aead::OsRng;
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::{Part, Role};

    fn user(text: &str) -> Message {
        Message {
            role: Role::User,
            parts: vec![Part::Text {
                text: text.to_owned(),
            }],
        }
    }

    fn stored(messages: Vec<Message>) -> Conversation {
        Conversation {
            turns: vec![Turn::new("m", "p", messages)],
            ..Conversation::default()
        }
    }

    #[test]
    fn new_messages_follow_the_stored_prefix() {
        let conversation = stored(vec![user("a"), user("b")]);
        let request = [user("a"), user("b"), user("c")];
        assert_eq!(conversation.new_messages(&request), &request[2..]);
        assert!(conversation.new_messages(&request[..2]).is_empty());
    }

    #[test]
    fn edited_history_is_all_new() {
        let conversation = stored(vec![user("a"), user("b")]);
        let request = [user("a"), user("edited"), user("c")];
        assert_eq!(conversation.new_messages(&request), &request[..]);
        let shorter = [user("a")];
        assert_eq!(conversation.new_messages(&shorter), &shorter[..]);
    }
}
