//! Token counting with tiktoken's encodings.
//!
//! Text is encoded with tiktoken's ordinary path, so special-token strings such as
//! `<|endoftext|>` inside user text count as the ordinary text they are and never raise
//! an error.
//!
//! Chat overhead follows OpenAI's cookbook "How to count tokens with tiktoken", whose
//! published counts the API confirmed for gpt-3.5-turbo, gpt-4, gpt-4o and gpt-4o-mini:
//! 3 tokens per message, 1 more when a message has a `name`, the encoded value of every
//! string field (role, content, name), and 3 tokens priming the reply. Tool definitions
//! use the cookbook's formula too. Tool calls inside messages, images and models other
//! than those four have no published method; their counts here are estimates.
//!
//! The encoding tables are parsed on first use (about 3.6 MB of text for o200k_base).
//! Call [`warm_up`] at start-up to parse them on a blocking thread instead of on the
//! first request, without delaying readiness.

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

use crate::dialect::{Message, Part, Role};

/// A tiktoken encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series.
    O200kBase,
    /// gpt-4 (including gpt-4-turbo), gpt-3.5-turbo and the text-embedding-3 models.
    Cl100kBase,
}

/// Encoding for models this module does not recognize. OpenAI's current models all use
/// o200k_base, so it is the closest guess for a new model name. For other vendors'
/// models every tiktoken count is an estimate anyway.
pub const DEFAULT_ENCODING: Encoding = Encoding::O200kBase;

/// Tokens added per message by the chat format.
pub const TOKENS_PER_MESSAGE: u32 = 3;
/// Tokens added when a message has a `name` field.
pub const TOKENS_PER_NAME: u32 = 1;
/// Tokens that prime the assistant's reply (`<|start|>assistant<|message|>`).
pub const REPLY_PRIMING_TOKENS: u32 = 3;
/// Estimated tokens around each tool call in an assistant message (recipient and
/// argument markers). No published method exists; 3 matches the per-message overhead.
pub const TOOL_CALL_OVERHEAD_TOKENS: u32 = 3;
/// Estimate for an image part: OpenAI bills a low-detail image as 85 tokens, and
/// high-detail images cost more, so this is a lower bound.
pub const IMAGE_PART_TOKENS: u32 = 85;

impl Encoding {
    /// Returns the encoding a model uses; unknown models get [`DEFAULT_ENCODING`].
    pub fn for_model(model: &str) -> Encoding {
        let model = base_model_name(model);
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| model.starts_with(p));
        if starts(&[
            "gpt-4o",
            "chatgpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "codex-",
        ]) {
            return Encoding::O200kBase;
        }
        if is_o_series(model) {
            return Encoding::O200kBase;
        }
        if starts(&["gpt-4", "gpt-3.5", "gpt-35", "text-embedding-"]) {
            return Encoding::Cl100kBase;
        }
        DEFAULT_ENCODING
    }

    /// Returns tiktoken's name for the encoding.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Counts the tokens of `text`, special-token strings included as ordinary text.
    pub fn count(self, text: &str) -> u32 {
        if text.is_empty() {
            return 0;
        }
        saturate(self.bpe().encode_ordinary(text).len())
    }
}

/// Returns whether `model` is an o-series reasoning model (`o1`, `o3-mini`,
/// `o4-mini-2025-04-16`, ...): `o`, digits, then the end or `-`.
fn is_o_series(model: &str) -> bool {
    let Some(rest) = model.strip_prefix('o') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && (rest.len() == digits || rest.as_bytes()[digits] == b'-')
}

/// Strips a fine-tune wrapper (`ft:gpt-4o-mini:org::id`) and a provider prefix
/// (`openai/gpt-4o`), leaving the base model name.
pub fn base_model_name(model: &str) -> &str {
    let model = model.trim();
    let model = match model.strip_prefix("ft:") {
        Some(rest) => rest.split(':').next().unwrap_or(rest),
        None => model,
    };
    model.rsplit('/').next().unwrap_or(model)
}

/// Parses the encoding tables on a blocking thread so the first request does not pay
/// for it. Must be called inside a Tokio runtime; the returned handle can be ignored.
pub fn warm_up() -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(|| {
        let started = std::time::Instant::now();
        let _ = Encoding::O200kBase.bpe();
        let _ = Encoding::Cl100kBase.bpe();
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tokenizer tables loaded"
        );
    })
}

/// Counts tokens for one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCounter {
    pub encoding: Encoding,
    /// Whether counts are only estimates: true for models whose vendor tokenizer is not
    /// tiktoken, such as Anthropic's, where the upstream's reported `usage` is the truth.
    pub estimate: bool,
}

impl TokenCounter {
    /// Returns the counter for `model`. Anthropic (`claude-*`) models get an estimate
    /// with cl100k_base: their tokenizer is not public.
    pub fn for_model(model: &str) -> TokenCounter {
        let base = base_model_name(model);
        if base.starts_with("claude") {
            return TokenCounter {
                encoding: Encoding::Cl100kBase,
                estimate: true,
            };
        }
        TokenCounter {
            encoding: Encoding::for_model(model),
            estimate: false,
        }
    }

    /// Counts the tokens of plain text.
    pub fn text(&self, text: &str) -> u32 {
        self.encoding.count(text)
    }

    /// Counts one message of the common model, with its per-message overhead.
    pub fn message(&self, message: &Message) -> u32 {
        let role = match message.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        let mut total = TOKENS_PER_MESSAGE + self.text(role);
        for part in &message.parts {
            total = total.saturating_add(match part {
                Part::Text { text } => self.text(text),
                Part::ToolCall {
                    name, arguments, ..
                } => TOOL_CALL_OVERHEAD_TOKENS + self.text(name) + self.text(arguments),
                Part::ToolResult { text, .. } => self.text(text),
                Part::Other { value } => self.other_part(value),
            });
        }
        total
    }

    /// Counts a conversation of the common model, reply priming included.
    pub fn messages(&self, messages: &[Message]) -> u32 {
        messages.iter().fold(REPLY_PRIMING_TOKENS, |sum, m| {
            sum.saturating_add(self.message(m))
        })
    }

    /// Counts Chat Completions messages as JSON, reply priming included.
    pub fn openai_messages(&self, messages: &[Value]) -> u32 {
        messages.iter().fold(REPLY_PRIMING_TOKENS, |sum, m| {
            sum.saturating_add(self.openai_message(m))
        })
    }

    /// Counts one Chat Completions message: every string field's value (role, content,
    /// name, tool_call_id), text content parts, tool calls, and the overheads.
    pub fn openai_message(&self, message: &Value) -> u32 {
        let Value::Object(fields) = message else {
            return TOKENS_PER_MESSAGE;
        };
        let mut total = TOKENS_PER_MESSAGE;
        for (key, value) in fields {
            let tokens = match (key.as_str(), value) {
                ("tool_calls", Value::Array(calls)) => calls
                    .iter()
                    .map(|call| self.openai_tool_call(call))
                    .fold(0u32, u32::saturating_add),
                ("content", Value::Array(parts)) => parts
                    .iter()
                    .map(|part| match part.get("text").and_then(Value::as_str) {
                        Some(text) => self.text(text),
                        None => self.other_part(part),
                    })
                    .fold(0u32, u32::saturating_add),
                (_, Value::String(text)) => self.text(text),
                _ => 0,
            };
            total = total.saturating_add(tokens);
            if key == "name" {
                total = total.saturating_add(TOKENS_PER_NAME);
            }
        }
        total
    }

    fn openai_tool_call(&self, call: &Value) -> u32 {
        let function = call.get("function");
        let field = |name: &str| {
            function
                .and_then(|f| f.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        TOOL_CALL_OVERHEAD_TOKENS + self.text(field("name")) + self.text(field("arguments"))
    }

    fn other_part(&self, value: &Value) -> u32 {
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        if kind.contains("image") {
            IMAGE_PART_TOKENS
        } else {
            self.text(&value.to_string())
        }
    }

    /// Counts Chat Completions tool definitions (`tools`), following the cookbook's
    /// `num_tokens_for_tools`: per function a fixed start, `name:description`, and per
    /// parameter property `key:type:description` plus enum values; a fixed end.
    /// A trailing period of a description is not counted, as in the cookbook.
    pub fn openai_tools(&self, tools: &[Value]) -> u32 {
        if tools.is_empty() {
            return 0;
        }
        let overhead = ToolOverhead::for_encoding(self.encoding);
        let mut total: i64 = 0;
        for tool in tools {
            let Some(function) = tool.get("function") else {
                continue;
            };
            total += overhead.function_start;
            let name = string_field(function, "name");
            let description = string_field(function, "description");
            let description = description.strip_suffix('.').unwrap_or(description);
            total += i64::from(self.text(&format!("{name}:{description}")));
            let properties = function
                .get("parameters")
                .and_then(|p| p.get("properties"))
                .and_then(Value::as_object);
            if let Some(properties) = properties.filter(|p| !p.is_empty()) {
                total += overhead.properties_start;
                for (key, property) in properties {
                    total += overhead.property;
                    if let Some(values) = property.get("enum").and_then(Value::as_array) {
                        total += overhead.enum_start;
                        for item in values {
                            total += overhead.enum_item;
                            let text = match item {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            total += i64::from(self.text(&text));
                        }
                    }
                    let kind = match property.get("type") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    let description = string_field(property, "description");
                    let description = description.strip_suffix('.').unwrap_or(description);
                    total += i64::from(self.text(&format!("{key}:{kind}:{description}")));
                }
            }
        }
        total += overhead.end;
        u32::try_from(total.max(0)).unwrap_or(u32::MAX)
    }

    /// Counts a whole Chat Completions request body: messages and tools.
    pub fn openai_request(&self, body: &Map<String, Value>) -> u32 {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(0, |m| self.openai_messages(m));
        let tools = body
            .get("tools")
            .and_then(Value::as_array)
            .map_or(0, |t| self.openai_tools(t));
        messages.saturating_add(tools)
    }
}

/// The cookbook's constants for tool definitions, measured against the API for
/// gpt-4o and gpt-4o-mini (o200k_base) and gpt-3.5-turbo and gpt-4 (cl100k_base).
struct ToolOverhead {
    function_start: i64,
    properties_start: i64,
    property: i64,
    enum_start: i64,
    enum_item: i64,
    end: i64,
}

impl ToolOverhead {
    fn for_encoding(encoding: Encoding) -> ToolOverhead {
        let function_start = match encoding {
            Encoding::O200kBase => 7,
            Encoding::Cl100kBase => 10,
        };
        ToolOverhead {
            function_start,
            properties_start: 3,
            property: 3,
            enum_start: -3,
            enum_item: 3,
            end: 12,
        }
    }
}

fn string_field<'a>(value: &'a Value, name: &str) -> &'a str {
    value.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn saturate(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
