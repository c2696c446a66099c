//! Server-sent events: an incremental decoder from bytes to events and an encoder back.
//!
//! The decoder follows the WHATWG HTML "event stream interpretation" rules. Lines end in
//! LF, CRLF or a lone CR, and a CR and LF may arrive in different reads. The space after a
//! field's colon is optional, several `data` lines are joined with `\n`, and lines starting
//! with `:` are comments. A block without `data` dispatches no event, an event may be split
//! across reads at any byte (inside a UTF-8 character too), and an event larger than the
//! configured maximum is an error instead of unbounded memory.
//!
//! It is written here rather than taken from a crate because the streaming guard needs
//! comment lines as frames (they are forwarded as keep-alives) and a hard bound on the size
//! of one event, and `eventsource-stream`'s documented `Event` (0.1.2) carries only the
//! event name, data, id and retry.

use std::fmt::Write as _;

/// Default bound on one event: far above any chat completion chunk, far below memory
/// pressure.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
    /// Reconnection time in milliseconds, when the block set one.
    pub retry: Option<u64>,
}

/// Decoder output: an event, a comment (the text after `:`), or a block that set only
/// `retry`, which must reach the client without dispatching an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Event(Event),
    Comment(String),
    Retry(u64),
}

/// Error from decoding a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event larger than the limit of {limit_bytes} bytes")]
    EventTooLarge { limit_bytes: usize },
    #[error("event stream is not valid UTF-8")]
    InvalidUtf8,
}

/// An incremental decoder. Feed it bytes as they arrive; it returns complete frames.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous read ended in CR, so a leading LF in the next read ends nothing.
    skip_lf: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    /// Bytes in the current block so far, checked against the limit.
    block_bytes: usize,
    max_event_bytes: usize,
}

impl Decoder {
    pub fn new(max_event_bytes: usize) -> Decoder {
        Decoder {
            line: Vec::new(),
            skip_lf: false,
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            retry: None,
            block_bytes: 0,
            max_event_bytes,
        }
    }

    /// Decodes `bytes`, appending complete frames to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Frame>) -> Result<(), DecodeError> {
        let mut rest = bytes;
        if self.skip_lf {
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
            self.skip_lf = false;
        }
        while !rest.is_empty() {
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(at) => {
                    self.push_line_bytes(&rest[..at])?;
                    let ending = rest[at];
                    rest = &rest[at + 1..];
                    if ending == b'\r' {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            None => self.skip_lf = true,
                            Some(_) => {}
                        }
                    }
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, out)?;
                }
                None => {
                    self.push_line_bytes(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    /// Ends the stream. A block without its terminating blank line is incomplete and, as
    /// the standard requires, dropped. Returns whether such a block was pending.
    pub fn finish(&mut self) -> bool {
        let pending = !self.line.is_empty() || self.has_data;
        self.reset_block();
        self.line.clear();
        pending
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        self.block_bytes += bytes.len();
        if self.block_bytes > self.max_event_bytes {
            return Err(DecodeError::EventTooLarge {
                limit_bytes: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<Frame>) -> Result<(), DecodeError> {
        let line = std::str::from_utf8(line).map_err(|_| DecodeError::InvalidUtf8)?;
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Frame::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_owned(),
            ));
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        if self.has_data {
            out.push(Frame::Event(Event {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
                id: self.id.take(),
                retry: self.retry.take(),
            }));
        } else if let Some(retry) = self.retry {
            out.push(Frame::Retry(retry));
        }
        self.reset_block();
    }

    fn reset_block(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.event = None;
        self.id = None;
        self.retry = None;
        self.block_bytes = 0;
    }
}

/// Parses a whole event stream, keeping only events. Returns an error when the stream
/// is not UTF-8 or an event exceeds `max_event_bytes`.
pub fn parse(text: &str, max_event_bytes: usize) -> Result<Vec<Event>, DecodeError> {
    let mut decoder = Decoder::new(max_event_bytes);
    let mut frames = Vec::new();
    decoder.feed(text.as_bytes(), &mut frames)?;
    Ok(frames
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Event(event) => Some(event),
            Frame::Comment(_) | Frame::Retry(_) => None,
        })
        .collect())
}

/// Encodes one `data` event; multi-line data becomes several `data:` lines.
pub fn encode_data(data: &str, out: &mut String) {
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

/// Encodes one event with an `event:` name line, as Anthropic's streams carry.
pub fn encode_named(name: &str, data: &str, out: &mut String) {
    let _ = writeln!(out, "event: {name}");
    encode_data(data, out);
}

/// Encodes a frame in the canonical form: LF endings, one space after each colon.
pub fn encode_frame(frame: &Frame, out: &mut String) {
    match frame {
        Frame::Event(event) => {
            if let Some(name) = &event.event {
                let _ = writeln!(out, "event: {name}");
            }
            if let Some(id) = &event.id {
                let _ = writeln!(out, "id: {id}");
            }
            if let Some(retry) = event.retry {
                let _ = writeln!(out, "retry: {retry}");
            }
            encode_data(&event.data, out);
        }
        Frame::Comment(text) => {
            for line in text.split('\n') {
                let _ = writeln!(out, ": {line}");
            }
            out.push('\n');
        }
        Frame::Retry(retry) => {
            let _ = write!(out, "retry: {retry}\n\n");
        }
    }
}

#[cfg(test)]
mod tests;
