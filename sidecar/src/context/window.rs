//! Context-window management: pure functions that decide which messages of a request
//! are sent so that it fits the model's budget.
//!
//! A request is split into the leading system messages, which are always kept, and
//! units: a single message, or an assistant message with tool calls together with the
//! messages that directly follow it with results for those calls (`tool` messages in
//! Chat Completions, a `user` message of `tool_result` blocks in the Messages API).
//! Units are kept or dropped whole, so a tool call is never separated from its result.
//! The last unit (the newest input) is always kept.
//!
//! Strategies when the request exceeds the budget:
//! - `Truncate` keeps the most recent units that fit;
//! - `Summarize` puts the stored summary after the system messages and keeps the most
//!   recent units that fit after the part the summary covers; without a usable summary
//!   it truncates;
//! - `Reject` returns how many tokens the request is over budget.
//!
//! The result is a [`FitPlan`] of indexes, so the caller can apply it to the messages
//! it forwards (such as the request's JSON array, to keep fields the common model does
//! not carry).

use crate::dialect::{Message, Part, Role};
use crate::state::Summary;

use super::catalog::ModelLimits;
use super::tokens::{REPLY_PRIMING_TOKENS, TokenCounter};

/// Text that introduces the stored summary in the system message that carries it.
pub const SUMMARY_INTRO: &str = "Summary of the earlier part of this conversation:\n";

/// Size limit of a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// A number of input tokens, capped by what the window leaves after the reserved
    /// output.
    Tokens(u32),
    /// A fraction (0 to 1) of the window left after the reserved output.
    Fraction(f64),
}

/// Returns the input-token budget for a model: the window minus `reserved_output`
/// tokens, then the configured absolute value or fraction of that.
pub fn budget_tokens(limits: ModelLimits, budget: Budget, reserved_output: u32) -> u32 {
    let available = limits.context_window.saturating_sub(reserved_output);
    match budget {
        Budget::Tokens(tokens) => tokens.min(available),
        Budget::Fraction(fraction) => {
            let fraction = fraction.clamp(0.0, 1.0);
            // Truncation toward zero keeps the result inside the window.
            (f64::from(available) * fraction) as u32
        }
    }
}

/// Returns whether a conversation of `tokens` has reached the summarization trigger,
/// given as a fraction of `budget`.
pub fn reached_trigger(tokens: u64, budget: u32, trigger_fraction: f64) -> bool {
    tokens as f64 >= f64::from(budget) * trigger_fraction.clamp(0.0, 1.0)
}

/// Handling of a request over budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Summarize,
    Truncate,
    Reject,
}

/// The messages to send: which input messages to keep, in order, and where to insert
/// the summary message, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitPlan {
    /// Indexes into the input messages, ascending.
    pub kept: Vec<usize>,
    /// Position in the output (not the input) at which to insert the summary message.
    pub summary_at: Option<usize>,
    /// Token count of the planned request, with the summary and `extra_tokens`.
    pub tokens: u32,
    /// Number of input messages left out.
    pub dropped: usize,
}

impl FitPlan {
    /// Builds the output from `items` (parallel to the input messages), calling
    /// `summary` for the summary message when the plan has one.
    pub fn apply<T: Clone>(&self, items: &[T], summary: impl FnOnce() -> T) -> Vec<T> {
        let mut out: Vec<T> = self
            .kept
            .iter()
            .filter_map(|&i| items.get(i).cloned())
            .collect();
        if let Some(at) = self.summary_at {
            out.insert(at.min(out.len()), summary());
        }
        out
    }

    /// Returns whether the plan changes the request.
    pub fn is_unchanged(&self) -> bool {
        self.dropped == 0 && self.summary_at.is_none()
    }
}

/// Error for a request that cannot be made to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("request needs {tokens} tokens, {over} over the budget of {budget}")]
pub struct OverBudget {
    pub tokens: u32,
    pub budget: u32,
    pub over: u32,
}

impl OverBudget {
    fn new(tokens: u32, budget: u32) -> OverBudget {
        OverBudget {
            tokens,
            budget,
            over: tokens.saturating_sub(budget),
        }
    }
}

/// Returns the system message that carries `summary`.
pub fn summary_message(summary: &Summary) -> Message {
    Message {
        role: Role::System,
        parts: vec![Part::Text {
            text: format!("{SUMMARY_INTRO}{}", summary.text),
        }],
    }
}

/// Plans the request so it fits `budget` tokens.
///
/// `extra_tokens` counts what the messages do not contain but the request sends, such
/// as tool definitions. `summary` is used only by `Strategy::Summarize`.
pub fn fit(
    messages: &[Message],
    counter: &TokenCounter,
    budget: u32,
    extra_tokens: u32,
    strategy: Strategy,
    summary: Option<&Summary>,
) -> Result<FitPlan, OverBudget> {
    fit_starting_with(
        messages,
        counter,
        budget,
        extra_tokens,
        strategy,
        summary,
        None,
    )
}

/// Plans the request as [`fit`] does, and when `first_role` is set, the first kept
/// message after the system messages has that role: the Messages API requires the
/// conversation to start with a `user` message. Units that would start the kept part
/// with another role are dropped too, so the plan may use fewer tokens than `budget`.
pub fn fit_starting_with(
    messages: &[Message],
    counter: &TokenCounter,
    budget: u32,
    extra_tokens: u32,
    strategy: Strategy,
    summary: Option<&Summary>,
    first_role: Option<Role>,
) -> Result<FitPlan, OverBudget> {
    let counts: Vec<u32> = messages.iter().map(|m| counter.message(m)).collect();
    let base = REPLY_PRIMING_TOKENS.saturating_add(extra_tokens);
    let total = counts.iter().fold(base, |sum, &c| sum.saturating_add(c));
    if total <= budget {
        return Ok(FitPlan {
            kept: (0..messages.len()).collect(),
            summary_at: None,
            tokens: total,
            dropped: 0,
        });
    }
    if strategy == Strategy::Reject {
        return Err(OverBudget::new(total, budget));
    }

    let pinned = messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    let units = units(messages, pinned);
    let Some(last) = units.last().cloned() else {
        // Only system messages: nothing can be dropped.
        return Err(OverBudget::new(total, budget));
    };
    let sum = |range: std::ops::Range<usize>| {
        counts[range]
            .iter()
            .fold(0u32, |sum, &c| sum.saturating_add(c))
    };

    let summary_plan = match (strategy, summary) {
        (Strategy::Summarize, Some(summary)) => {
            let first_uncovered = index_after_covered(messages, summary.covered_messages);
            // A summary that covers the newest input cannot stand in for it.
            (first_uncovered <= last.start).then(|| {
                let text = summary_message(summary);
                (first_uncovered, counter.message(&text))
            })
        }
        _ => None,
    };
    let (earliest, summary_tokens) = summary_plan.unwrap_or((pinned, 0));

    let mut used = base
        .saturating_add(sum(0..pinned))
        .saturating_add(summary_tokens)
        .saturating_add(sum(last.clone()));
    if used > budget {
        return Err(OverBudget::new(used, budget));
    }
    let starts_kept_part =
        |index: usize| first_role.is_none_or(|role| messages[index].role == role);
    // The newest start that fits with its role, and the tokens up to it.
    let mut start = starts_kept_part(last.start).then_some((last.start, used));
    for unit in units.iter().rev().skip(1) {
        if unit.start < earliest {
            break;
        }
        let cost = sum(unit.clone());
        if used.saturating_add(cost) > budget {
            break;
        }
        used += cost;
        if starts_kept_part(unit.start) {
            start = Some((unit.start, used));
        }
    }
    let Some((first_kept, used)) = start else {
        // No unit starting with `first_role` fits, so report what the newest one needs.
        let fixed = base
            .saturating_add(sum(0..pinned))
            .saturating_add(summary_tokens);
        let needed = units.iter().rev().try_fold(fixed, |tokens, unit| {
            let tokens = tokens.saturating_add(sum(unit.clone()));
            if starts_kept_part(unit.start) {
                Err(tokens)
            } else {
                Ok(tokens)
            }
        });
        let (Ok(needed) | Err(needed)) = needed;
        return Err(OverBudget::new(needed, budget));
    };

    let kept: Vec<usize> = (0..pinned).chain(first_kept..messages.len()).collect();
    Ok(FitPlan {
        dropped: messages.len() - kept.len(),
        summary_at: summary_plan.map(|_| pinned),
        tokens: used,
        kept,
    })
}

/// Splits `messages[start..]` into units: an assistant message with tool calls plus the
/// results of those calls that directly follow it, or a single message.
fn units(messages: &[Message], start: usize) -> Vec<std::ops::Range<usize>> {
    let mut units = Vec::new();
    let mut i = start;
    while i < messages.len() {
        let begin = i;
        let call_ids: Vec<&str> = messages[i]
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::ToolCall { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        i += 1;
        if messages[begin].role == Role::Assistant && !call_ids.is_empty() {
            while i < messages.len() && answers_call(&messages[i], &call_ids) {
                i += 1;
            }
        }
        units.push(begin..i);
    }
    units
}

/// Returns whether `message` carries a result for one of `call_ids`: a `tool` message,
/// or a `user` message with `tool_result` blocks as the Messages API sends them.
fn answers_call(message: &Message, call_ids: &[&str]) -> bool {
    match message.role {
        Role::Tool => message.parts.iter().any(|part| {
            // An empty id comes from the legacy `function` role, which names no call.
            matches!(part, Part::ToolResult { call_id, .. }
                if call_id.is_empty() || call_ids.contains(&call_id.as_str()))
        }),
        Role::User => message.parts.iter().any(|part| {
            matches!(part, Part::ToolResult { call_id, .. } if call_ids.contains(&call_id.as_str()))
        }),
        Role::System | Role::Assistant => false,
    }
}

/// Returns the index of the first message after `covered` non-system messages.
fn index_after_covered(messages: &[Message], covered: u64) -> usize {
    let mut seen = 0u64;
    for (index, message) in messages.iter().enumerate() {
        if message.role == Role::System {
            continue;
        }
        if seen == covered {
            return index;
        }
        seen += 1;
    }
    messages.len()
}

#[cfg(test)]
mod tests;
