//! The streaming guard's adapter for OpenAI Chat Completions chunks.
//!
//! Each upstream event is parsed once. Text deltas go through a [`TextStream`] per
//! choice and are re-emitted in the upstream's chunk envelope as soon as they may be
//! released. Tool-call deltas are assembled by `index` and released whole, after the
//! action and PII checks, when the choice finishes. Role and unknown delta fields pass
//! through at once. Per-token `logprobs` are dropped, because held-back and rewritten
//! text no longer lines up with the upstream's tokens.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::text::{Release, StreamMode, TextStream};
pub use super::{Flow, StreamError};
use super::{GuardedStream, take_event};
use crate::dialect::Message;
use crate::dialect::openai::{
    AssembledCall, StreamAssembly, guard_tool_calls, read_usage, response_message,
    restore_tool_calls,
};
use crate::guard::{BlockingRule, Finding, Guard, Verdict};
use crate::policy::spec::{BlockResponse, Direction};
use crate::sse::{self, Frame};

#[derive(Debug)]
struct ChoiceState {
    content: TextStream,
    refusal: TextStream,
    calls: BTreeMap<u64, AssembledCall>,
    finished: bool,
}

/// The guard for one streamed chat completion.
#[derive(Debug)]
pub struct OpenAiStream {
    guard: Arc<Guard>,
    mode: StreamMode,
    max_hold_back_bytes: usize,
    /// The sidecar added `stream_options.include_usage`, so the usage chunk is its own.
    strip_usage: bool,
    envelope: Option<Map<String, Value>>,
    choices: BTreeMap<u64, ChoiceState>,
    findings: Vec<Finding>,
    usage: Option<Value>,
    /// Chunks the client received, assembled for the stored turn.
    released: StreamAssembly,
    pub error: Option<StreamError>,
    ended: bool,
    /// A `retry` value waiting for the next event to carry it.
    pending_retry: Option<u64>,
}

impl OpenAiStream {
    pub fn new(
        guard: Arc<Guard>,
        mode: StreamMode,
        max_hold_back_bytes: usize,
        strip_usage: bool,
    ) -> OpenAiStream {
        OpenAiStream {
            guard,
            mode,
            max_hold_back_bytes,
            strip_usage,
            envelope: None,
            choices: BTreeMap::new(),
            findings: Vec::new(),
            usage: None,
            released: StreamAssembly::default(),
            error: None,
            ended: false,
            pending_retry: None,
        }
    }

    /// Findings since the last call, for metrics.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// Token usage reported by the upstream, if it sent any.
    pub fn usage(&self) -> Option<&Value> {
        self.usage.as_ref()
    }

    /// Returns the completion the client received, as one `chat.completion` object.
    pub fn released_completion(&self) -> Value {
        self.released.to_completion()
    }

    /// Times a channel's hold-back limit forced text out unguarded.
    pub fn hold_back_overflows(&self) -> u64 {
        self.choices
            .values()
            .map(|c| c.content.hold_back_overflows + c.refusal.hold_back_overflows)
            .sum()
    }

    /// Handles one upstream frame, appending what the client must receive to `out`.
    pub fn on_frame(&mut self, frame: Frame, out: &mut String) -> Flow {
        if self.ended {
            return Flow::Finished;
        }
        let Some(event) = take_event(frame, out, &mut self.pending_retry) else {
            return Flow::Continue;
        };
        if event.data.trim() == "[DONE]" {
            return self.finish_all(out);
        }
        let chunk: Value = match serde_json::from_str(&event.data) {
            Ok(chunk) => chunk,
            Err(_) => {
                return self.fail(
                    out,
                    "upstream sent a stream event that is not JSON",
                    "upstream_invalid_response",
                );
            }
        };
        if chunk.get("error").is_some() {
            // The provider's own error event, forwarded as it came.
            sse::encode_data(&event.data, out);
            self.error = Some(StreamError::Upstream("error event".to_owned()));
            self.ended = true;
            return Flow::Failed;
        }
        self.on_chunk(chunk, out)
    }

    /// Handles the end of the upstream body. A stream that ends after every choice
    /// finished is complete even without `[DONE]`; otherwise the client gets an error.
    pub fn on_upstream_end(&mut self, out: &mut String) -> Flow {
        if self.ended {
            return if self.error.is_some() {
                Flow::Failed
            } else {
                Flow::Finished
            };
        }
        let all_finished = !self.choices.is_empty() && self.choices.values().all(|c| c.finished);
        if all_finished {
            return self.finish_all(out);
        }
        self.fail(
            out,
            "upstream closed the stream before the response was complete",
            "upstream_unavailable",
        )
    }

    /// Ends the client's stream with an error event, such as after a connection reset.
    /// Text still held back is checked and released first, so the client keeps all of the
    /// partial response that passed the rules.
    pub fn fail(&mut self, out: &mut String, message: &str, code: &str) -> Flow {
        if !self.ended {
            for index in self.open_choices() {
                if let Some(flow) = self.flush_text(index, Map::new(), out) {
                    return flow;
                }
            }
            let body = json!({"error": {"message": message, "type": "upstream_error", "code": code, "param": null}});
            sse::encode_data(&body.to_string(), out);
            self.error = Some(StreamError::Upstream(code.to_owned()));
            self.ended = true;
        }
        Flow::Failed
    }

    fn on_chunk(&mut self, mut chunk: Value, out: &mut String) -> Flow {
        if self.envelope.is_none()
            && let Value::Object(fields) = &chunk
        {
            let envelope: Map<String, Value> = fields
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "choices" | "usage"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.released.push(&Value::Object(envelope.clone()));
            self.envelope = Some(envelope);
        }
        let usage = chunk.get("usage").filter(|u| !u.is_null()).cloned();
        if let Some(usage) = &usage {
            self.usage = Some(usage.clone());
        }
        let choices = match chunk.get_mut("choices") {
            Some(Value::Array(choices)) => std::mem::take(choices),
            _ => Vec::new(),
        };
        if choices.is_empty() {
            // The usage chunk (or an empty keep-alive chunk).
            if usage.is_some() && self.strip_usage {
                return Flow::Continue;
            }
            sse::encode_data(&chunk.to_string(), out);
            return Flow::Continue;
        }
        for choice in choices {
            let flow = self.on_choice(choice, out);
            if flow != Flow::Continue {
                return flow;
            }
        }
        if let Some(usage) = usage
            && !self.strip_usage
        {
            self.emit(out, json!([]), Some(usage));
        }
        Flow::Continue
    }

    fn on_choice(&mut self, choice: Value, out: &mut String) -> Flow {
        let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
        let finish_reason = choice
            .get("finish_reason")
            .filter(|r| !r.is_null())
            .cloned();
        self.ensure_choice(index);

        let mut passthrough = Map::new();
        let mut content = None;
        let mut refusal = None;
        if let Some(Value::Object(delta)) = choice.get("delta") {
            for (key, value) in delta {
                match key.as_str() {
                    "content" => content = value.as_str().map(str::to_owned),
                    "refusal" => refusal = value.as_str().map(str::to_owned),
                    "tool_calls" => self.collect_calls(index, value),
                    _ => {
                        passthrough.insert(key.clone(), value.clone());
                    }
                }
            }
        }

        let mut delta = passthrough;
        if let Some(text) = content {
            let release = self.channel(index, Channel::Content).push(&text);
            if let Some(flow) = self.absorb(index, release, "content", &mut delta, out) {
                return flow;
            }
        }
        if let Some(text) = refusal {
            let release = self.channel(index, Channel::Refusal).push(&text);
            if let Some(flow) = self.absorb(index, release, "refusal", &mut delta, out) {
                return flow;
            }
        }
        if finish_reason.is_none() {
            if !delta.is_empty() {
                self.emit_delta(out, index, delta, None);
            }
            return Flow::Continue;
        }

        // The choice is complete: flush held text, then release checked tool calls.
        if let Some(flow) = self.flush_text(index, delta, out) {
            return flow;
        }
        if let Some(flow) = self.release_calls(index, out) {
            return flow;
        }
        self.emit_delta(out, index, Map::new(), finish_reason);
        if let Some(state) = self.choices.get_mut(&index) {
            state.finished = true;
        }
        Flow::Continue
    }

    fn ensure_choice(&mut self, index: u64) {
        if self.choices.contains_key(&index) {
            return;
        }
        let text = || {
            TextStream::new(
                self.guard.clone(),
                Direction::Output,
                self.mode,
                self.max_hold_back_bytes,
            )
        };
        let state = ChoiceState {
            content: text(),
            refusal: text(),
            calls: BTreeMap::new(),
            finished: false,
        };
        self.choices.insert(index, state);
    }

    fn channel(&mut self, index: u64, channel: Channel) -> &mut TextStream {
        self.ensure_choice(index);
        let state = self
            .choices
            .get_mut(&index)
            .unwrap_or_else(|| unreachable!("ensure_choice inserted the choice"));
        match channel {
            Channel::Content => &mut state.content,
            Channel::Refusal => &mut state.refusal,
        }
    }

    /// Records a release's findings; returns the flow to stop with when it blocks, else
    /// adds its text to `delta[field]`.
    fn absorb(
        &mut self,
        index: u64,
        release: Release,
        field: &str,
        delta: &mut Map<String, Value>,
        out: &mut String,
    ) -> Option<Flow> {
        self.findings.extend(release.findings);
        if let Some(flow) = self.block_if_needed(index, &release.verdict, out) {
            return Some(flow);
        }
        if !release.text.is_empty() {
            let existing = delta
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            delta.insert(field.to_owned(), Value::String(existing + &release.text));
        }
        None
    }

    fn collect_calls(&mut self, index: u64, calls: &Value) {
        let Value::Array(calls) = calls else {
            return;
        };
        self.ensure_choice(index);
        let Some(state) = self.choices.get_mut(&index) else {
            return;
        };
        for call in calls {
            let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            state.calls.entry(call_index).or_default().absorb(call);
        }
    }

    fn release_calls(&mut self, index: u64, out: &mut String) -> Option<Flow> {
        let calls = std::mem::take(&mut self.choices.get_mut(&index)?.calls);
        if calls.is_empty() {
            return None;
        }
        let mut assembled: Vec<Value> = calls.values().map(AssembledCall::to_value).collect();
        let evaluation = guard_tool_calls(&self.guard, &mut assembled);
        self.findings.extend(evaluation.findings);
        let verdict = match self.mode {
            StreamMode::Guarded => evaluation.verdict,
            StreamMode::Monitor => Verdict::Allow,
        };
        if let Some(flow) = self.block_if_needed(index, &verdict, out) {
            return Some(flow);
        }
        restore_tool_calls(&self.guard, &mut assembled);
        for (position, call) in assembled.iter_mut().enumerate() {
            if let Value::Object(fields) = call {
                fields.insert("index".to_owned(), json!(position));
            }
        }
        let mut delta = Map::new();
        delta.insert("tool_calls".to_owned(), Value::Array(assembled));
        self.emit_delta(out, index, delta, None);
        None
    }

    fn block_if_needed(&mut self, index: u64, verdict: &Verdict, out: &mut String) -> Option<Flow> {
        let BlockingRule {
            rule,
            kind,
            escalate,
        } = verdict.blocking_rule()?;
        tracing::info!(rule.id = %rule, kind, "guardrail blocked a streamed response");
        self.ended = true;
        let policy = self.guard.policy();
        if policy.on_block == BlockResponse::Error {
            let code = if escalate {
                "approval_required"
            } else {
                "blocked_by_policy"
            };
            let body = json!({"error": {
                "message": super::block_message(&self.guard, &rule, kind, escalate),
                "type": "guardrail_violation",
                "code": code,
                "param": null,
            }});
            sse::encode_data(&body.to_string(), out);
            self.error = Some(StreamError::Blocked { rule });
            return Some(Flow::Failed);
        }
        let mut delta = Map::new();
        // The refusal follows the text already released; a blank line keeps it from
        // running on from the middle of a sentence.
        let released_text = self
            .choices
            .get(&index)
            .is_some_and(|c| c.content.released_len() > 0);
        let refusal = if released_text {
            format!("\n\n{}", policy.refusal)
        } else {
            policy.refusal.clone()
        };
        delta.insert("content".to_owned(), Value::String(refusal));
        self.emit_delta(out, index, delta, None);
        self.emit_delta(out, index, Map::new(), Some(json!("content_filter")));
        sse::encode_data("[DONE]", out);
        Some(Flow::Finished)
    }

    /// Indexes of the choices that have not finished.
    fn open_choices(&self) -> Vec<u64> {
        self.choices
            .iter()
            .filter(|(_, c)| !c.finished)
            .map(|(i, _)| *i)
            .collect()
    }

    /// Finishes a choice's content and refusal channels, adds what they release to
    /// `delta` and emits it. Returns the flow to stop with when the held text blocks.
    fn flush_text(
        &mut self,
        index: u64,
        mut delta: Map<String, Value>,
        out: &mut String,
    ) -> Option<Flow> {
        for (channel, field) in [(Channel::Content, "content"), (Channel::Refusal, "refusal")] {
            let release = self.channel(index, channel).finish();
            if let Some(flow) = self.absorb(index, release, field, &mut delta, out) {
                return Some(flow);
            }
        }
        if !delta.is_empty() {
            self.emit_delta(out, index, delta, None);
        }
        None
    }

    fn finish_all(&mut self, out: &mut String) -> Flow {
        for index in self.open_choices() {
            if let Some(flow) = self.flush_text(index, Map::new(), out) {
                return flow;
            }
            if let Some(flow) = self.release_calls(index, out) {
                return flow;
            }
        }
        sse::encode_data("[DONE]", out);
        self.ended = true;
        Flow::Finished
    }

    fn emit_delta(
        &mut self,
        out: &mut String,
        index: u64,
        delta: Map<String, Value>,
        finish_reason: Option<Value>,
    ) {
        let choice = json!([{
            "index": index,
            "delta": Value::Object(delta),
            "finish_reason": finish_reason,
        }]);
        self.emit(out, choice, None);
    }

    fn emit(&mut self, out: &mut String, choices: Value, usage: Option<Value>) {
        let mut chunk = self.envelope.clone().unwrap_or_default();
        chunk.insert("choices".to_owned(), choices);
        if let Some(usage) = usage {
            chunk.insert("usage".to_owned(), usage);
        }
        let chunk = Value::Object(chunk);
        self.released.push(&chunk);
        if let Some(retry) = self.pending_retry.take() {
            out.push_str(&format!("retry: {retry}\n"));
        }
        sse::encode_data(&chunk.to_string(), out);
    }
}

impl GuardedStream for OpenAiStream {
    fn on_frame(&mut self, frame: Frame, out: &mut String) -> Flow {
        OpenAiStream::on_frame(self, frame, out)
    }

    fn on_upstream_end(&mut self, out: &mut String) -> Flow {
        OpenAiStream::on_upstream_end(self, out)
    }

    fn fail(&mut self, out: &mut String, message: &str, code: &str) -> Flow {
        OpenAiStream::fail(self, out, message, code)
    }

    fn take_findings(&mut self) -> Vec<Finding> {
        OpenAiStream::take_findings(self)
    }

    fn hold_back_overflows(&self) -> u64 {
        OpenAiStream::hold_back_overflows(self)
    }

    fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn reported_usage(&self) -> Option<(u64, u64)> {
        read_usage(self.usage.as_ref()?)
    }

    fn response_message(&self) -> Option<Message> {
        response_message(&self.released_completion())
    }
}

#[derive(Clone, Copy)]
enum Channel {
    Content,
    Refusal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::pii::HashKey;
    use crate::policy::Policy;
    use crate::sse::Event;

    fn event(data: &str) -> Frame {
        Frame::Event(Event {
            data: data.to_owned(),
            ..Event::default()
        })
    }

    fn guarded() -> OpenAiStream {
        let policy = Policy::embedded_default().expect("embedded policy compiles");
        let guard = Arc::new(Guard::new(Arc::new(policy), Arc::new(HashKey::new(b"k"))));
        OpenAiStream::new(guard, StreamMode::Guarded, 8192, false)
    }

    #[test]
    fn done_flushes_held_refusal_text() {
        let mut stream = guarded();
        let mut out = String::new();
        let chunk =
            r#"{"id":"c","choices":[{"index":0,"delta":{"refusal":"I cannot help with that"}}]}"#;
        assert_eq!(stream.on_frame(event(chunk), &mut out), Flow::Continue);
        assert!(
            !out.contains("that"),
            "the last word is held back until the stream ends: {out}"
        );
        assert_eq!(stream.on_frame(event("[DONE]"), &mut out), Flow::Finished);
        assert!(
            out.contains("\"refusal\":\"that\""),
            "held refusal text is released: {out}"
        );
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    }

    #[test]
    fn upstream_failure_releases_held_text_first() {
        let mut stream = guarded();
        let mut out = String::new();
        let chunk = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Partial answer"}}]}"#;
        stream.on_frame(event(chunk), &mut out);
        assert_eq!(
            stream.fail(&mut out, "reset", "upstream_unavailable"),
            Flow::Failed
        );
        let answer = out.find("\"content\":\"answer\"");
        let error = out.find("upstream_unavailable");
        assert!(answer.is_some(), "held text is released: {out}");
        assert!(
            answer < error,
            "held text comes before the error event: {out}"
        );
    }
}
