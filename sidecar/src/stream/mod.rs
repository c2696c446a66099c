//! The streaming guard: guards a server-sent event stream as it flows, releasing each
//! piece of text as soon as no rule could still match across it.
//!
//! The engine is dialect-neutral: [`text::TextStream`] guards one text channel, and a
//! dialect adapter ([`openai::OpenAiStream`], [`anthropic::AnthropicStream`]) maps the
//! provider's events onto channels and tool calls and re-encodes what may be released.
//! Both adapters implement [`GuardedStream`], which the proxy's stream pump drives.

pub mod anthropic;
pub mod openai;
pub mod text;

pub use text::{Release, StreamMode, TextStream};

use crate::dialect::Message;
use crate::guard::{Finding, Guard};
use crate::sse::{self, Event, Frame};

/// Returns the event of an upstream frame. A comment is forwarded to `out` at once as a
/// keep-alive. A `retry` value is kept in `pending_retry` to ride on the next event,
/// because a block with only `retry` dispatches no event in a browser, and the openai
/// Python SDK (3.60) parses it as an empty event and fails.
pub fn take_event(
    frame: Frame,
    out: &mut String,
    pending_retry: &mut Option<u64>,
) -> Option<Event> {
    match frame {
        Frame::Comment(_) => {
            sse::encode_frame(&frame, out);
            None
        }
        Frame::Retry(retry) => {
            *pending_retry = Some(retry);
            None
        }
        Frame::Event(event) => Some(event),
    }
}

/// The caller's next action after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The client's stream is complete (its last event, or a refusal, was sent).
    Finished,
    /// The client's stream ended with an error event; the turn is not complete.
    Failed,
}

/// Cause of a stream ending with an error event, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    Blocked { rule: String },
    Upstream(String),
}

/// A dialect's streaming guard, as the proxy drives it: upstream frames in, the bytes
/// the client receives out (appended to `out`).
pub trait GuardedStream: Send + 'static {
    /// Handles one upstream frame.
    fn on_frame(&mut self, frame: Frame, out: &mut String) -> Flow;

    /// Handles the end of the upstream body; a stream that ends before its last event
    /// ends the client's stream with an error event.
    fn on_upstream_end(&mut self, out: &mut String) -> Flow;

    /// Ends the client's stream with an error event after text still held back was
    /// checked and released. `code` is the sidecar's error code, such as
    /// `upstream_timeout`.
    fn fail(&mut self, out: &mut String, message: &str, code: &str) -> Flow;

    /// Returns the findings since the last call, for metrics.
    fn take_findings(&mut self) -> Vec<Finding>;

    /// Returns how many times a channel's hold-back limit forced text out unguarded.
    fn hold_back_overflows(&self) -> u64;

    /// Returns whether the client's stream ended with an error event.
    fn failed(&self) -> bool;

    /// Returns the input and output tokens, when the upstream reported them.
    fn reported_usage(&self) -> Option<(u64, u64)>;

    /// Returns the response the client received, in the common model.
    fn response_message(&self) -> Option<Message>;
}

/// Builds the message of an error event that ends a blocked stream. An escalated call
/// names the escalation the guard raised for it, which the proxy stores before the event
/// reaches the client, so the agent can retry the identical call once it is approved.
pub fn block_message(guard: &Guard, rule: &str, kind: &str, escalate: bool) -> String {
    if !escalate {
        return format!("response blocked by guardrail policy: rule {rule:?} ({kind})");
    }
    let escalation = guard
        .escalations()
        .and_then(|escalations| escalations.raised().last().map(|e| e.id.clone()));
    match escalation {
        Some(id) => format!(
            "approval pending: escalation {id} holds this tool call under guardrail policy \
             rule {rule:?} ({kind}); retry the identical call after it is approved"
        ),
        None => format!(
            "response requires approval under guardrail policy: rule {rule:?} ({kind}); send \
             the conversation id header so the call can be escalated"
        ),
    }
}
