//! Conversation state: the `ConversationStore` trait and the in-memory store, the
//! embedded default.

pub mod memory;

use crate::dialect::Message;

/// One exchange: the messages sent to the model (after input guardrails) and the reply
/// (after output guardrails).
#[derive(Clone, Debug)]
pub struct Turn {
    pub model: String,
    pub request: Vec<Message>,
    pub response: Option<Message>,
    /// Identity of the policy that guarded the turn (name and hash).
    pub policy: String,
}

/// A store of conversation turns keyed by conversation id.
pub trait ConversationStore: Send + Sync + std::fmt::Debug {
    /// Appends a turn to the conversation, creating it when new.
    fn append(&self, conversation_id: &str, turn: Turn);
    /// The stored turns of a conversation, oldest first.
    fn turns(&self, conversation_id: &str) -> Vec<Turn>;
    /// Name shown in readiness detail.
    fn kind(&self) -> &'static str;
}
