//! The in-memory conversation store.
//!
//! The store is bounded so that a long-running sidecar cannot grow without limit. It keeps
//! at most `max_conversations` conversations, evicting the least recently updated one
//! when a new one would exceed that. Each conversation keeps at most
//! `max_turns_per_conversation` turns, dropping the oldest.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::{ConversationStore, Turn};

/// Sized well above the few hundred live conversations a single agent pod typically has.
pub const DEFAULT_MAX_CONVERSATIONS: usize = 10_000;
/// Enough for long agent loops; older turns matter only through summaries.
pub const DEFAULT_MAX_TURNS_PER_CONVERSATION: usize = 1_000;

#[derive(Debug)]
struct Conversation {
    turns: VecDeque<Turn>,
    /// Value of the store's clock at the last append; the smallest is evicted first.
    updated: u64,
}

#[derive(Debug, Default)]
struct Inner {
    conversations: HashMap<String, Conversation>,
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
            DEFAULT_MAX_CONVERSATIONS,
            DEFAULT_MAX_TURNS_PER_CONVERSATION,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a conversation half-written:
        // every mutation below is a single push or remove.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ConversationStore for MemoryStore {
    fn append(&self, conversation_id: &str, turn: Turn) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if !inner.conversations.contains_key(conversation_id)
            && inner.conversations.len() >= self.max_conversations
        {
            // Linear in the number of conversations, and only when the store is full.
            let oldest = inner
                .conversations
                .iter()
                .min_by_key(|(_, c)| c.updated)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                inner.conversations.remove(&id);
            }
        }
        let conversation = inner
            .conversations
            .entry(conversation_id.to_owned())
            .or_insert_with(|| Conversation {
                turns: VecDeque::new(),
                updated: now,
            });
        conversation.updated = now;
        conversation.turns.push_back(turn);
        while conversation.turns.len() > self.max_turns_per_conversation {
            conversation.turns.pop_front();
        }
    }

    fn turns(&self, conversation_id: &str) -> Vec<Turn> {
        self.lock()
            .conversations
            .get(conversation_id)
            .map(|c| c.turns.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(model: &str) -> Turn {
        Turn {
            model: model.to_owned(),
            request: Vec::new(),
            response: None,
            policy: "p".to_owned(),
        }
    }

    #[test]
    fn turns_are_kept_in_order() {
        let store = MemoryStore::with_defaults();
        store.append("c1", turn("a"));
        store.append("c1", turn("b"));
        let models: Vec<String> = store.turns("c1").into_iter().map(|t| t.model).collect();
        assert_eq!(models, ["a", "b"]);
        assert!(store.turns("other").is_empty());
    }

    #[test]
    fn least_recently_updated_conversation_is_evicted() {
        let store = MemoryStore::new(2, 10);
        store.append("c1", turn("a"));
        store.append("c2", turn("a"));
        store.append("c1", turn("b"));
        store.append("c3", turn("a"));
        assert!(
            store.turns("c2").is_empty(),
            "c2 was the least recently updated"
        );
        assert_eq!(store.turns("c1").len(), 2);
        assert_eq!(store.turns("c3").len(), 1);
    }

    #[test]
    fn oldest_turns_are_dropped() {
        let store = MemoryStore::new(10, 2);
        for model in ["a", "b", "c"] {
            store.append("c1", turn(model));
        }
        let models: Vec<String> = store.turns("c1").into_iter().map(|t| t.model).collect();
        assert_eq!(models, ["b", "c"]);
    }
}
