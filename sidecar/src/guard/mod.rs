//! The guardrail engine: input, output and action checks over a compiled policy.
//!
//! The engine is transport-neutral. The proxy, the `check` command and later the gRPC API
//! hand it text parts and tool calls; it returns a verdict, the transformed text and the
//! findings. It never logs and never keeps the text it was given.

pub mod action;
pub mod partial;
pub mod pii;
pub mod topic;
pub mod verdict;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::policy::spec::{Decision, Direction, Mode, PiiAction};
use crate::policy::{PiiBinding, Policy};
use crate::state::SealedEntry;
use crate::state::escalation::{EscalationState, RequestEscalations};
use crate::state::vault::{PseudonymVault, pending_placeholder_len};
use pii::{HashKey, PiiMatch};
use topic::TopicMatch;
pub use verdict::{BlockingRule, Finding, FindingKind, Outcome, Verdict};

/// Separator placed between content parts before topic matching, so that a phrase split
/// across two parts is found while words at the seam stay apart.
const PART_SEPARATOR: &str = "\n";

/// The result of checking one piece of content made of one or more text parts.
#[derive(Debug)]
pub struct ContentCheck {
    pub verdict: Verdict,
    /// The rewritten text of each part, `None` where the part is unchanged.
    pub transformed: Vec<Option<String>>,
    pub findings: Vec<Finding>,
}

impl ContentCheck {
    /// Returns the text of part `index` after transformation.
    pub fn text<'a>(&'a self, index: usize, original: &'a str) -> &'a str {
        self.transformed
            .get(index)
            .and_then(Option::as_deref)
            .unwrap_or(original)
    }
}

/// Every raw match in a text, before transformation.
#[derive(Debug, Default)]
pub struct Scan {
    pub pii: Vec<PiiMatch>,
    pub topics: Vec<TopicMatch>,
}

impl Scan {
    /// Returns the earliest start of a match that begins before `at` and ends after it,
    /// if any. Releasing text up to `at` would cut that match in two.
    pub fn crossing(&self, at: usize) -> Option<usize> {
        let pii = self.pii.iter().map(|m| (m.start, m.end));
        let topics = self.topics.iter().map(|m| (m.start, m.end));
        pii.chain(topics)
            .filter(|(start, end)| *start < at && *end > at)
            .map(|(start, _)| start)
            .min()
    }
}

/// The result of checking one window of a text.
#[derive(Debug)]
pub struct WindowCheck {
    pub verdict: Verdict,
    /// The window's text after transformation.
    pub text: String,
    /// Findings with offsets into the whole text.
    pub findings: Vec<Finding>,
}

/// The result of checking one tool call.
#[derive(Debug)]
pub struct ActionCheck {
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

/// A policy plus the runtime secrets its transformations need, and for one request the
/// pseudonym vault of its conversation.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: Arc<Policy>,
    hash_key: Arc<HashKey>,
    /// Per-request vault; `pseudonymize` without one writes a `hash` token instead.
    vault: Option<Arc<Mutex<PseudonymVault>>>,
    /// Per-request escalations; without them an escalated call stays escalated.
    escalations: Option<Arc<RequestEscalations>>,
}

impl Guard {
    pub fn new(policy: Arc<Policy>, hash_key: Arc<HashKey>) -> Guard {
        Guard {
            policy,
            hash_key,
            vault: None,
            escalations: None,
        }
    }

    /// Returns a guard for one request whose `pseudonymize` rules write placeholders from
    /// `vault` and whose output restores them.
    pub fn with_vault(&self, vault: PseudonymVault) -> Guard {
        Guard {
            policy: self.policy.clone(),
            hash_key: self.hash_key.clone(),
            vault: Some(Arc::new(Mutex::new(vault))),
            escalations: self.escalations.clone(),
        }
    }

    /// Returns a guard for one request that decides escalated tool calls with
    /// `escalations`: allowed after approval, denied after denial, else raised there.
    pub fn with_escalations(&self, escalations: Arc<RequestEscalations>) -> Guard {
        Guard {
            escalations: Some(escalations),
            ..self.clone()
        }
    }

    /// Returns the request's escalations, when the guard has them.
    pub fn escalations(&self) -> Option<&Arc<RequestEscalations>> {
        self.escalations.as_ref()
    }

    fn vault(&self) -> Option<MutexGuard<'_, PseudonymVault>> {
        let vault = self.vault.as_ref()?;
        // A panic while the lock was held leaves a usable map, so poisoning is ignored.
        Some(
            vault
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Replaces the vault's placeholders in `text` with the original values.
    pub fn restore<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.vault() {
            Some(vault) => Cow::Owned(vault.restore(text).into_owned()),
            None => Cow::Borrowed(text),
        }
    }

    /// Like `restore`, for the inside of a JSON string literal or a whole JSON text
    /// whose placeholders all sit inside string literals (tool-call arguments).
    pub fn restore_json_string<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.vault() {
            Some(vault) => Cow::Owned(vault.restore_json_string(text).into_owned()),
            None => Cow::Borrowed(text),
        }
    }

    /// Returns how many trailing bytes of `text` a stream must hold back because they
    /// could start a placeholder that the next delta completes; 0 without a vault.
    pub fn pending_placeholder_len(&self, text: &str) -> usize {
        match &self.vault {
            Some(_) => pending_placeholder_len(text),
            None => 0,
        }
    }

    /// Replaces original values in the vault with their placeholders.
    pub fn conceal<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.vault() {
            Some(vault) => Cow::Owned(vault.conceal(text).into_owned()),
            None => Cow::Borrowed(text),
        }
    }

    /// Seals and returns the vault entries created since the last call.
    pub fn take_new_vault_entries(&self) -> Vec<SealedEntry> {
        self.vault()
            .map(|mut vault| vault.take_new_entries())
            .unwrap_or_default()
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Checks one piece of content (a message's text, given as its parts) in `direction`:
    /// denied topics on the joined parts, PII on each part.
    pub fn check_content(&self, direction: Direction, parts: &[&str]) -> ContentCheck {
        let mut findings = Vec::new();
        let mut verdict = Verdict::Allow;

        if !self.policy.topics.is_empty() {
            let mut matches = Vec::new();
            let joined = JoinedParts::new(parts);
            self.policy
                .topics
                .find(joined.text(), Some(direction), &mut matches);
            for m in matches {
                let rule = &self.policy.topics.rules()[m.rule];
                let finding =
                    joined.finding(m, rule.id.clone(), FindingKind::Topic, rule.mode, direction);
                verdict.merge(Verdict::from_finding(&finding));
                findings.push(finding);
            }
        }

        let mut transformed = vec![None; parts.len()];
        if let Some(scanner) = &self.policy.pii.scanner {
            let mut matches = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                matches.clear();
                scanner.scan(part, &mut matches);
                if matches.is_empty() {
                    continue;
                }
                transformed[index] = self.apply_pii(
                    direction,
                    Some(index),
                    part,
                    0..part.len(),
                    &matches,
                    &mut findings,
                    &mut verdict,
                );
            }
        }
        ContentCheck {
            verdict,
            transformed,
            findings,
        }
    }

    /// Checks whether the input is on one of the allowed topics. Returns the off-topic
    /// finding when the policy lists allowed topics and none matches.
    pub fn check_on_topic(&self, parts: &[&str]) -> Option<Finding> {
        let allowed = self.policy.allowed_topics.as_ref()?;
        let joined = JoinedParts::new(parts);
        if allowed.matches_any(joined.text()) {
            return None;
        }
        Some(Finding {
            rule: self.policy.off_topic_rule.clone(),
            kind: FindingKind::OffTopic,
            entity: None,
            outcome: Outcome::Block,
            mode: self.policy.off_topic_mode,
            direction: Direction::Input,
            part: None,
            start: None,
            end: None,
            tool: None,
            detail: None,
        })
    }

    /// Checks a tool call against the action rules. `arguments` is `None` when the call's
    /// arguments are not valid JSON; constraints then fail.
    pub fn check_action(
        &self,
        direction: Direction,
        tool: &str,
        arguments: Option<&Value>,
    ) -> ActionCheck {
        let mut verdict = Verdict::Allow;
        let mut findings = Vec::new();
        for outcome in self.policy.actions.evaluate(tool, arguments) {
            let mut mapped = match outcome.decision {
                Decision::Allow => Outcome::Allow,
                Decision::Deny => Outcome::Block,
                Decision::Escalate => Outcome::Escalate,
            };
            let mut detail = outcome.violation;
            if let (Outcome::Escalate, Mode::Enforce, Some(escalations)) =
                (mapped, outcome.mode, &self.escalations)
            {
                let (state, id) = escalations.decide(self, tool, arguments, &outcome.rule);
                (mapped, detail) = match state {
                    EscalationState::Approved => {
                        (Outcome::Allow, Some(format!("approved in escalation {id}")))
                    }
                    EscalationState::Denied => {
                        (Outcome::Block, Some(format!("denied in escalation {id}")))
                    }
                    EscalationState::Pending => (
                        Outcome::Escalate,
                        Some(format!("approval pending in escalation {id}")),
                    ),
                };
            }
            let finding = Finding {
                rule: outcome.rule,
                kind: FindingKind::Action,
                entity: None,
                outcome: mapped,
                mode: outcome.mode,
                direction,
                part: None,
                start: None,
                end: None,
                tool: Some(tool.to_owned()),
                detail,
            };
            verdict.merge(Verdict::from_finding(&finding));
            findings.push(finding);
        }
        ActionCheck { verdict, findings }
    }

    /// Returns the name of a PII entity, such as `EMAIL`.
    pub fn entity_name(&self, entity: pii::Entity) -> &str {
        match (&self.policy.pii.scanner, entity) {
            (Some(scanner), _) => scanner.entity_name(entity),
            (None, pii::Entity::Builtin(builtin)) => builtin.name(),
            // Without a scanner nothing matches, so no custom entity reaches here.
            (None, pii::Entity::Custom(_)) => "PII",
        }
    }

    /// Returns a keyed digest of `text` that identifies it without revealing it, such as
    /// the fingerprint of a tool call an escalation applies to.
    pub fn keyed_digest(&self, text: &str) -> String {
        self.hash_key.token("DIGEST", text)
    }

    /// Returns the rule that denies `tool` whatever its arguments, if any.
    pub fn tool_denied_outright(&self, tool: &str) -> Option<Arc<str>> {
        self.policy.actions.denied_outright(tool)
    }

    /// Applies the PII rules to the matches inside `window` and returns the window's
    /// rewritten text, or `None` when nothing in it changed. Findings keep offsets into
    /// `text`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one private helper shared by both entry points"
    )]
    fn apply_pii(
        &self,
        direction: Direction,
        part: Option<usize>,
        text: &str,
        window: Range<usize>,
        matches: &[PiiMatch],
        findings: &mut Vec<Finding>,
        verdict: &mut Verdict,
    ) -> Option<String> {
        let Some(scanner) = &self.policy.pii.scanner else {
            return None;
        };
        let mut output = String::with_capacity(window.len());
        let mut copied = window.start;
        let mut changed = false;
        for m in matches
            .iter()
            .filter(|m| m.start >= window.start && m.end <= window.end)
        {
            let Some(binding) = self.policy.pii.bindings.get(&m.entity) else {
                continue;
            };
            let action = match direction {
                Direction::Input => binding.input,
                Direction::Output => binding.output,
            };
            if action == PiiAction::Allow {
                continue;
            }
            let entity_name = scanner.entity_name(m.entity);
            let outcome = match action {
                PiiAction::Block => Outcome::Block,
                PiiAction::Redact => Outcome::Redact,
                PiiAction::Mask => Outcome::Mask,
                PiiAction::Hash => Outcome::Hash,
                PiiAction::Pseudonymize => Outcome::Pseudonymize,
                PiiAction::Allow => Outcome::Allow,
            };
            let finding = Finding {
                rule: binding.rule.clone(),
                kind: FindingKind::Pii,
                entity: Some(Arc::from(entity_name)),
                outcome,
                mode: binding.mode,
                direction,
                part,
                start: Some(m.start),
                end: Some(m.end),
                tool: None,
                detail: None,
            };
            verdict.merge(Verdict::from_finding(&finding));
            findings.push(finding);

            if binding.mode == Mode::Monitor || action == PiiAction::Block {
                continue;
            }
            let value = &text[m.start..m.end];
            output.push_str(&text[copied..m.start]);
            output.push_str(&self.replacement(binding, action, entity_name, value));
            copied = m.end;
            changed = true;
        }
        if !changed {
            return None;
        }
        output.push_str(&text[copied..window.end]);
        Some(output)
    }

    /// Finds every PII and topic match in `text` without transforming anything; the
    /// streaming guard scans its buffer once and decides what to release from this.
    pub fn scan(&self, direction: Direction, text: &str) -> Scan {
        let mut scan = Scan::default();
        if let Some(scanner) = &self.policy.pii.scanner {
            scanner.scan(text, &mut scan.pii);
        }
        if !self.policy.topics.is_empty() {
            self.policy
                .topics
                .find(text, Some(direction), &mut scan.topics);
        }
        scan
    }

    /// Returns how many trailing bytes of `text` could still become part of a PII or
    /// topic match once more text arrives, on a character boundary.
    pub fn hold_back_len(&self, direction: Direction, text: &str) -> usize {
        let pii = self
            .policy
            .pii
            .scanner
            .as_ref()
            .map_or(0, |scanner| scanner.pending_tail_len(text));
        let topics = self.policy.topics.pending_tail_len(text, direction);
        pii.max(topics)
    }

    /// Checks the matches of `scan` that lie inside `window` of `text` and returns the
    /// window's text after transformation. Matches outside the window are the caller's
    /// concern: before it they were reported earlier, after it they are not complete.
    pub fn check_window(
        &self,
        direction: Direction,
        text: &str,
        window: Range<usize>,
        scan: &Scan,
    ) -> WindowCheck {
        let mut findings = Vec::new();
        let mut verdict = Verdict::Allow;
        for m in scan
            .topics
            .iter()
            .filter(|m| m.start >= window.start && m.end <= window.end)
        {
            let rule = &self.policy.topics.rules()[m.rule];
            let finding = Finding {
                rule: rule.id.clone(),
                kind: FindingKind::Topic,
                entity: None,
                outcome: Outcome::Block,
                mode: rule.mode,
                direction,
                part: None,
                start: Some(m.start),
                end: Some(m.end),
                tool: None,
                detail: None,
            };
            verdict.merge(Verdict::from_finding(&finding));
            findings.push(finding);
        }
        let transformed = self.apply_pii(
            direction,
            None,
            text,
            window.clone(),
            &scan.pii,
            &mut findings,
            &mut verdict,
        );
        WindowCheck {
            verdict,
            text: transformed.unwrap_or_else(|| text[window].to_owned()),
            findings,
        }
    }

    fn replacement(
        &self,
        binding: &PiiBinding,
        action: PiiAction,
        entity_name: &str,
        value: &str,
    ) -> String {
        match action {
            PiiAction::Mask => pii::mask(value, binding.mask_keep, binding.mask_char),
            PiiAction::Pseudonymize => match self.vault() {
                Some(mut vault) => vault.pseudonym(entity_name, value),
                None => self.hash_key.token(entity_name, value),
            },
            PiiAction::Hash => self.hash_key.token(entity_name, value),
            PiiAction::Redact | PiiAction::Block | PiiAction::Allow => {
                pii::redact_placeholder(entity_name)
            }
        }
    }
}

/// Parts joined with `PART_SEPARATOR`, with the map from joined offsets back to parts.
struct JoinedParts<'a> {
    joined: Cow<'a, str>,
    /// Start offset of each part in the joined text.
    starts: Vec<usize>,
    lengths: Vec<usize>,
}

impl<'a> JoinedParts<'a> {
    fn new(parts: &[&'a str]) -> Self {
        let lengths = parts.iter().map(|p| p.len()).collect();
        if let [single] = parts {
            return JoinedParts {
                joined: Cow::Borrowed(single),
                starts: vec![0],
                lengths,
            };
        }
        let mut joined = String::new();
        let mut starts = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                joined.push_str(PART_SEPARATOR);
            }
            starts.push(joined.len());
            joined.push_str(part);
        }
        JoinedParts {
            joined: Cow::Owned(joined),
            starts,
            lengths,
        }
    }

    fn text(&self) -> &str {
        &self.joined
    }

    /// Builds a finding for a match in the joined text, attributed to the part it starts
    /// in, with its end clamped to that part.
    fn finding(
        &self,
        m: TopicMatch,
        rule: Arc<str>,
        kind: FindingKind,
        mode: Mode,
        direction: Direction,
    ) -> Finding {
        let part = self
            .starts
            .iter()
            .rposition(|&start| start <= m.start)
            .unwrap_or(0);
        let part_start = self.starts.get(part).copied().unwrap_or(0);
        let part_len = self.lengths.get(part).copied().unwrap_or(0);
        let start = (m.start - part_start).min(part_len);
        let end = (m.end - part_start).min(part_len);
        Finding {
            rule,
            kind,
            entity: None,
            outcome: Outcome::Block,
            mode,
            direction,
            part: Some(part),
            start: Some(start),
            end: Some(end),
            tool: None,
            detail: None,
        }
    }
}
