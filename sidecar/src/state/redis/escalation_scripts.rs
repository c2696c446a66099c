//! Key layout and Lua scripts of the Redis escalation store.
//!
//! Every escalation key has the hash tag `{escalations}`, so Redis Cluster places them
//! all in one slot and a script may read keys it finds through an index. Escalations are
//! few (one per escalated tool call awaiting or holding a human decision), so one slot
//! carries them easily.
//! - `PREFIX:{escalations}:id:ID`, a hash: `record` (the escalation's JSON as created),
//!   `state`, `expires_ms`, and `resolved_at_ms`, `resolved_by` and `reason` once
//!   resolved;
//! - `PREFIX:{escalations}:fingerprint:FINGERPRINT`, a string: the id of the escalation
//!   in force for that call;
//! - `PREFIX:{escalations}:all` and `PREFIX:{escalations}:conversation:ID`, sorted sets
//!   of ids scored by expiry time in ms since the Unix epoch.
//!
//! Records and fingerprints expire with the escalation (`PX`), and the indexes drop
//! expired ids whenever a script reads or writes them.

use redis::Script;

/// Keys of the escalation store under one key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationKeys {
    base: String,
}

impl EscalationKeys {
    pub fn new(prefix: &str) -> EscalationKeys {
        EscalationKeys {
            base: format!("{prefix}:{{escalations}}"),
        }
    }

    /// Prefix of the record keys, which a script completes with an id.
    pub fn record_prefix(&self) -> String {
        format!("{}:id:", self.base)
    }

    pub fn record(&self, id: &str) -> String {
        format!("{}:id:{id}", self.base)
    }

    pub fn fingerprint(&self, fingerprint: &str) -> String {
        format!("{}:fingerprint:{fingerprint}", self.base)
    }

    pub fn all(&self) -> String {
        format!("{}:all", self.base)
    }

    pub fn conversation(&self, conversation_id: &str) -> String {
        format!("{}:conversation:{conversation_id}", self.base)
    }
}

/// Result codes of `CREATE`.
pub const CREATE_EXISTING: i64 = 0;
pub const CREATE_STORED: i64 = 1;

/// Stores an escalation unless one with the same fingerprint is in force.
///
/// KEYS: record, fingerprint, all index, conversation index. ARGV: id, record JSON, TTL
/// in ms, expiry in ms since the epoch, now in ms, record key prefix.
/// Returns `{CREATE_EXISTING, existing record fields}` or `{CREATE_STORED, {}}`.
const CREATE: &str = r"
local existing = redis.call('GET', KEYS[2])
if existing then
  local fields = redis.call('HGETALL', ARGV[6] .. existing)
  if #fields > 0 then
    return {0, fields}
  end
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'state', 'pending', 'expires_ms', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
for i = 3, 4 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[5])
  redis.call('ZADD', KEYS[i], ARGV[4], ARGV[1])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return {1, {}}
";

/// Returns the record fields of the escalation in force for a fingerprint, or `{}`.
///
/// KEYS: fingerprint. ARGV: record key prefix.
const FIND: &str = r"
local id = redis.call('GET', KEYS[1])
if not id then
  return {}
end
return redis.call('HGETALL', ARGV[1] .. id)
";

/// Returns the record fields of every unexpired escalation in an index.
///
/// KEYS: index. ARGV: now in ms, record key prefix.
const LIST: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local records = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HGETALL', ARGV[2] .. id)
  if #fields > 0 then
    table.insert(records, fields)
  end
end
return records
";

/// Result codes of `RESOLVE`.
pub const RESOLVE_NOT_FOUND: i64 = 0;
pub const RESOLVE_ALREADY_RESOLVED: i64 = 1;
pub const RESOLVE_EXPIRED: i64 = 2;
pub const RESOLVE_STORED: i64 = 3;

/// Records a decision on a pending escalation, once.
///
/// KEYS: record. ARGV: now in ms, state, resolved by, reason, `1` when there is a
/// reason (else `0`).
/// Returns `{code, record fields}`, with the fields as stored after the call.
/// Because the script checks and sets the state in one step, only one of two concurrent
/// resolutions succeeds.
const RESOLVE: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {0, {}}
end
if state ~= 'pending' then
  return {1, redis.call('HGETALL', KEYS[1])}
end
if tonumber(redis.call('HGET', KEYS[1], 'expires_ms') or '0') <= tonumber(ARGV[1]) then
  return {2, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'resolved_at_ms', ARGV[1], 'resolved_by', ARGV[3])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'reason', ARGV[4])
end
return {3, redis.call('HGETALL', KEYS[1])}
";

/// The compiled escalation scripts; see `Scripts` for how they are sent.
#[derive(Debug)]
pub struct EscalationScripts {
    pub create: Script,
    pub find: Script,
    pub list: Script,
    pub resolve: Script,
}

impl Default for EscalationScripts {
    fn default() -> Self {
        EscalationScripts::new()
    }
}

impl EscalationScripts {
    pub fn new() -> EscalationScripts {
        EscalationScripts {
            create: Script::new(CREATE),
            find: Script::new(FIND),
            list: Script::new(LIST),
            resolve: Script::new(RESOLVE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_keys_share_one_hash_tag() {
        let keys = EscalationKeys::new("agent-sidecar");
        assert_eq!(keys.record("esc_1"), "agent-sidecar:{escalations}:id:esc_1");
        assert_eq!(keys.record_prefix(), "agent-sidecar:{escalations}:id:");
        assert_eq!(
            keys.fingerprint("ab"),
            "agent-sidecar:{escalations}:fingerprint:ab"
        );
        assert_eq!(keys.all(), "agent-sidecar:{escalations}:all");
        assert_eq!(
            keys.conversation("c1"),
            "agent-sidecar:{escalations}:conversation:c1"
        );
    }
}
