//! Semantic validation and compilation of a parsed policy.
//!
//! Every check runs even after an earlier one failed, so the author sees all problems in
//! one pass; nothing is compiled into a `Policy` unless the whole document is valid.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use regex::{Regex, RegexBuilder};

use super::spec::{self, Direction, GuardrailPolicy};
use super::{
    DEFAULT_REFUSAL, PiiBinding, PiiPolicy, Policy, PolicyError, PolicyErrors, PolicyIdentity,
};
use crate::guard::action::{ActionPolicy, ActionRule, Constraint};
use crate::guard::pii::{BuiltinEntity, CustomEntity, Entity, Scanner};
use crate::guard::topic::{TopicDefinition, TopicRule, TopicSet, normalize_phrase};

/// Rule id reported when `actions.default` decides and the policy names no id for it.
pub const DEFAULT_ACTION_RULE_ID: &str = "actions-default";
/// Upper bound on a compiled regex, so a policy cannot make the sidecar build a huge
/// automaton; 1 MiB fits thousands of ordinary patterns.
const REGEX_SIZE_LIMIT_BYTES: usize = 1 << 20;
/// Maximum rule id length; ids are Prometheus label values and log fields.
const MAX_RULE_ID_LEN: usize = 63;

struct Errors {
    source: String,
    list: Vec<PolicyError>,
}

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(PolicyError {
            source: self.source.clone(),
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates `document` and compiles it.
pub fn compile(
    document: &GuardrailPolicy,
    identity: PolicyIdentity,
) -> Result<Policy, PolicyErrors> {
    let mut errors = Errors {
        source: identity.source.clone(),
        list: Vec::new(),
    };
    let spec = &document.spec;
    check_name(&document.metadata.name, &mut errors);

    let mut ids = RuleIds::default();
    let refusal = match &spec.on_block.refusal {
        Some(text) if text.trim().is_empty() => {
            errors.push(
                "spec.onBlock.refusal",
                "must not be empty; omit it to use the default refusal",
            );
            String::new()
        }
        Some(text) => text.clone(),
        None => DEFAULT_REFUSAL.to_owned(),
    };

    let topics = compile_topics(&spec.topics, "spec.topics", false, &mut ids, &mut errors);
    let allowed_topics = if spec.allowed_topics.is_empty() {
        None
    } else {
        compile_topics(
            &spec.allowed_topics,
            "spec.allowedTopics",
            true,
            &mut ids,
            &mut errors,
        )
    };
    if !spec.allowed_topics.is_empty() {
        ids.claim(&spec.off_topic.id, "spec.offTopic.id", &mut errors);
    }
    let actions = compile_actions(&spec.actions, &mut ids, &mut errors);
    let pii = compile_pii(spec, &mut ids, &mut errors);
    let mut section_errors = Vec::new();
    let context = super::conversation::compile_context(spec.context.as_ref(), &mut section_errors);
    let conversation =
        super::conversation::compile_conversation(spec.conversation.as_ref(), &mut section_errors);
    for (path, message) in section_errors {
        errors.push(path, message);
    }
    check_stream_bounds(spec, &mut errors);

    let (Some(topics), Some(pii), true) = (topics, pii, errors.list.is_empty()) else {
        return Err(PolicyErrors(errors.list));
    };
    let rule_count = ids.seen.len();
    Ok(Policy {
        identity,
        on_block: spec.on_block.response,
        refusal,
        topics,
        allowed_topics,
        off_topic_rule: Arc::from(spec.off_topic.id.as_str()),
        off_topic_mode: spec.off_topic.mode,
        actions,
        pii,
        stream: spec.stream.clone(),
        thinking: spec.thinking.clone(),
        rule_count,
        context,
        conversation,
    })
}

/// Maximum `stream.maxHoldBackBytes` accepted, because a stream keeps up to this much
/// text per channel in memory.
const MAX_HOLD_BACK_LIMIT_BYTES: usize = 1024 * 1024;

/// Checks that every rule the streaming guard runs on output has a bounded longest match
/// that fits in `stream.maxHoldBackBytes`, because the guard must hold back a partial match
/// until it is complete. Monitor mode holds nothing back, so it needs no bound.
fn check_stream_bounds(spec: &spec::Spec, errors: &mut Errors) {
    let limit = spec.stream.max_hold_back_bytes;
    if limit == 0 || limit > MAX_HOLD_BACK_LIMIT_BYTES {
        errors.push(
            "spec.stream.maxHoldBackBytes",
            format!("must be between 1 and {MAX_HOLD_BACK_LIMIT_BYTES}, found {limit}"),
        );
        return;
    }
    if spec.stream.mode == spec::StreamGuardMode::Monitor {
        return;
    }
    let fix = "bound its repetitions (such as \\w{1,40} instead of \\w+), raise \
               spec.stream.maxHoldBackBytes, or set spec.stream.mode: monitor";
    let check = |errors: &mut Errors, path: String, pattern: &str, case_insensitive: bool| {
        match crate::guard::topic::pattern_max_len(pattern, case_insensitive) {
            // An invalid pattern is reported where it is compiled.
            None if regex_syntax::parse(pattern).is_err() => {}
            None => errors.push(
                path,
                format!("can match text of any length, so a stream cannot hold back a partial match; {fix}"),
            ),
            Some(max) if max > limit => errors.push(
                path,
                format!(
                    "can match up to {max} bytes, more than spec.stream.maxHoldBackBytes ({limit}); {fix}"
                ),
            ),
            Some(_) => {}
        }
    };
    for (i, topic) in spec.topics.iter().enumerate() {
        let output = topic
            .applies_to
            .as_ref()
            .is_none_or(|list| list.contains(&Direction::Output));
        if !output {
            continue;
        }
        for (j, pattern) in topic.patterns.iter().enumerate() {
            check(
                errors,
                format!("spec.topics[{i}].patterns[{j}]"),
                pattern,
                true,
            );
        }
        for (j, phrase) in topic.phrases.iter().enumerate() {
            if phrase.len() > limit {
                errors.push(
                    format!("spec.topics[{i}].phrases[{j}]"),
                    format!(
                        "is {} bytes, more than spec.stream.maxHoldBackBytes ({limit})",
                        phrase.len()
                    ),
                );
            }
        }
    }
    for (i, entity) in spec.custom_entities.iter().enumerate() {
        check(
            errors,
            format!("spec.customEntities[{i}].pattern"),
            &entity.pattern,
            false,
        );
    }
}

fn check_name(name: &str, errors: &mut Errors) {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !valid {
        errors.push(
            "metadata.name",
            format!(
                "invalid name {name:?}; use a Kubernetes object name: lower-case letters, \
                 digits, '-' and '.', starting and ending with a letter or digit"
            ),
        );
    }
}

/// Rule ids seen so far; ids must be unique across every section because metrics and
/// logs identify a rule by its id alone.
#[derive(Default)]
struct RuleIds {
    seen: HashMap<String, String>,
}

impl RuleIds {
    fn claim(&mut self, id: &str, path: &str, errors: &mut Errors) {
        let valid = !id.is_empty()
            && id.len() <= MAX_RULE_ID_LEN
            && id.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
            && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if !valid {
            errors.push(
                path,
                format!(
                    "invalid rule id {id:?}; use 1 to {MAX_RULE_ID_LEN} lower-case letters, \
                     digits, '-', '_' or '.', starting with a letter or digit"
                ),
            );
            return;
        }
        if let Some(first) = self.seen.get(id) {
            errors.push(
                path,
                format!("duplicate rule id {id:?}, first used at {first}"),
            );
            return;
        }
        self.seen.insert(id.to_owned(), path.to_owned());
    }
}

fn compile_regex(pattern: &str, case_insensitive: bool) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT_BYTES)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))
}

fn compile_topics(
    topics: &[spec::Topic],
    section: &str,
    allowed_list: bool,
    ids: &mut RuleIds,
    errors: &mut Errors,
) -> Option<TopicSet> {
    let before = errors.list.len();
    let mut definitions = Vec::with_capacity(topics.len());
    for (i, topic) in topics.iter().enumerate() {
        let path = format!("{section}[{i}]");
        ids.claim(&topic.id, &format!("{path}.id"), errors);
        if topic.phrases.is_empty() && topic.patterns.is_empty() {
            errors.push(path.clone(), "a topic needs at least one phrase or pattern");
        }
        for (j, phrase) in topic.phrases.iter().enumerate() {
            if normalize_phrase(phrase).is_empty() {
                errors.push(format!("{path}.phrases[{j}]"), "phrase must not be empty");
            }
        }
        let mut patterns = Vec::new();
        for (j, pattern) in topic.patterns.iter().enumerate() {
            match compile_regex(pattern, true) {
                Ok(regex) => patterns.push(regex),
                Err(message) => errors.push(format!("{path}.patterns[{j}]"), message),
            }
        }
        let (input, output) = match (&topic.applies_to, allowed_list) {
            (Some(_), true) => {
                errors.push(
                    format!("{path}.appliesTo"),
                    "allowed topics are checked on input only; remove appliesTo",
                );
                (true, false)
            }
            (None, true) => (true, false),
            (None, false) => (true, true),
            (Some(list), false) => {
                if list.is_empty() {
                    errors.push(
                        format!("{path}.appliesTo"),
                        "must list input, output or both; omit it for both",
                    );
                }
                (
                    list.contains(&Direction::Input),
                    list.contains(&Direction::Output),
                )
            }
        };
        definitions.push(TopicDefinition {
            rule: TopicRule {
                id: Arc::from(topic.id.as_str()),
                mode: topic.mode,
                input,
                output,
            },
            phrases: topic.phrases.clone(),
            patterns,
        });
    }
    if errors.list.len() > before {
        return None;
    }
    match TopicSet::new(definitions) {
        Ok(set) => Some(set),
        Err(e) => {
            errors.push(section, format!("cannot compile topics: {e}"));
            None
        }
    }
}

fn compile_actions(
    actions: &spec::Actions,
    ids: &mut RuleIds,
    errors: &mut Errors,
) -> ActionPolicy {
    let default_rule = actions
        .default_rule_id
        .clone()
        .unwrap_or_else(|| DEFAULT_ACTION_RULE_ID.to_owned());
    ids.claim(&default_rule, "spec.actions.defaultRuleId", errors);

    let mut rules = Vec::with_capacity(actions.rules.len());
    for (i, rule) in actions.rules.iter().enumerate() {
        let path = format!("spec.actions.rules[{i}]");
        ids.claim(&rule.id, &format!("{path}.id"), errors);
        if rule.tools.is_empty() {
            errors.push(
                format!("{path}.tools"),
                "list at least one tool name or glob",
            );
        }
        let mut tools = Vec::with_capacity(rule.tools.len());
        for (j, tool) in rule.tools.iter().enumerate() {
            match globset::GlobBuilder::new(tool)
                .literal_separator(false)
                .build()
            {
                Ok(glob) if !tool.is_empty() => tools.push(glob.compile_matcher()),
                Ok(_) => errors.push(format!("{path}.tools[{j}]"), "tool name must not be empty"),
                Err(e) => errors.push(format!("{path}.tools[{j}]"), format!("invalid glob: {e}")),
            }
        }
        let mut constraints = Vec::with_capacity(rule.arguments.len());
        for (j, argument) in rule.arguments.iter().enumerate() {
            let path = format!("{path}.arguments[{j}]");
            if let Some(constraint) = compile_constraint(argument, &path, errors) {
                constraints.push(constraint);
            }
        }
        rules.push(ActionRule {
            id: Arc::from(rule.id.as_str()),
            mode: rule.mode,
            tools,
            decision: rule.decision,
            constraints,
        });
    }
    ActionPolicy {
        default: actions.default,
        default_rule: Arc::from(default_rule.as_str()),
        rules,
    }
}

fn compile_constraint(
    argument: &spec::ArgumentConstraint,
    path: &str,
    errors: &mut Errors,
) -> Option<Constraint> {
    let before = errors.list.len();
    if !(argument.pointer.is_empty() || argument.pointer.starts_with('/')) {
        errors.push(
            format!("{path}.pointer"),
            format!(
                "invalid JSON Pointer {:?}; it must start with '/', such as /amount",
                argument.pointer
            ),
        );
    }
    let has_check = argument.required
        || argument.pattern.is_some()
        || argument.one_of.is_some()
        || argument.min.is_some()
        || argument.max.is_some()
        || argument.max_length.is_some();
    if !has_check {
        errors.push(
            path,
            "set at least one of required, pattern, enum, min, max or maxLength",
        );
    }
    for (name, value) in [("min", argument.min), ("max", argument.max)] {
        if value.is_some_and(|v| !v.is_finite()) {
            errors.push(format!("{path}.{name}"), "must be a finite number");
        }
    }
    if let (Some(min), Some(max)) = (argument.min, argument.max)
        && min > max
    {
        errors.push(path, format!("min {min} is greater than max {max}"));
    }
    if argument.one_of.as_ref().is_some_and(Vec::is_empty) {
        errors.push(format!("{path}.enum"), "must list at least one value");
    }
    let pattern = match &argument.pattern {
        Some(p) => match compile_regex(p, false) {
            Ok(regex) => Some(regex),
            Err(message) => {
                errors.push(format!("{path}.pattern"), message);
                None
            }
        },
        None => None,
    };
    if errors.list.len() > before {
        return None;
    }
    Some(Constraint {
        pointer: argument.pointer.clone(),
        required: argument.required,
        pattern,
        one_of: argument.one_of.clone(),
        min: argument.min,
        max: argument.max,
        max_length: argument.max_length,
    })
}

fn compile_pii(spec: &spec::Spec, ids: &mut RuleIds, errors: &mut Errors) -> Option<PiiPolicy> {
    let before = errors.list.len();
    let mut custom = Vec::with_capacity(spec.custom_entities.len());
    let mut custom_index: HashMap<&str, u16> = HashMap::new();
    for (i, entity) in spec.custom_entities.iter().enumerate() {
        let path = format!("spec.customEntities[{i}]");
        let name = entity.name.as_str();
        let valid_name = name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            errors.push(
                format!("{path}.name"),
                format!("invalid entity name {name:?}; use upper-case letters, digits and '_', such as EMPLOYEE_ID"),
            );
        } else if BuiltinEntity::from_name(name).is_some() {
            errors.push(
                format!("{path}.name"),
                format!("{name} is a built-in entity; choose another name"),
            );
        } else if custom_index.contains_key(name) {
            errors.push(
                format!("{path}.name"),
                format!("duplicate entity name {name}"),
            );
        } else {
            let Ok(index) = u16::try_from(custom.len()) else {
                errors.push(path, "too many custom entities; at most 65535 are allowed");
                continue;
            };
            custom_index.insert(name, index);
        }
        if let Err(message) = compile_regex(&entity.pattern, false) {
            errors.push(format!("{path}.pattern"), message);
        }
        for (j, word) in entity.context_words.iter().enumerate() {
            if word.trim().is_empty() {
                errors.push(format!("{path}.contextWords[{j}]"), "must not be empty");
            }
        }
        custom.push(CustomEntity {
            name: entity.name.clone(),
            pattern: entity.pattern.clone(),
            context_words: entity.context_words.clone(),
        });
    }

    let mut bindings: HashMap<Entity, Arc<PiiBinding>> = HashMap::new();
    let mut owner: HashMap<Entity, String> = HashMap::new();
    let mut builtins: HashSet<BuiltinEntity> = HashSet::new();
    for (i, rule) in spec.pii.iter().enumerate() {
        let path = format!("spec.pii[{i}]");
        ids.claim(&rule.id, &format!("{path}.id"), errors);
        if rule.entities.is_empty() {
            errors.push(format!("{path}.entities"), "list at least one entity");
        }
        let binding = Arc::new(PiiBinding {
            rule: Arc::from(rule.id.as_str()),
            mode: rule.mode,
            input: rule.input,
            output: rule.output,
            mask_keep: rule.mask_keep,
            mask_char: rule.mask_char,
        });
        for (j, name) in rule.entities.iter().enumerate() {
            let entity = if let Some(builtin) = BuiltinEntity::from_name(name) {
                builtins.insert(builtin);
                Entity::Builtin(builtin)
            } else if let Some(index) = custom_index.get(name.as_str()) {
                Entity::Custom(*index)
            } else {
                let known: Vec<&str> = BuiltinEntity::ALL.iter().map(|e| e.name()).collect();
                errors.push(
                    format!("{path}.entities[{j}]"),
                    format!(
                        "unknown entity {name:?}; built-in entities are {} and custom ones are \
                         defined in spec.customEntities",
                        known.join(", ")
                    ),
                );
                continue;
            };
            if let Some(first) = owner.get(&entity) {
                errors.push(
                    format!("{path}.entities[{j}]"),
                    format!(
                        "{name} is already handled by rule {first:?}; an entity belongs to one rule"
                    ),
                );
                continue;
            }
            owner.insert(entity, rule.id.clone());
            bindings.insert(entity, binding.clone());
        }
    }
    if errors.list.len() > before {
        return None;
    }

    let scanner = if bindings.is_empty() {
        None
    } else {
        let mut builtins: Vec<BuiltinEntity> = builtins.into_iter().collect();
        builtins.sort();
        match Scanner::new(&builtins, &custom) {
            Ok(scanner) => Some(scanner),
            Err(e) => {
                errors.push(
                    "spec.customEntities",
                    format!("cannot build the PII scanner: {e}"),
                );
                return None;
            }
        }
    };
    Some(PiiPolicy { scanner, bindings })
}

#[cfg(test)]
mod tests {
    use crate::policy::load::{PolicySource, parse_sources};

    fn compile(spec_yaml: &str) -> Result<super::Policy, super::PolicyErrors> {
        let text = format!(
            "apiVersion: agent-sidecar.io/v1alpha1\nkind: GuardrailPolicy\nmetadata: {{name: t}}\nspec:\n{spec_yaml}"
        );
        let sources = [PolicySource {
            name: "t.yaml".to_owned(),
            text: text.clone(),
        }];
        let (document, _) = parse_sources(&sources)?;
        super::compile(
            &document,
            super::PolicyIdentity {
                name: "t".to_owned(),
                generation: None,
                hash: String::new(),
                source: "t.yaml".to_owned(),
            },
        )
    }

    fn messages(spec_yaml: &str) -> Vec<String> {
        compile(spec_yaml)
            .expect_err("policy should be invalid")
            .0
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn valid_policy_compiles() {
        let policy = compile(
            "  topics:\n    - {id: a, phrases: [x]}\n  pii:\n    - {id: b, entities: [EMAIL], input: redact, output: mask}\n",
        )
        .expect("valid");
        assert_eq!(
            policy.rule_count, 3,
            "two rules plus the default action rule"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let errors = messages(
            r#"  topics:
    - {id: a, phrases: [x], patterns: ['(unclosed']}
    - {id: a, phrases: ["  "]}
  actions:
    rules:
      - {id: r, tools: ["[bad"], decision: deny, arguments: [{pointer: amount, min: 5, max: 1}]}
  pii:
    - {id: p, entities: [EMAIL, PASSPORT], input: pseudonymize, output: redact}
    - {id: q, entities: [EMAIL], input: redact, output: redact}
"#,
        );
        let joined = errors.join("\n");
        for expected in [
            "spec.topics[0].patterns[0]: invalid regular expression",
            "spec.topics[1].id: duplicate rule id \"a\"",
            "spec.topics[1].phrases[0]: phrase must not be empty",
            "spec.actions.rules[0].tools[0]: invalid glob",
            "spec.actions.rules[0].arguments[0].pointer: invalid JSON Pointer",
            "spec.actions.rules[0].arguments[0]: min 5 is greater than max 1",
            "spec.pii[0].entities[1]: unknown entity \"PASSPORT\"",
            "spec.pii[1].entities[0]: EMAIL is already handled by rule \"p\"",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        assert_eq!(errors.len(), 8, "{joined}");
    }

    #[test]
    fn custom_entity_errors_name_the_field() {
        let errors = messages(
            "  customEntities:\n    - {name: employee-id, pattern: 'EMP-\\d{6}'}\n    - {name: EMAIL, pattern: '('}\n",
        );
        let joined = errors.join("\n");
        assert!(
            joined.contains("spec.customEntities[0].name: invalid entity name"),
            "{joined}"
        );
        assert!(
            joined.contains("spec.customEntities[1].name: EMAIL is a built-in"),
            "{joined}"
        );
        assert!(
            joined.contains("spec.customEntities[1].pattern: invalid regular"),
            "{joined}"
        );
    }

    #[test]
    fn allowed_topics_reject_applies_to() {
        let errors = messages(
            "  allowedTopics:\n    - {id: billing, phrases: [invoice], appliesTo: [output]}\n",
        );
        assert!(errors[0].contains("input only"), "{errors:?}");
    }

    #[test]
    fn unbounded_output_pattern_is_rejected() {
        let errors = messages(
            "  topics:\n    - {id: t, patterns: ['secret \\w+']}\n    - {id: u, appliesTo: [input], patterns: ['\\w+']}\n",
        );
        assert_eq!(
            errors.len(),
            1,
            "input-only rules need no bound: {errors:?}"
        );
        assert!(
            errors[0].starts_with("spec.topics[0].patterns[0]: can match text of any length"),
            "{errors:?}"
        );
    }

    #[test]
    fn pattern_longer_than_hold_back_is_rejected() {
        let errors = messages(
            "  stream: {maxHoldBackBytes: 10}\n  customEntities:\n    - {name: LONG_ID, pattern: 'ID-[0-9]{20}'}\n",
        );
        assert!(errors[0].contains("can match up to 23 bytes"), "{errors:?}");
    }

    #[test]
    fn monitor_stream_needs_no_bound() {
        compile("  stream: {mode: monitor}\n  topics:\n    - {id: t, patterns: ['secret \\w+']}\n")
            .expect("monitor mode accepts unbounded patterns");
    }

    #[test]
    fn bad_rule_id_is_reported() {
        let errors = messages("  topics:\n    - {id: 'No Spaces', phrases: [x]}\n");
        assert!(errors[0].contains("invalid rule id"), "{errors:?}");
    }
}
