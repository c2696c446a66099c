//! The streaming guard: guards a server-sent event stream as it flows, releasing each
//! piece of text as soon as no rule could still match across it.
//!
//! The engine is dialect-neutral: [`text::TextStream`] guards one text channel, and a
//! dialect adapter ([`openai::OpenAiStream`]) maps the provider's events onto channels and
//! tool calls and re-encodes what may be released.

pub mod openai;
pub mod text;

pub use text::{Release, StreamMode, TextStream};
