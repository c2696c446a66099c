//! A store wrapper that counts each operation and its outcome in the sidecar's metrics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Admission, Append, Appended, Conversation, ConversationStore, FailurePolicy, FlushReport,
    StoreError, StoreHealth, Summary,
};
use crate::telemetry::metrics::Metrics;

/// Forwards every call to `inner` and counts `load`, `append`, `save_summary` and `delete` by
/// outcome in `agent_sidecar_store_operations_total`.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ConversationStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ConversationStore>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }

    fn record<T>(&self, operation: &str, result: &Result<T, StoreError>) {
        self.metrics
            .record_store_operation(operation, outcome_label(result));
    }
}

/// Returns the metric label of an operation's result: `success` or the error kind.
fn outcome_label<T>(result: &Result<T, StoreError>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(StoreError::Conflict { .. }) => "conflict",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::BufferFull { .. }) => "buffer_full",
        Err(StoreError::Corrupt(_)) => "corrupt",
    }
}

#[async_trait]
impl ConversationStore for MeteredStore {
    async fn load(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError> {
        let result = self.inner.load(conversation_id).await;
        self.record("load", &result);
        result
    }

    async fn append(&self, conversation_id: &str, append: Append) -> Result<Appended, StoreError> {
        let result = self.inner.append(conversation_id, append).await;
        self.record("append", &result);
        result
    }

    async fn save_summary(
        &self,
        conversation_id: &str,
        summary: Summary,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let result = self.inner.save_summary(conversation_id, summary, ttl).await;
        self.record("save_summary", &result);
        result
    }

    async fn delete(&self, conversation_id: &str) -> Result<bool, StoreError> {
        let result = self.inner.delete(conversation_id).await;
        self.record("delete", &result);
        result
    }

    fn admission(&self, policy: FailurePolicy) -> Admission {
        self.inner.admission(policy)
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn shutdown(&self, grace: Duration) -> FlushReport {
        self.inner.shutdown(grace).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryStore;

    #[tokio::test]
    async fn operations_are_counted_by_outcome() {
        let metrics = Metrics::new();
        let store = MeteredStore::new(Arc::new(MemoryStore::new(10, 10)), metrics.clone());

        let loaded = store.load("conversation-1").await;

        assert!(matches!(loaded, Ok(None)));
        let text = metrics.encode();
        assert!(
            text.contains(
                "agent_sidecar_store_operations_total{operation=\"load\",outcome=\"success\"} 1"
            ),
            "{text}"
        );
    }
}
