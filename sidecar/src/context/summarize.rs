//! Asynchronous summarization of a conversation's older turns.
//!
//! When a conversation reaches its trigger (`window::reached_trigger`), the proxy calls
//! [`SummaryScheduler::schedule`]. The scheduler picks the turns to fold into the running
//! summary: everything since the stored summary except the newest turns, which stay
//! verbatim. It runs the [`Summarizer`] in a background task and stores the result with
//! the range of turns it covers. At most one summarization per conversation runs in this
//! process at a time; a failed attempt is retried with exponential backoff and counted.
//! Across sidecars, the store keeps whichever summary covers more turns, so two
//! concurrent summaries cannot move the stored one backwards.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::tokens::TokenCounter;
use crate::dialect::{Message, Part, Role};
use crate::events::{EventBus, EventPayload};
use crate::state::{Conversation, ConversationStore, Summary, Turn, now_ms};

/// Input of one summarization.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRequest {
    pub conversation_id: String,
    /// Model that writes the summary.
    pub model: String,
    /// Instructions from the policy.
    pub prompt: String,
    /// The stored summary to extend, when there is one.
    pub previous_summary: Option<String>,
    /// The messages to fold into the summary, oldest first, without system messages.
    pub messages: Vec<Message>,
    /// Maximum length of the summary, in tokens.
    pub max_output_tokens: u32,
}

/// A failed summarization attempt; the message goes to logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SummarizeError(pub String);

/// Writes summaries. The proxy implements it with its upstream client.
#[async_trait]
pub trait Summarizer: Send + Sync + fmt::Debug {
    /// Returns the new running summary: `previous_summary` extended with `messages`.
    async fn summarize(&self, request: SummaryRequest) -> Result<String, SummarizeError>;
}

/// Per-policy summarization settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SummarySettings {
    pub model: String,
    pub prompt: String,
    pub max_output_tokens: u32,
    /// Tokens of the newest turns kept verbatim rather than summarized.
    pub keep_recent_tokens: u32,
    /// Time to live of the conversation, refreshed when the summary is stored.
    pub ttl: Duration,
}

/// Retry behaviour for failed attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Three attempts over about three seconds ride out a brief upstream error without
/// keeping a task alive for long.
pub const DEFAULT_RETRY: RetrySettings = RetrySettings {
    max_attempts: 3,
    initial_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(30),
};

/// Counters since the scheduler was created.
#[derive(Debug, Default)]
pub struct SummaryStats {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    /// Attempts that failed, including ones retried afterwards.
    pub failed_attempts: AtomicU64,
    /// Summarizations that used up their attempts.
    pub abandoned: AtomicU64,
}

/// Outcome of `schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduled {
    Started,
    /// A summarization of this conversation is already running here.
    AlreadyRunning,
    /// Every turn is either summarized already or among the newest turns kept.
    NothingToSummarize,
}

/// Runs summarizations in the background, one per conversation at a time.
#[derive(Debug, Clone)]
pub struct SummaryScheduler {
    summarizer: Arc<dyn Summarizer>,
    store: Arc<dyn ConversationStore>,
    retry: RetrySettings,
    running: Arc<Mutex<HashSet<String>>>,
    stats: Arc<SummaryStats>,
    /// Receives summarization started and finished events, when set.
    events: Option<EventBus>,
}

/// Removes a conversation from the running set when its task ends, however it ends.
struct RunningGuard {
    running: Arc<Mutex<HashSet<String>>>,
    conversation_id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.conversation_id);
    }
}

impl SummaryScheduler {
    pub fn new(
        summarizer: Arc<dyn Summarizer>,
        store: Arc<dyn ConversationStore>,
        retry: RetrySettings,
    ) -> SummaryScheduler {
        SummaryScheduler {
            summarizer,
            store,
            retry,
            running: Arc::new(Mutex::new(HashSet::new())),
            stats: Arc::new(SummaryStats::default()),
            events: None,
        }
    }

    /// Publishes summarization started and finished events to `events`.
    pub fn with_events(mut self, events: EventBus) -> SummaryScheduler {
        self.events = Some(events);
        self
    }

    pub fn stats(&self) -> &SummaryStats {
        &self.stats
    }

    /// Returns whether a summarization of the conversation is running here.
    pub fn is_running(&self, conversation_id: &str) -> bool {
        lock(&self.running).contains(conversation_id)
    }

    /// Starts summarizing `conversation` in a background task, unless one is running or
    /// nothing needs summarizing. Must be called inside a Tokio runtime.
    pub fn schedule(&self, conversation: &Conversation, settings: SummarySettings) -> Scheduled {
        let Some(plan) = plan(conversation, settings.keep_recent_tokens) else {
            return Scheduled::NothingToSummarize;
        };
        if !lock(&self.running).insert(conversation.id.clone()) {
            return Scheduled::AlreadyRunning;
        }
        let guard = RunningGuard {
            running: self.running.clone(),
            conversation_id: conversation.id.clone(),
        };
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let request = SummaryRequest {
            conversation_id: conversation.id.clone(),
            model: settings.model.clone(),
            prompt: settings.prompt.clone(),
            previous_summary: conversation.summary.as_ref().map(|s| s.text.clone()),
            messages: plan.messages,
            max_output_tokens: settings.max_output_tokens,
        };
        let first_turn = conversation
            .summary
            .as_ref()
            .map_or(plan.start_turn, |s| s.first_turn);
        let task = SummaryTask {
            summarizer: self.summarizer.clone(),
            store: self.store.clone(),
            stats: self.stats.clone(),
            retry: self.retry,
            request,
            first_turn,
            end_turn: plan.end_turn,
            covered_messages: plan.covered_messages,
            // The summary is read by the conversation's model, so it is counted with
            // that model's encoding.
            counter: TokenCounter::for_model(&conversation.metadata.model),
            ttl: settings.ttl,
            events: self.events.clone(),
        };
        if let Some(events) = &self.events {
            events.publish(
                Some(&conversation.id),
                EventPayload::SummarizationStarted {
                    model: settings.model.clone(),
                },
            );
        }
        tokio::spawn(async move {
            let _guard = guard;
            task.run().await;
        });
        Scheduled::Started
    }
}

struct SummaryTask {
    summarizer: Arc<dyn Summarizer>,
    store: Arc<dyn ConversationStore>,
    stats: Arc<SummaryStats>,
    retry: RetrySettings,
    request: SummaryRequest,
    first_turn: u64,
    end_turn: u64,
    covered_messages: u64,
    counter: TokenCounter,
    ttl: Duration,
    events: Option<EventBus>,
}

impl SummaryTask {
    async fn run(self) {
        let error = self.attempt_all().await;
        if let Some(events) = &self.events {
            events.publish(
                Some(&self.request.conversation_id),
                EventPayload::SummarizationFinished {
                    stored: error.is_none(),
                    error,
                },
            );
        }
    }

    /// Summarizes with retries and stores the summary. Returns why it failed, or `None`
    /// when the summary was stored.
    async fn attempt_all(&self) -> Option<String> {
        let conversation_id = self.request.conversation_id.clone();
        let mut backoff = self.retry.initial_backoff;
        for attempt in 1..=self.retry.max_attempts.max(1) {
            match self.summarizer.summarize(self.request.clone()).await {
                Ok(text) => {
                    let summary = Summary {
                        tokens: self.counter.text(&text),
                        text,
                        first_turn: self.first_turn,
                        end_turn: self.end_turn,
                        covered_messages: self.covered_messages,
                        model: self.request.model.clone(),
                        created_at_ms: now_ms(),
                    };
                    match self
                        .store
                        .save_summary(&conversation_id, summary, self.ttl)
                        .await
                    {
                        Ok(_) => {
                            self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(conversation.id = %conversation_id, end_turn = self.end_turn, "conversation summarized");
                            return None;
                        }
                        Err(error) => {
                            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(conversation.id = %conversation_id, error = %error, "failed to store a summary");
                            return Some(format!("failed to store the summary: {error}"));
                        }
                    }
                }
                Err(error) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if attempt >= self.retry.max_attempts {
                        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(conversation.id = %conversation_id, attempts = attempt, error = %error, "summarization failed; giving up until the next trigger");
                        return Some(format!(
                            "summarization failed after {attempt} attempts: {error}"
                        ));
                    }
                    tracing::info!(conversation.id = %conversation_id, attempt, error = %error, "summarization failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
        // The last attempt returns above; this covers a loop that never ran.
        Some("summarization made no attempt".to_owned())
    }
}

/// The turns a summarization folds in.
#[derive(Debug, PartialEq)]
struct Plan {
    start_turn: u64,
    end_turn: u64,
    messages: Vec<Message>,
    covered_messages: u64,
}

/// Chooses turns `[start, end)`: from the end of the stored summary (or the oldest
/// stored turn) up to the newest turns worth `keep_recent_tokens`, which stay verbatim.
/// The end never falls between a tool call and the turn holding its result.
fn plan(conversation: &Conversation, keep_recent_tokens: u32) -> Option<Plan> {
    let first_seq = conversation.first_seq;
    let summarized_end = conversation.summary.as_ref().map_or(0, |s| s.end_turn);
    let start = summarized_end.max(first_seq);
    let turns = &conversation.turns;

    let mut end_index = turns.len();
    let mut recent: u64 = 0;
    while end_index > 0 {
        let tokens = u64::from(turns[end_index - 1].tokens);
        if recent + tokens > u64::from(keep_recent_tokens) {
            break;
        }
        recent += tokens;
        end_index -= 1;
    }
    while end_index > 0 && end_index < turns.len() && ends_with_tool_call(&turns[end_index - 1]) {
        end_index -= 1;
    }
    let start_index = usize::try_from(start - first_seq).unwrap_or(usize::MAX);
    if start_index >= end_index {
        return None;
    }
    let selected = &turns[start_index..end_index];
    let messages: Vec<Message> = selected
        .iter()
        .flat_map(|turn| turn.messages.iter())
        .filter(|m| m.role != Role::System)
        .cloned()
        .collect();
    // NOTE: when trimming removed turns the previous summary never covered, their
    // messages are missing from this count, so `covered_messages` is then too small and
    // the window keeps a few already-summarized messages.
    let previous = conversation
        .summary
        .as_ref()
        .map_or(0, |s| s.covered_messages);
    Some(Plan {
        start_turn: first_seq + start_index as u64,
        end_turn: first_seq + end_index as u64,
        covered_messages: previous + messages.len() as u64,
        messages,
    })
}

fn ends_with_tool_call(turn: &Turn) -> bool {
    turn.messages.last().is_some_and(|m| {
        m.role == Role::Assistant
            && m.parts
                .iter()
                .any(|part| matches!(part, Part::ToolCall { .. }))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The set is updated by single insert and remove calls, so it stays valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
