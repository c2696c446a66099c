//! Action (tool call) rules: decisions by tool name and constraints on arguments.
//!
//! Rules are evaluated in order. A rule in `monitor` mode that matches is recorded and
//! evaluation goes on; the first matching `enforce` rule decides. A tool no enforce rule
//! names gets the policy's default decision.

use std::sync::Arc;

use globset::GlobMatcher;
use regex::Regex;
use serde_json::Value;

use crate::policy::spec::{Decision, Mode};

/// A compiled argument constraint.
#[derive(Debug)]
pub struct Constraint {
    pub pointer: String,
    pub required: bool,
    pub pattern: Option<Regex>,
    pub one_of: Option<Vec<Value>>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_length: Option<usize>,
}

impl Constraint {
    /// Returns why `arguments` violate this constraint, or `None`. The reason names the
    /// pointer and the limit, never the value, because arguments may carry PII.
    fn violation(&self, arguments: Option<&Value>) -> Option<String> {
        let pointer = &self.pointer;
        let Some(arguments) = arguments else {
            return Some(format!(
                "arguments are not a JSON object, so {pointer} cannot be checked"
            ));
        };
        let Some(value) = arguments.pointer(pointer) else {
            return self
                .required
                .then(|| format!("required argument {pointer} is missing"));
        };
        if let Some(allowed) = &self.one_of
            && !allowed.iter().any(|a| json_equal(a, value))
        {
            return Some(format!(
                "argument {pointer} is not one of the allowed values"
            ));
        }
        if self.min.is_some() || self.max.is_some() {
            let Some(number) = value.as_f64() else {
                return Some(format!("argument {pointer} must be a number"));
            };
            if let Some(min) = self.min
                && number < min
            {
                return Some(format!("argument {pointer} is below the minimum {min}"));
            }
            if let Some(max) = self.max
                && number > max
            {
                return Some(format!("argument {pointer} is above the maximum {max}"));
            }
        }
        if self.pattern.is_some() || self.max_length.is_some() {
            let Some(text) = value.as_str() else {
                return Some(format!("argument {pointer} must be a string"));
            };
            if let Some(max_length) = self.max_length
                && text.chars().count() > max_length
            {
                return Some(format!(
                    "argument {pointer} is longer than {max_length} characters"
                ));
            }
            if let Some(pattern) = &self.pattern
                && !pattern.is_match(text)
            {
                return Some(format!(
                    "argument {pointer} does not match the required pattern"
                ));
            }
        }
        None
    }
}

/// Numbers compare by value so that `100` in YAML equals `100.0` in a tool call.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A compiled action rule.
#[derive(Debug)]
pub struct ActionRule {
    pub id: Arc<str>,
    pub mode: Mode,
    pub tools: Vec<GlobMatcher>,
    pub decision: Decision,
    pub constraints: Vec<Constraint>,
}

impl ActionRule {
    fn names(&self, tool: &str) -> bool {
        self.tools.iter().any(|glob| glob.is_match(tool))
    }
}

/// What one rule decided about one call.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionOutcome {
    pub rule: Arc<str>,
    pub mode: Mode,
    pub decision: Decision,
    /// Set when an argument constraint turned the rule's decision into `deny`.
    pub violation: Option<String>,
}

/// The compiled action section of a policy.
#[derive(Debug)]
pub struct ActionPolicy {
    pub default: Decision,
    pub default_rule: Arc<str>,
    pub rules: Vec<ActionRule>,
}

impl ActionPolicy {
    /// Evaluates a call. Returns the outcomes of matching monitor rules followed by the
    /// deciding outcome, which is always last.
    pub fn evaluate(&self, tool: &str, arguments: Option<&Value>) -> Vec<ActionOutcome> {
        let mut outcomes = Vec::new();
        for rule in self.rules.iter().filter(|r| r.names(tool)) {
            let violation = rule.constraints.iter().find_map(|c| c.violation(arguments));
            let decision = if violation.is_some() {
                Decision::Deny
            } else {
                rule.decision
            };
            outcomes.push(ActionOutcome {
                rule: rule.id.clone(),
                mode: rule.mode,
                decision,
                violation,
            });
            if rule.mode == Mode::Enforce {
                return outcomes;
            }
        }
        outcomes.push(ActionOutcome {
            rule: self.default_rule.clone(),
            mode: Mode::Enforce,
            decision: self.default,
            violation: None,
        });
        outcomes
    }

    /// Returns the enforce rule that denies `tool` whatever its arguments, if any: such a
    /// tool is removed from the tools a request offers to the model.
    pub fn denied_outright(&self, tool: &str) -> Option<Arc<str>> {
        for rule in self.rules.iter().filter(|r| r.names(tool)) {
            if rule.mode == Mode::Monitor {
                continue;
            }
            let denies = rule.decision == Decision::Deny && rule.constraints.is_empty();
            return denies.then(|| rule.id.clone());
        }
        (self.default == Decision::Deny).then(|| self.default_rule.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn glob(pattern: &str) -> GlobMatcher {
        globset::Glob::new(pattern)
            .expect("valid glob")
            .compile_matcher()
    }

    fn constraint(pointer: &str) -> Constraint {
        Constraint {
            pointer: pointer.to_owned(),
            required: false,
            pattern: None,
            one_of: None,
            min: None,
            max: None,
            max_length: None,
        }
    }

    fn policy() -> ActionPolicy {
        ActionPolicy {
            default: Decision::Allow,
            default_rule: Arc::from("actions-default"),
            rules: vec![
                ActionRule {
                    id: Arc::from("watch-exports"),
                    mode: Mode::Monitor,
                    tools: vec![glob("export_*")],
                    decision: Decision::Deny,
                    constraints: vec![],
                },
                ActionRule {
                    id: Arc::from("no-deletes"),
                    mode: Mode::Enforce,
                    tools: vec![glob("delete_*")],
                    decision: Decision::Deny,
                    constraints: vec![],
                },
                ActionRule {
                    id: Arc::from("refund-limit"),
                    mode: Mode::Enforce,
                    tools: vec![glob("refund_order")],
                    decision: Decision::Allow,
                    constraints: vec![Constraint {
                        max: Some(100.0),
                        required: true,
                        ..constraint("/amount")
                    }],
                },
                ActionRule {
                    id: Arc::from("wire-review"),
                    mode: Mode::Enforce,
                    tools: vec![glob("wire_transfer")],
                    decision: Decision::Escalate,
                    constraints: vec![Constraint {
                        one_of: Some(vec![json!("EUR"), json!("USD")]),
                        ..constraint("/currency")
                    }],
                },
            ],
        }
    }

    fn last(outcomes: Vec<ActionOutcome>) -> ActionOutcome {
        outcomes.into_iter().last().expect("always one outcome")
    }

    #[test]
    fn glob_rule_denies() {
        let outcome = last(policy().evaluate("delete_user", Some(&json!({}))));
        assert_eq!(outcome.rule.as_ref(), "no-deletes");
        assert_eq!(outcome.decision, Decision::Deny);
    }

    #[test]
    fn unnamed_tool_gets_default() {
        let outcome = last(policy().evaluate("get_weather", None));
        assert_eq!(outcome.rule.as_ref(), "actions-default");
        assert_eq!(outcome.decision, Decision::Allow);
    }

    #[test]
    fn max_constraint_denies_above_limit() {
        let p = policy();
        let over = last(p.evaluate("refund_order", Some(&json!({"amount": 500}))));
        assert_eq!(over.decision, Decision::Deny);
        assert!(
            over.violation
                .as_deref()
                .is_some_and(|v| v.contains("maximum 100"))
        );
        let under = last(p.evaluate("refund_order", Some(&json!({"amount": 50}))));
        assert_eq!(under.decision, Decision::Allow);
    }

    #[test]
    fn required_argument_missing_denies() {
        let outcome = last(policy().evaluate("refund_order", Some(&json!({}))));
        assert_eq!(outcome.decision, Decision::Deny);
    }

    #[test]
    fn non_numeric_value_violates_max() {
        let outcome = last(policy().evaluate("refund_order", Some(&json!({"amount": "9"}))));
        assert_eq!(outcome.decision, Decision::Deny);
    }

    #[test]
    fn enum_constraint_keeps_escalation() {
        let p = policy();
        let ok = last(p.evaluate("wire_transfer", Some(&json!({"currency": "EUR"}))));
        assert_eq!(ok.decision, Decision::Escalate);
        let bad = last(p.evaluate("wire_transfer", Some(&json!({"currency": "BTC"}))));
        assert_eq!(bad.decision, Decision::Deny);
    }

    #[test]
    fn monitor_rule_is_recorded_and_passes_through() {
        let outcomes = policy().evaluate("export_all", None);
        assert_eq!(outcomes.len(), 2);
        assert_eq!(outcomes[0].mode, Mode::Monitor);
        assert_eq!(outcomes[0].decision, Decision::Deny);
        assert_eq!(outcomes[1].decision, Decision::Allow);
    }

    #[test]
    fn denied_outright_ignores_constrained_rules() {
        let p = policy();
        assert_eq!(
            p.denied_outright("delete_user").as_deref(),
            Some("no-deletes")
        );
        assert_eq!(p.denied_outright("refund_order"), None);
        assert_eq!(p.denied_outright("export_all"), None);
    }
}
