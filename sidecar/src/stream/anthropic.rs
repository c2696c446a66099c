//! The streaming guard's adapter for Anthropic Messages API events.
//!
//! Content blocks arrive one at a time. A `text` block's `text_delta`s go through a
//! [`TextStream`] and are re-emitted, under the block's index, as soon as they may be
//! released. A client `tool_use` block is held whole: its `input_json_delta` fragments
//! are joined, and at `content_block_stop` the input is checked by the action and PII
//! rules and released as one start, one delta and one stop. `thinking` blocks and their
//! `thinking_delta` and `signature_delta` events pass through unscanned, as do blocks of
//! Anthropic's server-side tools, which the provider runs itself. `message_start`,
//! `message_delta`, `ping` and unknown events pass through at once; an upstream `error`
//! event is forwarded as it came and ends the stream.

use std::sync::Arc;

use serde_json::{Value, json};

use super::text::{StreamMode, TextStream};
use super::{Flow, GuardedStream, StreamError, take_event};
use crate::dialect::anthropic::{
    MessageAssembly, block_events, check_thinking_text, guard_tool_use, merge_usage,
    parse_tool_input, read_usage, response_message, restore_block,
};
use crate::dialect::guarding::Evaluation;
use crate::dialect::{Message, openai::guard_arguments};
use crate::guard::{BlockingRule, Finding, Guard, Verdict};
use crate::policy::spec::{BlockResponse, Direction};
use crate::sse::{self, Frame};

/// The content block the upstream is streaming.
#[derive(Debug)]
enum OpenBlock {
    /// A text block, started toward the client, whose text is guarded as it flows.
    Text { index: u64, text: TextStream },
    /// A client tool call, held until its input is whole. `block` is the start event's
    /// `content_block`; `input` collects the `partial_json` fragments.
    ToolUse {
        index: u64,
        block: Value,
        input: String,
    },
    /// A thinking block under `spec.thinking.scan`, held until its text is whole and
    /// checked. `events` are the held (name, payload) pairs in order.
    Thinking {
        index: u64,
        text: String,
        events: Vec<(String, Value)>,
    },
    /// Any other block, forwarded event by event.
    Passthrough,
}

/// The guard for one streamed message.
#[derive(Debug)]
pub struct AnthropicStream {
    guard: Arc<Guard>,
    mode: StreamMode,
    max_hold_back_bytes: usize,
    block: OpenBlock,
    findings: Vec<Finding>,
    /// Usage from `message_start`, with each `message_delta`'s usage merged in.
    usage: Option<Value>,
    /// Events the client received, assembled for the stored turn.
    released: MessageAssembly,
    pub error: Option<StreamError>,
    ended: bool,
    hold_back_overflows: u64,
    /// A `retry` value waiting for the next event to carry it.
    pending_retry: Option<u64>,
}

impl AnthropicStream {
    pub fn new(guard: Arc<Guard>, mode: StreamMode, max_hold_back_bytes: usize) -> AnthropicStream {
        AnthropicStream {
            guard,
            mode,
            max_hold_back_bytes,
            block: OpenBlock::Passthrough,
            findings: Vec::new(),
            usage: None,
            released: MessageAssembly::default(),
            error: None,
            ended: false,
            hold_back_overflows: 0,
            pending_retry: None,
        }
    }

    fn on_event(&mut self, name: &str, data: &str, event: Value, out: &mut String) -> Flow {
        match name {
            "message_start" => {
                if let Some(usage) = event.get("message").and_then(|m| m.get("usage")) {
                    self.usage = Some(usage.clone());
                }
                self.forward(name, data, &event, out);
            }
            "content_block_start" => return self.on_block_start(name, data, event, out),
            "content_block_delta" => return self.on_block_delta(name, data, event, out),
            "content_block_stop" => return self.on_block_stop(name, data, event, out),
            "message_delta" => {
                if let Some(delta_usage) = event.get("usage") {
                    match &mut self.usage {
                        Some(usage) => merge_usage(usage, delta_usage),
                        None => self.usage = Some(delta_usage.clone()),
                    }
                }
                self.forward(name, data, &event, out);
            }
            "message_stop" => {
                self.forward(name, data, &event, out);
                self.ended = true;
                return Flow::Finished;
            }
            "error" => {
                // The provider's own error event (such as `overloaded_error` after a
                // 200), forwarded as it came; the partial message is not a whole turn.
                sse::encode_named("error", data, out);
                self.error = Some(StreamError::Upstream("error event".to_owned()));
                self.ended = true;
                return Flow::Failed;
            }
            _ => self.forward(name, data, &event, out),
        }
        Flow::Continue
    }

    fn on_block_start(&mut self, name: &str, data: &str, event: Value, out: &mut String) -> Flow {
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        let mut block = event.get("content_block").cloned().unwrap_or(Value::Null);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let initial = block
                    .get_mut("text")
                    .map(|t| std::mem::replace(t, json!("")))
                    .and_then(|t| t.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let text = TextStream::new(
                    self.guard.clone(),
                    Direction::Output,
                    self.mode,
                    self.max_hold_back_bytes,
                );
                self.block = OpenBlock::Text { index, text };
                let start =
                    json!({"type": "content_block_start", "index": index, "content_block": block});
                self.emit(name, &start, out);
                if !initial.is_empty() {
                    return self.push_text(index, &initial, out);
                }
            }
            Some("tool_use") => {
                self.block = OpenBlock::ToolUse {
                    index,
                    block,
                    input: String::new(),
                };
            }
            Some("thinking") if self.guard.policy().thinking.scan => {
                let text = block
                    .get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.block = OpenBlock::Thinking {
                    index,
                    text,
                    events: vec![(name.to_owned(), event)],
                };
            }
            _ => {
                self.block = OpenBlock::Passthrough;
                self.forward(name, data, &event, out);
            }
        }
        Flow::Continue
    }

    fn on_block_delta(&mut self, name: &str, data: &str, event: Value, out: &mut String) -> Flow {
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        let delta = event.get("delta");
        let kind = delta.and_then(|d| d.get("type")).and_then(Value::as_str);
        let fragment = |field: &str| {
            delta
                .and_then(|d| d.get(field))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        match (&mut self.block, kind) {
            (OpenBlock::Text { index: open, .. }, Some("text_delta")) if *open == index => {
                let text = fragment("text").to_owned();
                return self.push_text(index, &text, out);
            }
            (
                OpenBlock::ToolUse {
                    index: open, input, ..
                },
                Some("input_json_delta"),
            ) if *open == index => {
                input.push_str(fragment("partial_json"));
            }
            (
                OpenBlock::Thinking {
                    index: open,
                    text,
                    events,
                },
                _,
            ) if *open == index => {
                if kind == Some("thinking_delta") {
                    text.push_str(fragment("thinking"));
                }
                events.push((name.to_owned(), event.clone()));
            }
            _ => self.forward(name, data, &event, out),
        }
        Flow::Continue
    }

    fn on_block_stop(&mut self, name: &str, data: &str, event: Value, out: &mut String) -> Flow {
        match std::mem::replace(&mut self.block, OpenBlock::Passthrough) {
            OpenBlock::Text { index, text } => {
                if let Some(flow) = self.close_text(index, text, out) {
                    return flow;
                }
                self.forward(name, data, &event, out);
            }
            OpenBlock::ToolUse {
                index,
                block,
                input,
            } => return self.release_tool_use(index, block, &input, out),
            OpenBlock::Thinking {
                index,
                text,
                events,
            } => {
                let evaluation = check_thinking_text(&self.guard, Direction::Output, &text);
                self.findings.extend(evaluation.findings);
                if self.is_blocking(&evaluation.verdict) {
                    return self.block_stream(&evaluation.verdict, None, index, out);
                }
                for (held_name, held) in events {
                    self.emit(&held_name, &held, out);
                }
                self.forward(name, data, &event, out);
            }
            OpenBlock::Passthrough => self.forward(name, data, &event, out),
        }
        Flow::Continue
    }

    /// Releases what a text block still holds back. Returns the flow to stop with when
    /// the held text blocks the stream.
    fn close_text(&mut self, index: u64, mut text: TextStream, out: &mut String) -> Option<Flow> {
        let release = text.finish();
        self.hold_back_overflows += text.hold_back_overflows;
        self.findings.extend(release.findings);
        if self.is_blocking(&release.verdict) {
            let released_any = text.released_len() > 0;
            let open_text = Some((index, released_any));
            return Some(self.block_stream(&release.verdict, open_text, index, out));
        }
        self.emit_text(index, &release.text, out);
        None
    }

    /// Checks a whole tool call and releases it, or blocks the stream.
    fn release_tool_use(
        &mut self,
        index: u64,
        mut block: Value,
        input: &str,
        out: &mut String,
    ) -> Flow {
        let mut evaluation = Evaluation::new();
        match parse_tool_input(input) {
            Some(parsed) => {
                block["input"] = parsed;
                guard_tool_use(&self.guard, Direction::Output, &mut block, &mut evaluation);
            }
            None => {
                // Input that is not a JSON object fails every argument constraint; its
                // text is checked as content and released as the model wrote it.
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let check = self.guard.check_action(Direction::Output, name, None);
                evaluation.absorb(check.verdict, check.findings);
                let mut text = input.to_owned();
                evaluation.absorb_all(guard_arguments(&self.guard, Direction::Output, &mut text));
                return self.finish_tool_use(index, block, Some(text), evaluation, out);
            }
        }
        self.finish_tool_use(index, block, None, evaluation, out)
    }

    fn finish_tool_use(
        &mut self,
        index: u64,
        mut block: Value,
        raw_input: Option<String>,
        evaluation: Evaluation,
        out: &mut String,
    ) -> Flow {
        self.findings.extend(evaluation.findings);
        if self.is_blocking(&evaluation.verdict) {
            return self.block_stream(&evaluation.verdict, None, index, out);
        }
        restore_block(&self.guard, &mut block);
        let mut events = block_events(index, &block);
        if let Some(raw) = raw_input {
            let raw = self.guard.restore(&raw).into_owned();
            for (_, payload) in &mut events {
                if payload["delta"]["type"] == json!("input_json_delta") {
                    payload["delta"]["partial_json"] = json!(raw);
                }
            }
        }
        for (name, payload) in events {
            self.emit(name, &payload, out);
        }
        Flow::Continue
    }

    fn push_text(&mut self, index: u64, delta: &str, out: &mut String) -> Flow {
        let OpenBlock::Text { text, .. } = &mut self.block else {
            return Flow::Continue;
        };
        let release = text.push(delta);
        let released_any = text.released_len() > 0;
        self.findings.extend(release.findings);
        if self.is_blocking(&release.verdict) {
            return self.block_stream(&release.verdict, Some((index, released_any)), index, out);
        }
        self.emit_text(index, &release.text, out);
        Flow::Continue
    }

    fn emit_text(&mut self, index: u64, text: &str, out: &mut String) {
        if text.is_empty() {
            return;
        }
        let delta = json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}});
        self.emit("content_block_delta", &delta, out);
    }

    fn is_blocking(&self, verdict: &Verdict) -> bool {
        self.mode == StreamMode::Guarded
            && matches!(verdict, Verdict::Block { .. } | Verdict::Escalate { .. })
    }

    /// Ends the client's stream after a blocking verdict: with an `error` event, or with
    /// the refusal text and `stop_reason: refusal`. `open_text` is the text block the
    /// refusal continues, with its index and whether text was already released in it.
    /// Without one, the refusal gets a new text block at `index`.
    fn block_stream(
        &mut self,
        verdict: &Verdict,
        open_text: Option<(u64, bool)>,
        index: u64,
        out: &mut String,
    ) -> Flow {
        let Some(BlockingRule {
            rule,
            kind,
            escalate,
        }) = verdict.blocking_rule()
        else {
            return Flow::Continue;
        };
        tracing::info!(rule.id = %rule, kind, "guardrail blocked a streamed response");
        self.ended = true;
        let policy = self.guard.policy().clone();
        if policy.on_block == BlockResponse::Error {
            let body = json!({"type": "error", "error": {
                "type": "permission_error",
                "message": super::block_message(&self.guard, &rule, kind, escalate),
            }});
            sse::encode_named("error", &body.to_string(), out);
            self.error = Some(StreamError::Blocked { rule });
            return Flow::Failed;
        }
        match open_text {
            Some((index, released_any)) => {
                // A blank line keeps the refusal from running on from mid-sentence.
                let refusal = if released_any {
                    format!("\n\n{}", policy.refusal)
                } else {
                    policy.refusal.clone()
                };
                self.emit_text(index, &refusal, out);
                let stop = json!({"type": "content_block_stop", "index": index});
                self.emit("content_block_stop", &stop, out);
            }
            None => {
                let block = json!({"type": "text", "text": policy.refusal});
                for (name, payload) in block_events(index, &block) {
                    self.emit(name, &payload, out);
                }
            }
        }
        let output_tokens = self
            .usage
            .as_ref()
            .and_then(|u| u.get("output_tokens"))
            .cloned()
            .unwrap_or(json!(0));
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": "refusal", "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}});
        self.emit("message_delta", &delta, out);
        self.emit("message_stop", &json!({"type": "message_stop"}), out);
        Flow::Finished
    }

    /// Forwards an upstream event unchanged.
    fn forward(&mut self, name: &str, data: &str, event: &Value, out: &mut String) {
        self.released.push(event);
        self.write_retry(out);
        sse::encode_named(name, data, out);
    }

    /// Sends an event the sidecar built.
    fn emit(&mut self, name: &str, event: &Value, out: &mut String) {
        self.released.push(event);
        self.write_retry(out);
        sse::encode_named(name, &event.to_string(), out);
    }

    fn write_retry(&mut self, out: &mut String) {
        if let Some(retry) = self.pending_retry.take() {
            out.push_str(&format!("retry: {retry}\n"));
        }
    }
}

/// Returns the `error` event type for a sidecar-detected upstream failure code.
fn failure_type(code: &str) -> &'static str {
    match code {
        "upstream_timeout" => "timeout_error",
        _ => "api_error",
    }
}

impl GuardedStream for AnthropicStream {
    fn on_frame(&mut self, frame: Frame, out: &mut String) -> Flow {
        if self.ended {
            return if self.error.is_some() {
                Flow::Failed
            } else {
                Flow::Finished
            };
        }
        let Some(event) = take_event(frame, out, &mut self.pending_retry) else {
            return Flow::Continue;
        };
        let payload: Value = match serde_json::from_str(&event.data) {
            Ok(payload) => payload,
            Err(_) => {
                return self.fail(
                    out,
                    "upstream sent a stream event that is not JSON",
                    "upstream_invalid_response",
                );
            }
        };
        // The payload's `type` is authoritative; the `event:` line repeats it.
        let name = payload
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(event.event)
            .unwrap_or_default();
        self.on_event(&name, &event.data, payload, out)
    }

    fn on_upstream_end(&mut self, out: &mut String) -> Flow {
        if self.ended {
            return if self.error.is_some() {
                Flow::Failed
            } else {
                Flow::Finished
            };
        }
        self.fail(
            out,
            "upstream closed the stream before message_stop",
            "upstream_unavailable",
        )
    }

    fn fail(&mut self, out: &mut String, message: &str, code: &str) -> Flow {
        if self.ended {
            return Flow::Failed;
        }
        // Text still held back is checked and released first, so the client keeps all
        // of the partial message that passed the rules.
        if let OpenBlock::Text { index, text } =
            std::mem::replace(&mut self.block, OpenBlock::Passthrough)
            && let Some(flow) = self.close_text(index, text, out)
        {
            return flow;
        }
        let body =
            json!({"type": "error", "error": {"type": failure_type(code), "message": message}});
        sse::encode_named("error", &body.to_string(), out);
        self.error = Some(StreamError::Upstream(code.to_owned()));
        self.ended = true;
        Flow::Failed
    }

    fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    fn hold_back_overflows(&self) -> u64 {
        let open = match &self.block {
            OpenBlock::Text { text, .. } => text.hold_back_overflows,
            _ => 0,
        };
        self.hold_back_overflows + open
    }

    fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn reported_usage(&self) -> Option<(u64, u64)> {
        let usage = read_usage(self.usage.as_ref()?)?;
        Some((usage.input, usage.output))
    }

    fn response_message(&self) -> Option<Message> {
        response_message(&self.released.to_message())
    }
}

#[cfg(test)]
mod tests;
