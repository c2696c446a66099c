//! Verdicts and findings: what the guard engine decided and why.

use std::sync::Arc;

use serde::Serialize;

use crate::policy::spec::{Direction, Mode};

/// The family of rule that produced a finding; a label value in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Topic,
    OffTopic,
    Action,
    Pii,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Topic => "topic",
            FindingKind::OffTopic => "off_topic",
            FindingKind::Action => "action",
            FindingKind::Pii => "pii",
        }
    }
}

/// Action a rule took, or in `monitor` mode would have taken; a label value in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Block,
    Redact,
    Mask,
    Hash,
    /// Replaced with a conversation-scoped placeholder from the pseudonym vault.
    Pseudonymize,
    Escalate,
    /// A denied tool taken out of the tools a request offers.
    Removed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Block => "block",
            Outcome::Redact => "redact",
            Outcome::Mask => "mask",
            Outcome::Hash => "hash",
            Outcome::Pseudonymize => "pseudonymize",
            Outcome::Escalate => "escalate",
            Outcome::Removed => "removed",
        }
    }
}

/// One rule match. Spans are byte offsets into the UTF-8 text of part `part` of the
/// checked content. A finding never carries the matched value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub rule: Arc<str>,
    pub kind: FindingKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<Arc<str>>,
    pub outcome: Outcome,
    pub mode: Mode,
    pub direction: Direction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<usize>,
    /// The tool a finding about an action concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Reason a constraint failed, naming the argument and the limit, never the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Finding {
    /// Returns true when this finding changes traffic (`enforce` mode and an outcome
    /// other than allow).
    pub fn is_enforced(&self) -> bool {
        self.mode == Mode::Enforce && self.outcome != Outcome::Allow
    }
}

/// The overall decision for a piece of content, ordered by severity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change.
    #[default]
    Allow,
    /// The content was rewritten (redacted, masked, hashed) and may pass.
    Transform,
    /// A rule requires a human decision before the content may pass.
    Escalate { rule: Arc<str>, kind: FindingKind },
    /// The content must not pass.
    Block { rule: Arc<str>, kind: FindingKind },
}

/// The rule behind a blocking verdict, for the reply that ends the request or stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockingRule {
    pub rule: String,
    /// The finding kind's name, such as `topic` or `action`.
    pub kind: &'static str,
    /// The rule escalates (asks for approval) rather than denies.
    pub escalate: bool,
}

impl Verdict {
    /// Returns the rule behind a block or an escalation, or `None` when the content may
    /// pass.
    pub fn blocking_rule(&self) -> Option<BlockingRule> {
        let (rule, kind, escalate) = match self {
            Verdict::Block { rule, kind } => (rule, kind, false),
            Verdict::Escalate { rule, kind } => (rule, kind, true),
            Verdict::Allow | Verdict::Transform => return None,
        };
        Some(BlockingRule {
            rule: rule.to_string(),
            kind: kind.as_str(),
            escalate,
        })
    }

    fn severity(&self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Transform => 1,
            Verdict::Escalate { .. } => 2,
            Verdict::Block { .. } => 3,
        }
    }

    /// Keeps the more severe of the two; on a tie the earlier verdict stays, so the
    /// first blocking rule is the one reported.
    pub fn merge(&mut self, other: Verdict) {
        if other.severity() > self.severity() {
            *self = other;
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Transform => "transform",
            Verdict::Escalate { .. } => "escalate",
            Verdict::Block { .. } => "block",
        }
    }

    pub fn is_blocking(&self) -> bool {
        matches!(self, Verdict::Block { .. } | Verdict::Escalate { .. })
    }

    /// Returns the verdict an enforced finding implies.
    pub fn from_finding(finding: &Finding) -> Verdict {
        if !finding.is_enforced() {
            return Verdict::Allow;
        }
        match finding.outcome {
            Outcome::Allow => Verdict::Allow,
            Outcome::Block => Verdict::Block {
                rule: finding.rule.clone(),
                kind: finding.kind,
            },
            Outcome::Escalate => Verdict::Escalate {
                rule: finding.rule.clone(),
                kind: finding.kind,
            },
            Outcome::Redact
            | Outcome::Mask
            | Outcome::Hash
            | Outcome::Pseudonymize
            | Outcome::Removed => Verdict::Transform,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_most_severe() {
        let mut v = Verdict::Transform;
        v.merge(Verdict::Block {
            rule: Arc::from("a"),
            kind: FindingKind::Topic,
        });
        v.merge(Verdict::Escalate {
            rule: Arc::from("b"),
            kind: FindingKind::Action,
        });
        v.merge(Verdict::Block {
            rule: Arc::from("c"),
            kind: FindingKind::Pii,
        });
        assert_eq!(
            v,
            Verdict::Block {
                rule: Arc::from("a"),
                kind: FindingKind::Topic
            }
        );
    }
}
