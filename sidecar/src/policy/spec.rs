//! The `GuardrailPolicy` resource as users write it (YAML, camelCase keys).
//!
//! These types are the raw, user-facing layer: they only describe shape. Semantic checks
//! (unique ids, valid regexes, known entities, numeric ranges) live in `validate`, and
//! the form the guard engine runs on is built by `compile`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::conversation::{
    BudgetSpec, ContextSpec, ContextStrategy, ConversationSpec, StoreFull, SummarizerSpec,
};

/// The only `apiVersion` this build reads.
pub const API_VERSION: &str = "agent-sidecar.io/v1alpha1";
/// The resource kind.
pub const KIND: &str = "GuardrailPolicy";

/// Resource metadata, the subset of Kubernetes `ObjectMeta` a policy uses.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Set by the API server for CRD objects; reported with every decision when present.
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Whether a rule changes traffic or only records what it would have done.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// Traffic direction: `input` is what the agent sends to the model, `output` what the
/// model returns.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// How a blocked request or response is answered.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BlockResponse {
    /// A normal assistant reply carrying the refusal text.
    #[default]
    Refusal,
    /// A provider-format error with HTTP 403.
    Error,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnBlock {
    #[serde(default)]
    pub response: BlockResponse,
    #[serde(default)]
    pub refusal: Option<String>,
}

/// A topic defined by literal phrases and regular expressions.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topic {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Directions the rule checks; both when omitted.
    #[serde(default)]
    pub applies_to: Option<Vec<Direction>>,
    #[serde(default)]
    pub phrases: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
}

/// The rule that reports input matching none of `allowedTopics`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OffTopic {
    #[serde(default = "default_off_topic_id")]
    pub id: String,
    #[serde(default)]
    pub mode: Mode,
}

impl Default for OffTopic {
    fn default() -> Self {
        OffTopic {
            id: default_off_topic_id(),
            mode: Mode::Enforce,
        }
    }
}

fn default_off_topic_id() -> String {
    "off-topic".to_owned()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Decision {
    #[default]
    Allow,
    Deny,
    Escalate,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Escalate => "escalate",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Actions {
    /// Decision for a tool no rule names.
    #[serde(default)]
    pub default: Decision,
    /// Rule id reported when the default decides; `actions-default` when omitted.
    #[serde(default)]
    pub default_rule_id: Option<String>,
    #[serde(default)]
    pub rules: Vec<ActionRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionRule {
    pub id: String,
    #[serde(default)]
    pub mode: Mode,
    /// Tool names, exact or glob (`*`, `?`, `[...]`).
    pub tools: Vec<String>,
    pub decision: Decision,
    /// Constraints on the call's JSON arguments; a call that violates one is denied.
    #[serde(default)]
    pub arguments: Vec<ArgumentConstraint>,
}

/// A constraint on one value inside a tool call's arguments.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgumentConstraint {
    /// RFC 6901 JSON Pointer into the arguments object, such as `/amount`.
    pub pointer: String,
    /// The value must be present.
    #[serde(default)]
    pub required: bool,
    /// The value must be a string matching this regular expression (unanchored).
    #[serde(default)]
    pub pattern: Option<String>,
    /// The value must equal one of these.
    #[serde(default, rename = "enum")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// The value must be a number at least this large.
    #[serde(default)]
    pub min: Option<f64>,
    /// The value must be a number at most this large.
    #[serde(default)]
    pub max: Option<f64>,
    /// The value must be a string of at most this many characters.
    #[serde(default)]
    pub max_length: Option<usize>,
}

/// What a PII rule does with a match in one direction.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PiiAction {
    Block,
    Redact,
    Mask,
    Hash,
    Pseudonymize,
    Allow,
}

impl PiiAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiAction::Block => "block",
            PiiAction::Redact => "redact",
            PiiAction::Mask => "mask",
            PiiAction::Hash => "hash",
            PiiAction::Pseudonymize => "pseudonymize",
            PiiAction::Allow => "allow",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PiiRule {
    pub id: String,
    #[serde(default)]
    pub mode: Mode,
    /// Built-in entity names (`EMAIL`, `PHONE`, ...) or names from `customEntities`.
    pub entities: Vec<String>,
    pub input: PiiAction,
    pub output: PiiAction,
    /// Trailing characters left visible by `mask`.
    #[serde(default = "default_mask_keep")]
    pub mask_keep: usize,
    /// Character that replaces masked characters.
    #[serde(default = "default_mask_char")]
    pub mask_char: char,
}

/// Four trailing characters is what card receipts and most support tools show.
pub const DEFAULT_MASK_KEEP: usize = 4;

fn default_mask_keep() -> usize {
    DEFAULT_MASK_KEEP
}

fn default_mask_char() -> char {
    '*'
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomEntity {
    /// Upper-case name, used in placeholders such as `[EMPLOYEE_ID]`.
    pub name: String,
    pub pattern: String,
    /// When set, a match counts only with one of these words nearby.
    #[serde(default)]
    pub context_words: Vec<String>,
}

/// The `spec` of a `GuardrailPolicy`. Every section is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub on_block: OnBlock,
    #[serde(default)]
    pub topics: Vec<Topic>,
    #[serde(default)]
    pub allowed_topics: Vec<Topic>,
    #[serde(default)]
    pub off_topic: OffTopic,
    #[serde(default)]
    pub actions: Actions,
    #[serde(default)]
    pub pii: Vec<PiiRule>,
    #[serde(default)]
    pub custom_entities: Vec<CustomEntity>,
    /// Context-window management; off when omitted.
    #[serde(default)]
    pub context: Option<ContextSpec>,
    /// Conversation state: time to live, store failure policy, id source.
    #[serde(default)]
    pub conversation: Option<ConversationSpec>,
    #[serde(default)]
    pub stream: StreamSettings,
    /// Checking of model reasoning (Anthropic `thinking` blocks).
    #[serde(default)]
    pub thinking: ThinkingSettings,
}

/// Settings for checking model reasoning (Anthropic `thinking` blocks).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThinkingSettings {
    /// Checks thinking text with the topic and PII rules. A blocking rule blocks the
    /// request or response, and other findings are only recorded. The text is never rewritten,
    /// because its signature covers it, and a streamed thinking block is released whole
    /// after its check. Off by default: thinking passes unscanned.
    #[serde(default)]
    pub scan: bool,
}

/// How streamed responses are guarded.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StreamGuardMode {
    /// Hold back text that could still match and transform it before release.
    #[default]
    Guarded,
    /// Release every delta at once and only record findings.
    Monitor,
}

/// Upper bound on text held back in a stream. It covers PEM private keys, whose blocks
/// run to about 3.3 KB for RSA-4096, and leaves room for long tokens.
pub const DEFAULT_MAX_HOLD_BACK_BYTES: usize = 8 * 1024;

fn default_max_hold_back_bytes() -> usize {
    DEFAULT_MAX_HOLD_BACK_BYTES
}

/// Streaming settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamSettings {
    #[serde(default)]
    pub mode: StreamGuardMode,
    /// Maximum bytes of text held back per channel before release. A rule whose longest
    /// possible match exceeds it is rejected when the policy is validated.
    #[serde(default = "default_max_hold_back_bytes")]
    pub max_hold_back_bytes: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            mode: StreamGuardMode::Guarded,
            max_hold_back_bytes: DEFAULT_MAX_HOLD_BACK_BYTES,
        }
    }
}

/// A whole `GuardrailPolicy` document.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardrailPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}
