//! Escalations: tool calls that an action rule with `decision: escalate` holds for a
//! human decision, and the store that keeps them until they expire.
//!
//! A call is identified by its fingerprint, a keyed digest of its conversation, tool and
//! arguments. While an escalation is pending, the identical call gets the same escalation
//! back. Once it is approved or denied, the identical call is allowed or denied until the
//! escalation expires. After that, the next identical call creates a new escalation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{StoreError, now_ms, random_id};
use crate::guard::Guard;
use crate::guard::pii::redact_placeholder;
use crate::policy::spec::Direction;

/// How long an escalation and its resolution apply: an hour gives a human on call time
/// to decide, and bounds how long one approval allows a repeated call.
pub const DEFAULT_ESCALATION_TTL: Duration = Duration::from_secs(3600);
/// Escalations the in-memory store keeps; expired ones are removed first.
pub const MAX_MEMORY_ESCALATIONS: usize = 10_000;

/// The state of an escalation, without expiry, which depends on the time of reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscalationState {
    Pending,
    Approved,
    Denied,
}

/// A tool call held for a human decision.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    pub id: String,
    pub conversation_id: String,
    pub tool: String,
    /// The call's arguments as JSON text with every PII match replaced by a placeholder.
    pub arguments: String,
    pub rule: String,
    /// Keyed digest of conversation, tool and arguments; never shown to clients.
    pub fingerprint: String,
    pub state: EscalationState,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
    pub resolved_by: Option<String>,
    pub reason: Option<String>,
}

impl Escalation {
    /// Builds a pending escalation for a call that `rule` escalated. The arguments are
    /// stored with their PII redacted, whatever the policy does with PII elsewhere, because
    /// a human reads them.
    pub fn new(
        guard: &Guard,
        conversation_id: &str,
        tool: &str,
        arguments: Option<&Value>,
        rule: &str,
        ttl: Duration,
    ) -> Escalation {
        let now = now_ms();
        Escalation {
            id: format!("esc_{}", random_id()),
            conversation_id: conversation_id.to_owned(),
            tool: tool.to_owned(),
            arguments: redacted_arguments(guard, arguments),
            rule: rule.to_owned(),
            fingerprint: fingerprint(guard, conversation_id, tool, arguments),
            state: EscalationState::Pending,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            resolved_at_ms: None,
            resolved_by: None,
            reason: None,
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// Returns the fingerprint of a call. Object keys are sorted first, so the same
/// arguments written in another key order are the same call.
pub fn fingerprint(
    guard: &Guard,
    conversation_id: &str,
    tool: &str,
    arguments: Option<&Value>,
) -> String {
    let canonical = arguments.map(canonical_json).unwrap_or_default();
    guard.keyed_digest(&format!("{conversation_id}\u{0}{tool}\u{0}{canonical}"))
}

fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|key| {
                    format!(
                        "{}:{}",
                        Value::String(key.clone()),
                        canonical_json(&map[key])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// Returns `arguments` as JSON text with every PII match in its string values replaced
/// by the entity's placeholder, such as `[EMAIL]`.
pub fn redacted_arguments(guard: &Guard, arguments: Option<&Value>) -> String {
    let Some(arguments) = arguments else {
        return String::new();
    };
    let mut value = arguments.clone();
    redact_strings(guard, &mut value);
    value.to_string()
}

fn redact_strings(guard: &Guard, value: &mut Value) {
    match value {
        Value::String(text) => {
            let scan = guard.scan(Direction::Output, text);
            if scan.pii.is_empty() {
                return;
            }
            let mut matches = scan.pii;
            matches.sort_by_key(|m| m.start);
            let mut output = String::with_capacity(text.len());
            let mut copied = 0;
            for m in &matches {
                // Overlapping matches: the earlier one already covers this text.
                if m.start < copied {
                    continue;
                }
                output.push_str(&text[copied..m.start]);
                output.push_str(&redact_placeholder(guard.entity_name(m.entity)));
                copied = m.end;
            }
            output.push_str(&text[copied..]);
            *text = output;
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| redact_strings(guard, item)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|item| redact_strings(guard, item)),
        _ => {}
    }
}

/// Failure of a resolution.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("escalation {0} not found")]
    NotFound(String),
    #[error("escalation {id} is already {state:?}")]
    AlreadyResolved { id: String, state: EscalationState },
    #[error("escalation {0} has expired")]
    Expired(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A human decision on an escalation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub approve: bool,
    pub resolved_by: String,
    pub reason: Option<String>,
}

/// Storage of escalations.
#[async_trait]
pub trait EscalationStore: Send + Sync + std::fmt::Debug {
    /// Returns the unexpired escalation with `fingerprint`, if any.
    async fn find(&self, fingerprint: &str) -> Result<Option<Escalation>, StoreError>;

    /// Stores `escalation` unless an unexpired one with the same fingerprint exists, and
    /// returns the one in force.
    async fn create(&self, escalation: Escalation) -> Result<Escalation, StoreError>;

    /// Lists unexpired and expired escalations still kept, newest first, optionally of
    /// one conversation.
    async fn list(&self, conversation_id: Option<&str>) -> Result<Vec<Escalation>, StoreError>;

    /// Approves or denies a pending, unexpired escalation.
    async fn resolve(&self, id: &str, resolution: Resolution) -> Result<Escalation, ResolveError>;
}

/// Escalations in process memory: lost on restart and not shared between replicas.
#[derive(Debug, Default)]
pub struct MemoryEscalations {
    inner: Mutex<HashMap<String, Escalation>>,
}

impl MemoryEscalations {
    pub fn new() -> MemoryEscalations {
        MemoryEscalations::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Escalation>> {
        // A panic while the lock was held leaves a usable map, so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EscalationStore for MemoryEscalations {
    async fn find(&self, fingerprint: &str) -> Result<Option<Escalation>, StoreError> {
        let now = now_ms();
        Ok(self
            .lock()
            .values()
            .filter(|e| e.fingerprint == fingerprint && !e.is_expired(now))
            .max_by_key(|e| e.created_at_ms)
            .cloned())
    }

    async fn create(&self, escalation: Escalation) -> Result<Escalation, StoreError> {
        let now = now_ms();
        let mut escalations = self.lock();
        if let Some(existing) = escalations
            .values()
            .find(|e| e.fingerprint == escalation.fingerprint && !e.is_expired(now))
        {
            return Ok(existing.clone());
        }
        if escalations.len() >= MAX_MEMORY_ESCALATIONS {
            escalations.retain(|_, e| !e.is_expired(now));
        }
        if escalations.len() >= MAX_MEMORY_ESCALATIONS {
            let oldest = escalations
                .values()
                .min_by_key(|e| e.created_at_ms)
                .map(|e| e.id.clone());
            if let Some(oldest) = oldest {
                escalations.remove(&oldest);
            }
        }
        escalations.insert(escalation.id.clone(), escalation.clone());
        Ok(escalation)
    }

    async fn list(&self, conversation_id: Option<&str>) -> Result<Vec<Escalation>, StoreError> {
        let mut listed: Vec<Escalation> = self
            .lock()
            .values()
            .filter(|e| conversation_id.is_none_or(|id| e.conversation_id == id))
            .cloned()
            .collect();
        listed.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        Ok(listed)
    }

    async fn resolve(&self, id: &str, resolution: Resolution) -> Result<Escalation, ResolveError> {
        let now = now_ms();
        let mut escalations = self.lock();
        let escalation = escalations
            .get_mut(id)
            .ok_or_else(|| ResolveError::NotFound(id.to_owned()))?;
        apply_resolution(escalation, resolution, now)?;
        Ok(escalation.clone())
    }
}

/// Checks that `escalation` can be resolved and records the decision.
pub fn apply_resolution(
    escalation: &mut Escalation,
    resolution: Resolution,
    now: u64,
) -> Result<(), ResolveError> {
    if escalation.state != EscalationState::Pending {
        return Err(ResolveError::AlreadyResolved {
            id: escalation.id.clone(),
            state: escalation.state,
        });
    }
    if escalation.is_expired(now) {
        return Err(ResolveError::Expired(escalation.id.clone()));
    }
    escalation.state = if resolution.approve {
        EscalationState::Approved
    } else {
        EscalationState::Denied
    };
    escalation.resolved_at_ms = Some(now);
    escalation.resolved_by = Some(resolution.resolved_by);
    escalation.reason = resolution.reason;
    Ok(())
}

/// The decision for an escalated call.
#[derive(Clone, Debug, PartialEq)]
pub enum EscalationOutcome {
    /// A human approved the identical call; it may run.
    Approved(Escalation),
    /// A human denied the identical call.
    Denied(Escalation),
    /// The call waits for a decision; newly created when `created` is true.
    Pending {
        escalation: Escalation,
        created: bool,
    },
}

impl EscalationOutcome {
    pub fn escalation(&self) -> &Escalation {
        match self {
            EscalationOutcome::Approved(escalation)
            | EscalationOutcome::Denied(escalation)
            | EscalationOutcome::Pending { escalation, .. } => escalation,
        }
    }
}

/// Escalation handling shared by the proxy and the gRPC API: the store, plus the events
/// and metrics every creation and resolution is reported to.
#[derive(Clone, Debug)]
pub struct Escalations {
    pub store: std::sync::Arc<dyn EscalationStore>,
    pub events: crate::events::EventBus,
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    /// How long an escalation and its resolution apply.
    pub ttl: Duration,
}

impl Escalations {
    /// Decides a call that `rule` escalated: the resolution of the identical call when a
    /// human made one, else the pending escalation, created when there is none.
    pub async fn decide(
        &self,
        guard: &Guard,
        conversation_id: &str,
        tool: &str,
        arguments: Option<&Value>,
        rule: &str,
    ) -> Result<EscalationOutcome, StoreError> {
        let print = fingerprint(guard, conversation_id, tool, arguments);
        if let Some(existing) = self.store.find(&print).await? {
            return Ok(match existing.state {
                EscalationState::Approved => EscalationOutcome::Approved(existing),
                EscalationState::Denied => EscalationOutcome::Denied(existing),
                EscalationState::Pending => EscalationOutcome::Pending {
                    escalation: existing,
                    created: false,
                },
            });
        }
        let candidate = Escalation::new(guard, conversation_id, tool, arguments, rule, self.ttl);
        let stored = self.store.create(candidate.clone()).await?;
        let created = stored.id == candidate.id;
        if created {
            self.report_created(&stored);
        }
        Ok(EscalationOutcome::Pending {
            escalation: stored,
            created,
        })
    }

    /// Records a human decision, counts it and publishes it.
    pub async fn resolve(
        &self,
        id: &str,
        resolution: Resolution,
    ) -> Result<Escalation, ResolveError> {
        let resolved = self.store.resolve(id, resolution).await?;
        let event = match resolved.state {
            EscalationState::Approved => "approved",
            EscalationState::Denied | EscalationState::Pending => "denied",
        };
        self.metrics.record_escalation(event, &resolved.rule);
        tracing::info!(
            escalation.id = %resolved.id,
            conversation.id = %resolved.conversation_id,
            rule.id = %resolved.rule,
            decision = event,
            "escalation resolved"
        );
        self.events.publish(
            Some(&resolved.conversation_id),
            crate::events::EventPayload::EscalationResolved(resolved.clone()),
        );
        Ok(resolved)
    }
}

/// The escalations of one proxied request's conversation, loaded before its response is
/// guarded so that the synchronous guard can decide escalated calls. An approved or
/// denied identical call follows its resolution. Any other escalated call is raised here,
/// and the proxy stores it once the response is guarded.
#[derive(Debug)]
pub struct RequestEscalations {
    conversation_id: String,
    ttl: Duration,
    known: Vec<Escalation>,
    raised: Mutex<Vec<Escalation>>,
}

impl RequestEscalations {
    pub fn new(conversation_id: &str, known: Vec<Escalation>, ttl: Duration) -> RequestEscalations {
        RequestEscalations {
            conversation_id: conversation_id.to_owned(),
            ttl,
            known,
            raised: Mutex::new(Vec::new()),
        }
    }

    /// Returns the state of the escalation that applies to this call and its id: the
    /// resolution of a known escalation, or a pending one, newly raised when none exists.
    pub fn decide(
        &self,
        guard: &Guard,
        tool: &str,
        arguments: Option<&Value>,
        rule: &str,
    ) -> (EscalationState, String) {
        let print = fingerprint(guard, &self.conversation_id, tool, arguments);
        let now = now_ms();
        let mut raised = self
            .raised
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = raised.iter().find(|e| e.fingerprint == print) {
            return (existing.state, existing.id.clone());
        }
        let known = self
            .known
            .iter()
            .filter(|e| e.fingerprint == print && !e.is_expired(now))
            .max_by_key(|e| e.created_at_ms);
        let escalation = match known {
            Some(existing) if existing.state != EscalationState::Pending => {
                return (existing.state, existing.id.clone());
            }
            Some(existing) => existing.clone(),
            None => Escalation::new(
                guard,
                &self.conversation_id,
                tool,
                arguments,
                rule,
                self.ttl,
            ),
        };
        let id = escalation.id.clone();
        raised.push(escalation);
        (EscalationState::Pending, id)
    }

    /// Returns the pending escalations this request raised.
    pub fn raised(&self) -> Vec<Escalation> {
        self.raised
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Escalations {
    /// Loads the escalations of a conversation for one proxied request. A store failure
    /// leaves the list empty, so escalated calls stay pending.
    pub async fn for_request(&self, conversation_id: &str) -> RequestEscalations {
        let known = match self.store.list(Some(conversation_id)).await {
            Ok(known) => known,
            Err(error) => {
                tracing::warn!(conversation.id = %conversation_id, error = %error, "escalations not loaded; escalated calls stay pending");
                Vec::new()
            }
        };
        RequestEscalations::new(conversation_id, known, self.ttl)
    }

    /// Stores the escalations a proxied request raised, reporting each new one. Returns
    /// the id of the first, which the reply names.
    pub async fn store_raised(&self, request: &RequestEscalations) -> Option<String> {
        let raised = request.raised();
        let mut first = None;
        for escalation in raised {
            let id = match self.store.create(escalation.clone()).await {
                Ok(stored) => {
                    if stored.id == escalation.id {
                        self.report_created(&stored);
                    }
                    stored.id
                }
                Err(error) => {
                    tracing::warn!(escalation.id = %escalation.id, error = %error, "failed to store an escalation");
                    escalation.id.clone()
                }
            };
            first.get_or_insert(id);
        }
        first
    }

    fn report_created(&self, escalation: &Escalation) {
        self.metrics.record_escalation("created", &escalation.rule);
        tracing::info!(
            escalation.id = %escalation.id,
            conversation.id = %escalation.conversation_id,
            rule.id = %escalation.rule,
            tool = %escalation.tool,
            "tool call escalated for approval"
        );
        self.events.publish(
            Some(&escalation.conversation_id),
            crate::events::EventPayload::EscalationCreated(escalation.clone()),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::guard::pii::HashKey;
    use crate::policy::Policy;

    fn guard() -> Guard {
        let policy = Policy::embedded_default().expect("embedded policy compiles");
        Guard::new(Arc::new(policy), Arc::new(HashKey::new(b"test key")))
    }

    fn pending(guard: &Guard, conversation: &str) -> Escalation {
        Escalation::new(
            guard,
            conversation,
            "wire_transfer",
            Some(&json!({"amount": 5})),
            "wire-review",
            DEFAULT_ESCALATION_TTL,
        )
    }

    #[test]
    fn fingerprint_ignores_key_order() {
        let guard = guard();
        let a = json!({"amount": 5, "to": {"iban": "x", "name": "y"}});
        let b = json!({"to": {"name": "y", "iban": "x"}, "amount": 5});
        assert_eq!(
            fingerprint(&guard, "c", "t", Some(&a)),
            fingerprint(&guard, "c", "t", Some(&b))
        );
    }

    #[test]
    fn fingerprint_separates_conversations_and_arguments() {
        let guard = guard();
        let arguments = json!({"amount": 5});
        let base = fingerprint(&guard, "c1", "t", Some(&arguments));
        assert_ne!(base, fingerprint(&guard, "c2", "t", Some(&arguments)));
        assert_ne!(
            base,
            fingerprint(&guard, "c1", "t", Some(&json!({"amount": 6})))
        );
        assert_ne!(base, fingerprint(&guard, "c1", "u", Some(&arguments)));
    }

    #[test]
    fn arguments_are_stored_redacted() {
        let guard = guard();
        let arguments = json!({"to": "write to jane.doe@example.com", "n": [1, "bob@example.org"]});
        let redacted = redacted_arguments(&guard, Some(&arguments));
        assert!(!redacted.contains("jane.doe"), "{redacted}");
        assert!(!redacted.contains("bob@"), "{redacted}");
        assert!(redacted.contains("[EMAIL]"), "{redacted}");
    }

    #[tokio::test]
    async fn memory_store_resolves_once() {
        let guard = guard();
        let store = MemoryEscalations::new();
        let created = store.create(pending(&guard, "c")).await.expect("create");
        let again = store.create(pending(&guard, "c")).await.expect("create");
        assert_eq!(
            again.id, created.id,
            "an identical pending call reuses the escalation"
        );

        let resolution = Resolution {
            approve: true,
            resolved_by: "oncall".to_owned(),
            reason: None,
        };
        let resolved = store
            .resolve(&created.id, resolution.clone())
            .await
            .expect("resolve");
        assert_eq!(resolved.state, EscalationState::Approved);
        assert!(matches!(
            store.resolve(&created.id, resolution.clone()).await,
            Err(ResolveError::AlreadyResolved { .. })
        ));
        assert!(matches!(
            store.resolve("esc_missing", resolution).await,
            Err(ResolveError::NotFound(_))
        ));
    }

    #[test]
    fn request_escalations_follow_resolution() {
        let guard = guard();
        let mut approved = pending(&guard, "c");
        approved.state = EscalationState::Approved;
        let request = RequestEscalations::new("c", vec![approved.clone()], DEFAULT_ESCALATION_TTL);
        let (state, id) = request.decide(
            &guard,
            "wire_transfer",
            Some(&json!({"amount": 5})),
            "wire-review",
        );
        assert_eq!(state, EscalationState::Approved);
        assert_eq!(id, approved.id);
        assert!(request.raised().is_empty());

        let (state, id) = request.decide(
            &guard,
            "wire_transfer",
            Some(&json!({"amount": 6})),
            "wire-review",
        );
        assert_eq!(state, EscalationState::Pending);
        assert_eq!(request.raised().len(), 1);
        assert_eq!(request.raised()[0].id, id);
    }
}
