//! The event bus: typed notifications of what the sidecar did (summarizations,
//! escalations, rule blocks, policy reloads), broadcast to every watcher, such as the
//! gRPC `Events.Watch` stream.
//!
//! Events are not stored. A watcher receives only events published while it is
//! subscribed, and one that falls more than [`EVENT_BUFFER`] events behind misses the oldest.
//! Events carry ids, rule ids and redacted arguments, never message content.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::state::escalation::Escalation;
use crate::state::now_ms;

/// Events kept for a slow watcher before it misses some: generous for the few events per
/// request the sidecar publishes, and 1,024 small events cost little memory.
pub const EVENT_BUFFER: usize = 1_024;

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum EventPayload {
    SummarizationStarted {
        /// Model that writes the summary.
        model: String,
    },
    SummarizationFinished {
        /// Whether the summary was stored.
        stored: bool,
        /// Reason for the failure; `None` on success.
        error: Option<String>,
    },
    EscalationCreated(Escalation),
    EscalationResolved(Escalation),
    RuleBlocked {
        rule: String,
        /// Finding kind label, such as `topic` or `action`.
        kind: &'static str,
        /// Component that made the decision: `proxy` or `grpc`.
        source: &'static str,
        /// The denied tool, for action rules.
        tool: Option<String>,
    },
    PolicyReloaded {
        /// Whether the new policy is in force; false when it was rejected.
        applied: bool,
        policy_name: String,
        policy_hash: String,
        /// Reason the new version was rejected.
        error: Option<String>,
    },
}

/// One published event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Milliseconds since the Unix epoch when the event was published.
    pub created_at_ms: u64,
    /// Conversation the event concerns; `None` for policy reloads.
    pub conversation_id: Option<String>,
    pub payload: EventPayload,
}

/// A cheap-to-clone handle that publishes to and subscribes to one broadcast channel.
#[derive(Clone, Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        let (sender, _) = broadcast::channel(EVENT_BUFFER);
        EventBus { sender }
    }

    /// Publishes an event; without watchers it is dropped.
    pub fn publish(&self, conversation_id: Option<&str>, payload: EventPayload) {
        let event = Event {
            created_at_ms: now_ms(),
            conversation_id: conversation_id.map(str::to_owned),
            payload,
        };
        // An error only means that no watcher is subscribed.
        let _ = self.sender.send(Arc::new(event));
    }

    /// Returns a receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscriber_receives_later_events() {
        let bus = EventBus::new();
        bus.publish(
            Some("before"),
            EventPayload::SummarizationStarted {
                model: "m".to_owned(),
            },
        );
        let mut receiver = bus.subscribe();
        bus.publish(
            Some("after"),
            EventPayload::SummarizationFinished {
                stored: true,
                error: None,
            },
        );
        let event = receiver.recv().await.expect("one event");
        assert_eq!(event.conversation_id.as_deref(), Some("after"));
        assert!(matches!(
            event.payload,
            EventPayload::SummarizationFinished { stored: true, .. }
        ));
    }
}
