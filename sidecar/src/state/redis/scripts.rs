//! Key layout and the Lua scripts that make every store operation one atomic round trip.
//!
//! A conversation uses three keys that share the hash tag `{conversation-id}`, so Redis
//! Cluster places them in one slot and a script may touch all of them:
//! - `PREFIX:{ID}:meta`, a hash: `version`, `first_seq`, `model`, `policy`,
//!   `created_ms`, `updated_ms`, and `summary` (JSON) with `summary_end`;
//! - `PREFIX:{ID}:turns`, a list of turn records, each `TURN_ID\nJSON`;
//! - `PREFIX:{ID}:vault`, a hash from placeholder to sealed value.
//!
//! A conversation id containing `}` still works: the hash tag is then the id's prefix
//! up to that brace, which is the same for all three keys.

use redis::Script;

/// Keys of one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub meta: String,
    pub turns: String,
    pub vault: String,
}

impl Keys {
    pub fn new(prefix: &str, conversation_id: &str) -> Keys {
        let base = format!("{prefix}:{{{conversation_id}}}");
        Keys {
            meta: format!("{base}:meta"),
            turns: format!("{base}:turns"),
            vault: format!("{base}:vault"),
        }
    }
}

/// Result codes of `APPEND`.
pub const APPEND_CONFLICT: i64 = 0;
pub const APPEND_STORED: i64 = 1;
pub const APPEND_DUPLICATE: i64 = 2;

/// Appends one turn.
///
/// KEYS: meta, turns, vault. ARGV: expected version (empty for none), TTL in ms, max
/// turns kept, now in ms, model, policy, turn id, turn JSON, duplicate-search window,
/// then placeholder and sealed value pairs.
/// Returns `{code, version}`: the new version when stored, else the current one.
///
/// The duplicate check runs first, so replaying a turn whose first write succeeded
/// (but whose reply was lost) is a no-op even when the version has moved on.
const APPEND: &str = r"
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local prefix = ARGV[7] .. '\n'
local recent = redis.call('LRANGE', KEYS[2], -tonumber(ARGV[9]), -1)
for _, item in ipairs(recent) do
  if string.sub(item, 1, #prefix) == prefix then
    return {2, version}
  end
end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= version then
  return {0, version}
end
redis.call('RPUSH', KEYS[2], prefix .. ARGV[8])
version = version + 1
redis.call('HSET', KEYS[1], 'version', version, 'model', ARGV[5], 'policy', ARGV[6],
  'updated_ms', ARGV[4])
redis.call('HSETNX', KEYS[1], 'created_ms', ARGV[4])
local length = redis.call('LLEN', KEYS[2])
local excess = length - tonumber(ARGV[3])
if excess > 0 then
  redis.call('LTRIM', KEYS[2], excess, -1)
  redis.call('HINCRBY', KEYS[1], 'first_seq', excess)
end
for i = 10, #ARGV, 2 do
  redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1])
end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, version}
";

/// Loads a conversation: `{meta field-value list, turn records, vault field-value list}`.
const LOAD: &str = r"
return {
  redis.call('HGETALL', KEYS[1]),
  redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('HGETALL', KEYS[3]),
}
";

/// Stores a summary when it covers more turns than the stored one.
///
/// KEYS: meta, turns, vault. ARGV: summary end turn, summary JSON, TTL in ms.
/// Returns 1 when stored, 0 when not (no conversation, or an equal or newer summary).
const SAVE_SUMMARY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local current = tonumber(redis.call('HGET', KEYS[1], 'summary_end') or '-1')
if tonumber(ARGV[1]) <= current then
  return 0
end
redis.call('HSET', KEYS[1], 'summary_end', ARGV[1], 'summary', ARGV[2])
local ttl = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
";

/// The compiled scripts. `Script` sends `EVALSHA` and falls back to `EVAL` once when
/// the server does not know the script yet (after a restart or failover).
#[derive(Debug)]
pub struct Scripts {
    pub append: Script,
    pub load: Script,
    pub save_summary: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            append: Script::new(APPEND),
            load: Script::new(LOAD),
            save_summary: Script::new(SAVE_SUMMARY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("agent-sidecar", "conv-1");
        assert_eq!(keys.meta, "agent-sidecar:{conv-1}:meta");
        assert_eq!(keys.turns, "agent-sidecar:{conv-1}:turns");
        assert_eq!(keys.vault, "agent-sidecar:{conv-1}:vault");
    }
}
