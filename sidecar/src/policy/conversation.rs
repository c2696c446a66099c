//! The `spec.context` and `spec.conversation` sections of a policy: their user-facing
//! types and their validation into `context::ContextPolicy` and
//! `state::ConversationPolicy`.
//!
//! ```yaml
//! spec:
//!   context:
//!     budget: {fraction: 0.9}      # or {tokens: 100000}; of the window minus reserved output
//!     reservedOutputTokens: 4096   # default: the request's max_tokens, else the model's maximum
//!     strategy: summarize          # summarize | truncate (default) | reject
//!     trigger: 0.75                # share of the budget that starts summarization
//!     summarizer:
//!       model: gpt-4o-mini         # default: the conversation's model
//!       prompt: "Summarize ..."
//!       maxOutputTokens: 1024
//!       keepRecentTokens: 20000    # default: half the budget
//!   conversation:
//!     ttlSeconds: 86400            # refreshed on every write
//!     onStoreFull: failOpen        # failOpen | failClosed
//!     idFrom: user                 # user | metadata.<key>; the header always wins
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::context::{self, Budget, ContextPolicy, Strategy};
use crate::state::id::IdSource;
use crate::state::{ConversationPolicy, FailurePolicy};

/// Context-window management.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextSpec {
    /// Input-token budget; the whole window minus the reserved output when omitted.
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
    /// Output tokens subtracted from the window before the budget applies.
    #[serde(default)]
    pub reserved_output_tokens: Option<u32>,
    /// Strategy for a request over budget; `truncate` when omitted.
    #[serde(default)]
    pub strategy: Option<ContextStrategy>,
    /// Share of the budget (above 0, at most 1) at which summarization starts.
    #[serde(default)]
    pub trigger: Option<f64>,
    #[serde(default)]
    pub summarizer: Option<SummarizerSpec>,
}

/// Exactly one of `tokens` and `fraction`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetSpec {
    /// Input tokens.
    #[serde(default)]
    pub tokens: Option<u32>,
    /// Share (above 0, at most 1) of the window left after the reserved output.
    #[serde(default)]
    pub fraction: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ContextStrategy {
    Summarize,
    Truncate,
    Reject,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummarizerSpec {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub keep_recent_tokens: Option<u32>,
}

/// Conversation state.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConversationSpec {
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub on_store_full: Option<StoreFull>,
    #[serde(default)]
    pub id_from: Option<String>,
}

/// Handling of new requests while the store's outage buffer is full.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StoreFull {
    /// Keep serving; turns that do not fit are dropped and counted.
    FailOpen,
    /// Respond to new requests with 503 until the buffer has room.
    FailClosed,
}

/// Longest accepted conversation TTL: 90 days, beyond which state is an archive, not
/// a conversation.
pub const MAX_TTL_SECONDS: u64 = 90 * 24 * 3600;

/// Validates `spec.context`, pushing `(path, message)` for every problem.
pub fn compile_context(
    spec: Option<&ContextSpec>,
    errors: &mut Vec<(String, String)>,
) -> Option<ContextPolicy> {
    let spec = spec?;
    let mut push = |path: &str, message: String| {
        errors.push((format!("spec.context.{path}"), message));
    };
    let budget = match &spec.budget {
        None => Budget::Fraction(1.0),
        Some(BudgetSpec {
            tokens: Some(_),
            fraction: Some(_),
        }) => {
            push(
                "budget",
                "set either tokens or fraction, not both".to_owned(),
            );
            Budget::Fraction(1.0)
        }
        Some(BudgetSpec {
            tokens: None,
            fraction: None,
        }) => {
            push("budget", "set tokens or fraction".to_owned());
            Budget::Fraction(1.0)
        }
        Some(BudgetSpec {
            tokens: Some(tokens),
            ..
        }) => {
            if *tokens == 0 {
                push("budget.tokens", "must be greater than 0".to_owned());
            }
            Budget::Tokens(*tokens)
        }
        Some(BudgetSpec {
            fraction: Some(fraction),
            ..
        }) => {
            if !share(*fraction) {
                push(
                    "budget.fraction",
                    format!("must be above 0 and at most 1, found {fraction}"),
                );
            }
            Budget::Fraction(*fraction)
        }
    };
    let trigger = spec.trigger.unwrap_or(context::DEFAULT_TRIGGER);
    if !share(trigger) {
        push(
            "trigger",
            format!("must be above 0 and at most 1, found {trigger}"),
        );
    }
    let strategy = match spec.strategy.unwrap_or(ContextStrategy::Truncate) {
        ContextStrategy::Summarize => Strategy::Summarize,
        ContextStrategy::Truncate => Strategy::Truncate,
        ContextStrategy::Reject => Strategy::Reject,
    };
    let summarizer = spec.summarizer.clone().unwrap_or_default();
    if let Some(model) = &summarizer.model
        && model.trim().is_empty()
    {
        push(
            "summarizer.model",
            "must not be empty; omit it to use the conversation's model".to_owned(),
        );
    }
    if let Some(prompt) = &summarizer.prompt
        && prompt.trim().is_empty()
    {
        push(
            "summarizer.prompt",
            "must not be empty; omit it to use the default prompt".to_owned(),
        );
    }
    if summarizer.max_output_tokens == Some(0) {
        push(
            "summarizer.maxOutputTokens",
            "must be greater than 0".to_owned(),
        );
    }
    Some(ContextPolicy {
        budget,
        reserved_output_tokens: spec.reserved_output_tokens,
        strategy,
        trigger,
        summarizer_model: summarizer.model,
        summary_prompt: summarizer
            .prompt
            .unwrap_or_else(|| context::DEFAULT_SUMMARY_PROMPT.to_owned()),
        summary_max_output_tokens: summarizer
            .max_output_tokens
            .unwrap_or(context::DEFAULT_SUMMARY_MAX_OUTPUT_TOKENS),
        keep_recent_tokens: summarizer.keep_recent_tokens,
    })
}

/// Validates `spec.conversation`, pushing `(path, message)` for every problem.
pub fn compile_conversation(
    spec: Option<&ConversationSpec>,
    errors: &mut Vec<(String, String)>,
) -> ConversationPolicy {
    let mut policy = ConversationPolicy::default();
    let Some(spec) = spec else {
        return policy;
    };
    if let Some(ttl) = spec.ttl_seconds {
        if ttl == 0 || ttl > MAX_TTL_SECONDS {
            errors.push((
                "spec.conversation.ttlSeconds".to_owned(),
                format!("must be between 1 and {MAX_TTL_SECONDS} (90 days), found {ttl}"),
            ));
        } else {
            policy.ttl = Duration::from_secs(ttl);
        }
    }
    policy.on_store_full = match spec.on_store_full {
        Some(StoreFull::FailClosed) => FailurePolicy::FailClosed,
        Some(StoreFull::FailOpen) | None => FailurePolicy::FailOpen,
    };
    if let Some(text) = &spec.id_from {
        match IdSource::parse(text) {
            Ok(source) => policy.id_source = source,
            Err(message) => errors.push(("spec.conversation.idFrom".to_owned(), message)),
        }
    }
    policy
}

fn share(value: f64) -> bool {
    value.is_finite() && value > 0.0 && value <= 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(yaml: &str) -> (Option<ContextPolicy>, Vec<String>) {
        let spec: ContextSpec = serde_norway::from_str(yaml).expect("valid YAML shape");
        let mut errors = Vec::new();
        let policy = compile_context(Some(&spec), &mut errors);
        let messages = errors
            .into_iter()
            .map(|(path, message)| format!("{path}: {message}"))
            .collect();
        (policy, messages)
    }

    #[test]
    fn context_defaults_apply() {
        let (policy, errors) = context("{}");
        assert!(errors.is_empty(), "{errors:?}");
        let policy = policy.expect("compiled");
        assert_eq!(policy.budget, Budget::Fraction(1.0));
        assert_eq!(policy.strategy, Strategy::Truncate);
        assert_eq!(policy.trigger, context::DEFAULT_TRIGGER);
        assert_eq!(policy.summary_prompt, context::DEFAULT_SUMMARY_PROMPT);
    }

    #[test]
    fn context_values_compile() {
        let (policy, errors) = context(
            "budget: {tokens: 50000}\nreservedOutputTokens: 2000\nstrategy: summarize\ntrigger: 0.5\nsummarizer: {model: gpt-4o-mini, prompt: Be brief., maxOutputTokens: 300, keepRecentTokens: 9000}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let policy = policy.expect("compiled");
        assert_eq!(policy.budget, Budget::Tokens(50_000));
        assert_eq!(policy.reserved_output_tokens, Some(2_000));
        assert_eq!(policy.strategy, Strategy::Summarize);
        assert_eq!(policy.summarizer_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(policy.summary_max_output_tokens, 300);
        assert_eq!(policy.keep_recent_tokens, Some(9_000));
    }

    #[test]
    fn every_context_error_is_reported_with_its_path() {
        let (_, errors) = context(
            "budget: {tokens: 10, fraction: 0.5}\ntrigger: 1.5\nsummarizer: {model: '', prompt: ' ', maxOutputTokens: 0}\n",
        );
        let joined = errors.join("\n");
        for expected in [
            "spec.context.budget: set either tokens or fraction",
            "spec.context.trigger: must be above 0 and at most 1, found 1.5",
            "spec.context.summarizer.model: must not be empty",
            "spec.context.summarizer.prompt: must not be empty",
            "spec.context.summarizer.maxOutputTokens: must be greater than 0",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in\n{joined}"
            );
        }
        assert_eq!(errors.len(), 5, "{joined}");

        let (_, errors) = context("budget: {fraction: 0}\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("spec.context.budget.fraction"));
    }

    #[test]
    fn conversation_section_compiles() {
        let spec: ConversationSpec = serde_norway::from_str(
            "ttlSeconds: 600\nonStoreFull: failClosed\nidFrom: metadata.user_id\n",
        )
        .expect("valid YAML shape");
        let mut errors = Vec::new();
        let policy = compile_conversation(Some(&spec), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(policy.ttl, Duration::from_secs(600));
        assert_eq!(policy.on_store_full, FailurePolicy::FailClosed);
        assert_eq!(policy.id_source, IdSource::Metadata("user_id".to_owned()));
    }

    #[test]
    fn conversation_errors_name_their_fields() {
        let spec: ConversationSpec =
            serde_norway::from_str("ttlSeconds: 0\nidFrom: cookie\n").expect("valid shape");
        let mut errors = Vec::new();
        compile_conversation(Some(&spec), &mut errors);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.conversation.ttlSeconds", "spec.conversation.idFrom"]
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_norway::from_str::<ContextSpec>("budgett: {}\n").is_err());
        assert!(serde_norway::from_str::<ConversationSpec>("ttl: 5\n").is_err());
        assert!(serde_norway::from_str::<ConversationSpec>("onStoreFull: maybe\n").is_err());
    }
}
