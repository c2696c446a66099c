//! The in-memory conversation store, the embedded default.
//!
//! The store is bounded so that a long-running sidecar cannot grow without limit:
//! - at most `max_conversations` conversations. When a new conversation would exceed
//!   that, an expired conversation is evicted if there is one, else the least recently
//!   updated one;
//! - at most `max_turns_per_conversation` turns per conversation, dropping the oldest;
//! - each conversation expires `ttl` after its last append (the `ttl` of that append).
//!
//! State lives only as long as the process, so it has no outage and never buffers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Admission, Append, Appended, Conversation, ConversationStore, FailurePolicy, FlushReport,
    Metadata, SealedEntry, StoreError, StoreHealth, StoreStatus, Summary, Turn, now_ms,
};

/// Number of most recent turns searched for a duplicate turn id. A replayed append
/// arrives soon after its first attempt, so it is among the last few. The Redis store
/// uses the same window.
pub const DEDUP_WINDOW_TURNS: usize = 64;

#[derive(Debug)]
struct Entry {
    conversation: Conversation,
    /// Value of the store's clock at the last append; the smallest is evicted first.
    updated_tick: u64,
    expires_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    conversations: HashMap<String, Entry>,
    clock: u64,
}

#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_conversations: usize,
    max_turns_per_conversation: usize,
}

impl MemoryStore {
    pub fn new(max_conversations: usize, max_turns_per_conversation: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            max_conversations: max_conversations.max(1),
            max_turns_per_conversation: max_turns_per_conversation.max(1),
        }
    }

    pub fn with_defaults() -> MemoryStore {
        MemoryStore::new(
            super::DEFAULT_MAX_CONVERSATIONS,
            super::DEFAULT_MAX_TURNS_PER_CONVERSATION,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation below completes before the lock is released and none can panic
        // halfway, so a poisoned lock still guards consistent data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append_now(
        &self,
        conversation_id: &str,
        append: Append,
        now: Instant,
    ) -> Result<Appended, StoreError> {
        let mut inner = self.lock();
        inner.clock += 1;
        let tick = inner.clock;
        if inner
            .conversations
            .get(conversation_id)
            .is_some_and(|entry| entry.expires_at <= now)
        {
            inner.conversations.remove(conversation_id);
        }
        if !inner.conversations.contains_key(conversation_id)
            && inner.conversations.len() >= self.max_conversations
        {
            evict_one(&mut inner.conversations, now);
        }

        let wall_ms = now_ms();
        let entry = inner
            .conversations
            .entry(conversation_id.to_owned())
            .or_insert_with(|| Entry {
                conversation: Conversation {
                    id: conversation_id.to_owned(),
                    metadata: Metadata {
                        created_at_ms: wall_ms,
                        ..Metadata::default()
                    },
                    ..Conversation::default()
                },
                updated_tick: tick,
                expires_at: now,
            });
        let conversation = &mut entry.conversation;
        let recent_start = conversation.turns.len().saturating_sub(DEDUP_WINDOW_TURNS);
        if conversation.turns[recent_start..]
            .iter()
            .any(|turn| turn.id == append.turn.id)
        {
            return Ok(Appended::Duplicate {
                version: conversation.version,
            });
        }
        if let Some(expected) = append.expected_version
            && expected != conversation.version
        {
            return Err(StoreError::Conflict {
                expected,
                current: conversation.version,
            });
        }

        let Turn { model, policy, .. } = &append.turn;
        conversation.metadata.model = model.clone();
        conversation.metadata.policy = policy.clone();
        conversation.metadata.updated_at_ms = wall_ms;
        conversation.version += 1;
        conversation.turns.push(append.turn);
        let excess = conversation
            .turns
            .len()
            .saturating_sub(self.max_turns_per_conversation);
        if excess > 0 {
            conversation.turns.drain(..excess);
            conversation.first_seq += excess as u64;
        }
        for sealed in append.vault {
            insert_vault_entry(&mut conversation.vault, sealed);
        }
        let version = conversation.version;
        entry.updated_tick = tick;
        entry.expires_at = now + append.ttl;
        Ok(Appended::Stored { version })
    }
}

/// Adds `sealed` unless its placeholder is already mapped; the first mapping wins, as in
/// the Redis store.
fn insert_vault_entry(vault: &mut Vec<SealedEntry>, sealed: SealedEntry) {
    if !vault
        .iter()
        .any(|existing| existing.placeholder == sealed.placeholder)
    {
        vault.push(sealed);
    }
}

/// Evicts an expired conversation if there is one, else the least recently updated.
/// Linear in the number of conversations, and only runs when the store is full.
fn evict_one(conversations: &mut HashMap<String, Entry>, now: Instant) {
    let victim = conversations
        .iter()
        .min_by_key(|(_, entry)| (entry.expires_at > now, entry.updated_tick))
        .map(|(id, _)| id.clone());
    if let Some(id) = victim {
        conversations.remove(&id);
    }
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn load(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .conversations
            .get(conversation_id)
            .filter(|entry| entry.expires_at > Instant::now())
            .map(|entry| entry.conversation.clone()))
    }

    async fn append(&self, conversation_id: &str, append: Append) -> Result<Appended, StoreError> {
        self.append_now(conversation_id, append, Instant::now())
    }

    async fn save_summary(
        &self,
        conversation_id: &str,
        summary: Summary,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(entry) = inner
            .conversations
            .get_mut(conversation_id)
            .filter(|entry| entry.expires_at > now)
        else {
            return Ok(false);
        };
        let newer = entry
            .conversation
            .summary
            .as_ref()
            .is_none_or(|current| summary.end_turn > current.end_turn);
        if newer {
            entry.conversation.summary = Some(summary);
            entry.expires_at = now + ttl;
        }
        Ok(newer)
    }

    async fn delete(&self, conversation_id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let removed = inner.conversations.remove(conversation_id);
        Ok(removed.is_some_and(|entry| entry.expires_at > Instant::now()))
    }

    fn admission(&self, _policy: FailurePolicy) -> Admission {
        Admission::Accept
    }

    fn health(&self) -> StoreHealth {
        StoreHealth {
            kind: self.kind(),
            status: StoreStatus::Ok,
            buffered_turns: 0,
            buffer_full: false,
            dropped_turns: 0,
            last_error: None,
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn shutdown(&self, _grace: Duration) -> FlushReport {
        FlushReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::{Message, Part, Role};

    const HOUR: Duration = Duration::from_secs(3600);

    fn append(model: &str) -> Append {
        Append {
            turn: Turn::new(
                model,
                "p@1",
                vec![Message {
                    role: Role::User,
                    parts: vec![Part::Text {
                        text: model.to_owned(),
                    }],
                }],
            ),
            vault: Vec::new(),
            expected_version: None,
            ttl: HOUR,
        }
    }

    fn models(conversation: &Conversation) -> Vec<String> {
        conversation.turns.iter().map(|t| t.model.clone()).collect()
    }

    #[tokio::test]
    async fn turns_are_kept_in_order() {
        let store = MemoryStore::with_defaults();
        store.append("c1", append("a")).await.expect("append");
        store.append("c1", append("b")).await.expect("append");
        let conversation = store.load("c1").await.expect("load").expect("exists");
        assert_eq!(models(&conversation), ["a", "b"]);
        assert_eq!(conversation.version, 2);
        assert_eq!(conversation.metadata.model, "b");
        assert!(store.load("other").await.expect("load").is_none());
    }

    #[tokio::test]
    async fn least_recently_updated_conversation_is_evicted() {
        let store = MemoryStore::new(2, 10);
        for (id, model) in [("c1", "a"), ("c2", "a"), ("c1", "b"), ("c3", "a")] {
            store.append(id, append(model)).await.expect("append");
        }
        assert!(
            store.load("c2").await.expect("load").is_none(),
            "c2 was the least recently updated"
        );
        assert!(store.load("c1").await.expect("load").is_some());
        assert!(store.load("c3").await.expect("load").is_some());
    }

    #[tokio::test]
    async fn oldest_turns_are_trimmed() {
        let store = MemoryStore::new(10, 2);
        for model in ["a", "b", "c"] {
            store.append("c1", append(model)).await.expect("append");
        }
        let conversation = store.load("c1").await.expect("load").expect("exists");
        assert_eq!(models(&conversation), ["b", "c"]);
        assert_eq!(conversation.first_seq, 1);
        assert_eq!(conversation.version, 3);
    }

    #[tokio::test]
    async fn stale_expected_version_conflicts() {
        let store = MemoryStore::with_defaults();
        store.append("c1", append("a")).await.expect("append");
        let mut stale = append("b");
        stale.expected_version = Some(0);
        let error = store.append("c1", stale).await.expect_err("stale");
        assert!(matches!(
            error,
            StoreError::Conflict {
                expected: 0,
                current: 1
            }
        ));
        let mut current = append("b");
        current.expected_version = Some(1);
        assert_eq!(
            store.append("c1", current).await.expect("append"),
            Appended::Stored { version: 2 }
        );
    }

    #[tokio::test]
    async fn replayed_turn_is_not_duplicated() {
        let store = MemoryStore::with_defaults();
        let first = append("a");
        store.append("c1", first.clone()).await.expect("append");
        assert_eq!(
            store.append("c1", first).await.expect("replay"),
            Appended::Duplicate { version: 1 }
        );
        let conversation = store.load("c1").await.expect("load").expect("exists");
        assert_eq!(conversation.turns.len(), 1);
    }

    #[tokio::test]
    async fn expired_conversation_is_gone() {
        let store = MemoryStore::with_defaults();
        let mut short = append("a");
        short.ttl = Duration::ZERO;
        store.append("c1", short).await.expect("append");
        assert!(store.load("c1").await.expect("load").is_none());
        store.append("c1", append("b")).await.expect("append");
        let conversation = store.load("c1").await.expect("load").expect("exists");
        assert_eq!(
            models(&conversation),
            ["b"],
            "expired turns do not come back"
        );
    }

    #[tokio::test]
    async fn only_a_newer_summary_replaces_the_stored_one() {
        let store = MemoryStore::with_defaults();
        store.append("c1", append("a")).await.expect("append");
        let summary = |end_turn| Summary {
            text: format!("up to {end_turn}"),
            first_turn: 0,
            end_turn,
            covered_messages: end_turn,
            tokens: 3,
            model: "m".to_owned(),
            created_at_ms: 0,
        };
        assert!(
            store
                .save_summary("c1", summary(2), HOUR)
                .await
                .expect("save")
        );
        assert!(
            !store
                .save_summary("c1", summary(1), HOUR)
                .await
                .expect("save")
        );
        assert!(
            !store
                .save_summary("missing", summary(5), HOUR)
                .await
                .expect("save")
        );
        let conversation = store.load("c1").await.expect("load").expect("exists");
        assert_eq!(conversation.summary.expect("summary").end_turn, 2);
    }

    #[tokio::test]
    async fn first_vault_mapping_wins() {
        let store = MemoryStore::with_defaults();
        let entry = |sealed: &[u8]| SealedEntry {
            placeholder: "<EMAIL_1>".to_owned(),
            sealed: sealed.to_vec(),
        };
        let mut first = append("a");
        first.vault = vec![entry(b"one")];
        let mut second = append("b");
        second.vault = vec![entry(b"two")];
        store.append("c1", first).await.expect("append");
        store.append("c1", second).await.expect("append");
        let conversation = store.load("c1").await.expect("load").expect("exists");
        assert_eq!(conversation.vault, vec![entry(b"one")]);
    }
}
