//! Context windows: token counting per model, the model catalog, fitting a request into
//! its budget, summarization of older turns, and recognition of upstream overflow
//! errors.
//!
//! Everything here except the summarization scheduler is synchronous and pure, so the
//! proxy and the gRPC API share it and tests need no server.

pub mod catalog;
pub mod overflow;
pub mod summarize;
pub mod tokens;
pub mod window;

pub use catalog::{CatalogEntry, ModelCatalog, ModelLimits};
pub use overflow::{ContextOverflow, context_overflow};
pub use summarize::{
    RetrySettings, Scheduled, SummarizeError, Summarizer, SummaryRequest, SummaryScheduler,
    SummarySettings,
};
pub use tokens::{Encoding, TokenCounter};
pub use window::{
    Budget, FitPlan, OverBudget, Strategy, budget_tokens, fit, fit_starting_with, reached_trigger,
};

/// Summarization prompt used when the policy sets none.
pub const DEFAULT_SUMMARY_PROMPT: &str = "Summarize the conversation so far for your own \
later use. Keep facts, decisions, open questions, names and identifiers (including \
placeholders such as <EMAIL_1> exactly as written). Write plain prose, at most a few \
paragraphs.";
/// Share of the budget at which summarization starts when the policy sets no trigger.
pub const DEFAULT_TRIGGER: f64 = 0.75;
/// Maximum summary length when the policy sets none.
pub const DEFAULT_SUMMARY_MAX_OUTPUT_TOKENS: u32 = 1_024;
/// Share of the budget kept as verbatim recent turns when summarizing, when the policy
/// sets no `keepRecentTokens`: half leaves room for the summary and new input.
pub const DEFAULT_KEEP_RECENT_SHARE: f64 = 0.5;

/// The compiled `spec.context` section of a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextPolicy {
    pub budget: Budget,
    /// Output tokens reserved from the window; `None` uses the request's `max_tokens`
    /// or `max_completion_tokens`, else the model's maximum output from the catalog.
    pub reserved_output_tokens: Option<u32>,
    pub strategy: Strategy,
    /// Share of the budget (0 to 1) at which summarization starts.
    pub trigger: f64,
    /// Model that writes summaries; `None` uses the conversation's own model.
    pub summarizer_model: Option<String>,
    pub summary_prompt: String,
    pub summary_max_output_tokens: u32,
    /// Tokens of the newest turns kept verbatim; `None` keeps
    /// [`DEFAULT_KEEP_RECENT_SHARE`] of the budget.
    pub keep_recent_tokens: Option<u32>,
}

impl ContextPolicy {
    /// Returns the input budget for `model`, given the output tokens the request sets.
    pub fn budget_for(
        &self,
        catalog: &ModelCatalog,
        model: &str,
        requested_output_tokens: Option<u32>,
    ) -> u32 {
        let limits = catalog.limits(model);
        let reserved = self
            .reserved_output_tokens
            .or(requested_output_tokens)
            .unwrap_or(limits.max_output_tokens);
        budget_tokens(limits, self.budget, reserved)
    }

    /// Returns the summarization settings for a conversation on `model` with `budget`.
    pub fn summary_settings(
        &self,
        model: &str,
        budget: u32,
        ttl: std::time::Duration,
    ) -> SummarySettings {
        SummarySettings {
            model: self
                .summarizer_model
                .clone()
                .unwrap_or_else(|| model.to_owned()),
            prompt: self.summary_prompt.clone(),
            max_output_tokens: self.summary_max_output_tokens,
            keep_recent_tokens: self
                .keep_recent_tokens
                .unwrap_or((f64::from(budget) * DEFAULT_KEEP_RECENT_SHARE) as u32),
            ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(reserved: Option<u32>) -> ContextPolicy {
        ContextPolicy {
            budget: Budget::Fraction(0.5),
            reserved_output_tokens: reserved,
            strategy: Strategy::Truncate,
            trigger: DEFAULT_TRIGGER,
            summarizer_model: None,
            summary_prompt: DEFAULT_SUMMARY_PROMPT.to_owned(),
            summary_max_output_tokens: DEFAULT_SUMMARY_MAX_OUTPUT_TOKENS,
            keep_recent_tokens: None,
        }
    }

    #[test]
    fn reserved_output_precedence() {
        let catalog = ModelCatalog::default();
        // gpt-4o: 128,000-token window, 16,384 maximum output tokens.
        assert_eq!(
            policy(Some(8_000)).budget_for(&catalog, "gpt-4o", Some(1_000)),
            60_000
        );
        assert_eq!(
            policy(None).budget_for(&catalog, "gpt-4o", Some(8_000)),
            60_000
        );
        assert_eq!(
            policy(None).budget_for(&catalog, "gpt-4o", None),
            (128_000 - 16_384) / 2
        );
    }

    #[test]
    fn summary_settings_default_to_the_conversation_model() {
        let settings = policy(None).summary_settings("gpt-4o", 10_000, std::time::Duration::ZERO);
        assert_eq!(settings.model, "gpt-4o");
        assert_eq!(settings.keep_recent_tokens, 5_000);
        let mut named = policy(None);
        named.summarizer_model = Some("gpt-4o-mini".to_owned());
        named.keep_recent_tokens = Some(700);
        let settings = named.summary_settings("gpt-4o", 10_000, std::time::Duration::ZERO);
        assert_eq!(settings.model, "gpt-4o-mini");
        assert_eq!(settings.keep_recent_tokens, 700);
    }
}
