//! Server-sent events: parsing a complete event stream and encoding events.
//!
//! Parsing follows the WHATWG event-stream rules for a body that has been read whole. It
//! accepts LF, CRLF and lone CR line endings, and `data:` with or without one space after
//! the colon. Several `data` lines are joined with `\n`, comment lines start with `:`, and
//! a block without data produces no event.
//! TODO: the streaming guard needs an incremental decoder (events split across reads);
//! this one takes the whole body.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Parses a whole event stream.
pub fn parse(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let mut current = Event::default();
    let mut has_data = false;
    for line in lines(text) {
        if line.is_empty() {
            if has_data {
                events.push(std::mem::take(&mut current));
            } else {
                current = Event::default();
            }
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if has_data {
                    current.data.push('\n');
                }
                current.data.push_str(value);
                has_data = true;
            }
            "event" => current.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => current.id = Some(value.to_owned()),
            _ => {}
        }
    }
    // A final block without its blank line is incomplete and, per the standard, dropped.
    events
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.find(['\r', '\n']) {
            Some(at) => {
                let line = &rest[..at];
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
                Some(line)
            }
            None => {
                // A last line without a terminator never completes an event; yield it so
                // its fields are read, and the missing blank line drops the block.
                let line = rest;
                rest = "";
                Some(line)
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Vec<String> {
        parse(text).into_iter().map(|e| e.data).collect()
    }

    #[test]
    fn line_endings_are_all_accepted() {
        assert_eq!(
            data("data: a\n\ndata: b\r\n\r\ndata: c\r\r"),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn space_after_colon_is_optional() {
        assert_eq!(data("data:a\n\ndata:  b\n\n"), ["a", " b"]);
    }

    #[test]
    fn multi_line_data_is_joined() {
        assert_eq!(data("data: a\ndata: b\n\n"), ["a\nb"]);
    }

    #[test]
    fn comments_and_empty_blocks_produce_nothing() {
        assert_eq!(data(": ping\n\nevent: x\n\ndata: y\n\n"), ["y"]);
    }

    #[test]
    fn unterminated_block_is_dropped() {
        assert_eq!(data("data: a\n\ndata: b"), ["a"]);
    }

    #[test]
    fn event_name_is_kept() {
        let events = parse("event: message_stop\ndata: {}\n\n");
        assert_eq!(events[0].event.as_deref(), Some("message_stop"));
    }

    #[test]
    fn encode_splits_lines() {
        let mut out = String::new();
        encode_data("a\nb", &mut out);
        assert_eq!(out, "data: a\ndata: b\n\n");
        assert_eq!(data(&out), ["a\nb"]);
    }
}
