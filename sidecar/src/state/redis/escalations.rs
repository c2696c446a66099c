//! The Redis escalation store, so escalations survive a restart and every replica on
//! the same Redis reads the same ones. Each operation is one script call, and the key
//! layout and scripts are in `escalation_scripts`.
//!
//! Unlike the conversation store, nothing is buffered during an outage: a failed call
//! returns `StoreError::Unavailable`, and the proxy then keeps escalated calls pending.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::backend::{Backend, Connection};
use super::escalation_scripts::{
    CREATE_EXISTING, CREATE_STORED, EscalationKeys, EscalationScripts, RESOLVE_ALREADY_RESOLVED,
    RESOLVE_EXPIRED, RESOLVE_NOT_FOUND, RESOLVE_STORED,
};
use super::{CallError, RedisSettings, duration_ms, pairs};
use crate::state::escalation::{
    Escalation, EscalationState, EscalationStore, Resolution, ResolveError,
};
use crate::state::{StoreError, now_ms};

/// Escalations in Redis.
pub struct RedisEscalations {
    backend: Backend,
    scripts: EscalationScripts,
    keys: EscalationKeys,
    /// Bound for one script call, connecting included.
    operation_timeout: Duration,
}

impl fmt::Debug for RedisEscalations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEscalations")
            .field("mode", &self.backend.mode_name())
            .field("keys", &self.keys)
            .finish()
    }
}

impl RedisEscalations {
    /// Prepares the store without connecting, so Redis being down delays nothing.
    pub fn open(redis: &RedisSettings) -> Result<RedisEscalations, StoreError> {
        let backend = Backend::new(redis)
            .map_err(|e| StoreError::Unavailable(format!("invalid Redis settings: {e}")))?;
        tracing::info!(redis.mode = backend.mode_name(), "escalation store: redis");
        Ok(RedisEscalations {
            backend,
            scripts: EscalationScripts::new(),
            keys: EscalationKeys::new(&redis.key_prefix),
            operation_timeout: redis.connect_timeout + redis.command_timeout,
        })
    }

    /// Runs one script call, bounded by the operation timeout.
    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let call = async {
            let mut connection: Connection =
                self.backend.connection().await.map_err(CallError::Redis)?;
            invocation
                .invoke_async::<T>(&mut connection)
                .await
                .map_err(CallError::Redis)
        };
        let result = match tokio::time::timeout(self.operation_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::TimedOut),
        };
        result.map_err(|error| {
            if let CallError::Redis(e) = &error {
                self.backend.on_error(e);
            }
            StoreError::Unavailable(format!("escalation store: {error}"))
        })
    }
}

/// Rebuilds an escalation from its record hash: the JSON stored at creation, with the
/// resolution fields the resolve script wrote over it. Returns `None` for no fields.
fn decode(fields: Vec<Vec<u8>>) -> Result<Option<Escalation>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut map: HashMap<String, String> = pairs(fields)
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(&name).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect();
    let record = map.get("record").ok_or_else(|| {
        StoreError::Corrupt("escalation hash is missing its record field".to_owned())
    })?;
    let mut escalation: Escalation = serde_json::from_str(record)
        .map_err(|e| StoreError::Corrupt(format!("invalid escalation record: {e}")))?;
    escalation.state = match map.get("state").map(String::as_str) {
        Some("pending") | None => EscalationState::Pending,
        Some("approved") => EscalationState::Approved,
        Some("denied") => EscalationState::Denied,
        Some(other) => {
            return Err(StoreError::Corrupt(format!(
                "escalation {} has unknown state {other:?}",
                escalation.id
            )));
        }
    };
    if let Some(at) = map.get("resolved_at_ms") {
        escalation.resolved_at_ms = Some(at.parse().map_err(|_| {
            StoreError::Corrupt(format!(
                "escalation {} has an invalid resolved_at_ms {at:?}",
                escalation.id
            ))
        })?);
    }
    if let Some(by) = map.remove("resolved_by") {
        escalation.resolved_by = Some(by);
    }
    if let Some(reason) = map.remove("reason") {
        escalation.reason = Some(reason);
    }
    Ok(Some(escalation))
}

#[async_trait]
impl EscalationStore for RedisEscalations {
    async fn find(&self, fingerprint: &str) -> Result<Option<Escalation>, StoreError> {
        let mut invocation = self.scripts.find.prepare_invoke();
        invocation
            .key(self.keys.fingerprint(fingerprint))
            .arg(self.keys.record_prefix());
        let fields: Vec<Vec<u8>> = self.call(&invocation).await?;
        // Redis expires the keys itself; this check covers the clock difference between
        // the sidecar and Redis.
        Ok(decode(fields)?.filter(|e| !e.is_expired(now_ms())))
    }

    async fn create(&self, escalation: Escalation) -> Result<Escalation, StoreError> {
        let now = now_ms();
        let remaining = escalation.expires_at_ms.saturating_sub(now);
        if remaining == 0 {
            // An already expired escalation is not stored, because Redis would drop it at
            // once. It is returned as created, as the memory store returns it.
            return Ok(escalation);
        }
        let record = serde_json::to_string(&escalation)
            .map_err(|e| StoreError::Corrupt(format!("failed to encode escalation: {e}")))?;
        let mut invocation = self.scripts.create.prepare_invoke();
        invocation
            .key(self.keys.record(&escalation.id))
            .key(self.keys.fingerprint(&escalation.fingerprint))
            .key(self.keys.all())
            .key(self.keys.conversation(&escalation.conversation_id))
            .arg(&escalation.id)
            .arg(record)
            .arg(duration_ms(Duration::from_millis(remaining)))
            .arg(escalation.expires_at_ms)
            .arg(now)
            .arg(self.keys.record_prefix());
        let (code, fields): (i64, Vec<Vec<u8>>) = self.call(&invocation).await?;
        match code {
            CREATE_STORED => Ok(escalation),
            CREATE_EXISTING => decode(fields)?.ok_or_else(|| {
                StoreError::Corrupt("create script returned an empty record".to_owned())
            }),
            other => Err(StoreError::Corrupt(format!(
                "create script returned unknown code {other}"
            ))),
        }
    }

    async fn list(&self, conversation_id: Option<&str>) -> Result<Vec<Escalation>, StoreError> {
        let index = match conversation_id {
            Some(id) => self.keys.conversation(id),
            None => self.keys.all(),
        };
        let now = now_ms();
        let mut invocation = self.scripts.list.prepare_invoke();
        invocation
            .key(index)
            .arg(now)
            .arg(self.keys.record_prefix());
        let records: Vec<Vec<Vec<u8>>> = self.call(&invocation).await?;
        let mut listed = Vec::with_capacity(records.len());
        for fields in records {
            if let Some(escalation) = decode(fields)?
                && !escalation.is_expired(now)
            {
                listed.push(escalation);
            }
        }
        listed.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        Ok(listed)
    }

    /// NOTE: Redis deletes an escalation at its expiry, so resolving it afterwards returns
    /// `NotFound`, where the memory store returns `Expired` until it prunes the record.
    async fn resolve(&self, id: &str, resolution: Resolution) -> Result<Escalation, ResolveError> {
        let state = if resolution.approve {
            "approved"
        } else {
            "denied"
        };
        let mut invocation = self.scripts.resolve.prepare_invoke();
        invocation
            .key(self.keys.record(id))
            .arg(now_ms())
            .arg(state)
            .arg(&resolution.resolved_by)
            .arg(resolution.reason.as_deref().unwrap_or_default())
            .arg(if resolution.reason.is_some() {
                "1"
            } else {
                "0"
            });
        let (code, fields): (i64, Vec<Vec<u8>>) = self.call(&invocation).await?;
        let stored = || -> Result<Escalation, ResolveError> {
            Ok(decode(fields.clone())?.ok_or_else(|| {
                StoreError::Corrupt("resolve script returned an empty record".to_owned())
            })?)
        };
        match code {
            RESOLVE_NOT_FOUND => Err(ResolveError::NotFound(id.to_owned())),
            RESOLVE_ALREADY_RESOLVED => Err(ResolveError::AlreadyResolved {
                id: id.to_owned(),
                state: stored()?.state,
            }),
            RESOLVE_EXPIRED => Err(ResolveError::Expired(id.to_owned())),
            RESOLVE_STORED => stored(),
            other => Err(StoreError::Corrupt(format!(
                "resolve script returned unknown code {other}"
            ))
            .into()),
        }
    }
}
