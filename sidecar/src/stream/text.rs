//! Incremental guarding of one text channel (a choice's content, a content block).
//!
//! Text is released as soon as no rule could still match across the release point: the
//! guard holds back only the shortest tail that could grow into a PII match or a denied
//! phrase, and never cuts through a match it has already found. A window of released raw
//! text is kept as left context, so that word boundaries and context words before a
//! match are seen exactly as in a whole-message check. The released text therefore equals
//! the whole-message transformation of the same text.
//!
//! When the guard carries a pseudonym vault, the tail that could still grow into a
//! placeholder (`<EMAIL_1>`) is held back too, and released text has its placeholders
//! replaced with the original values.

use std::sync::Arc;

use crate::guard::{Finding, Guard, Verdict};
use crate::policy::spec::{Direction, Mode};

/// Released raw text kept as left context, in bytes. It covers the context-word window
/// of custom entities (64 bytes before a match) and the SSN keyword window (32 bytes)
/// with room to spare.
const LEFT_CONTEXT_BYTES: usize = 160;

/// Text released by one step, with what the rules found in it.
#[derive(Debug, Default)]
pub struct Release {
    pub text: String,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

/// Release policy of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// Hold back what could still match, transform before release, stop on a block.
    Guarded,
    /// Release every delta at once; rules only record findings.
    Monitor,
}

/// One text channel's state.
#[derive(Debug)]
pub struct TextStream {
    guard: Arc<Guard>,
    direction: Direction,
    mode: StreamMode,
    max_hold_back_bytes: usize,
    /// The end of the raw text released so far, at most `LEFT_CONTEXT_BYTES` long.
    context: String,
    /// Raw text received and not yet released (or, in monitor mode, not yet scanned).
    pending: String,
    /// Offset in the channel's whole raw text at which `pending` starts.
    pending_offset: usize,
    /// Times the hold-back limit forced text out before its rules could decide.
    pub hold_back_overflows: u64,
}

impl TextStream {
    pub fn new(
        guard: Arc<Guard>,
        direction: Direction,
        mode: StreamMode,
        max_hold_back_bytes: usize,
    ) -> TextStream {
        TextStream {
            guard,
            direction,
            mode,
            max_hold_back_bytes,
            context: String::new(),
            pending: String::new(),
            pending_offset: 0,
            hold_back_overflows: 0,
        }
    }

    /// Adds a delta and returns what may be released now.
    pub fn push(&mut self, delta: &str) -> Release {
        self.pending.push_str(delta);
        let mut release = self.advance(false);
        if self.mode == StreamMode::Monitor {
            // NOTE: monitor mode releases every delta at once, so a placeholder split
            // across two deltas reaches the client unrestored.
            release.text = self.guard.restore(delta).into_owned();
        }
        release
    }

    /// Releases everything still held, at the end of the channel.
    pub fn finish(&mut self) -> Release {
        let mut release = self.advance(true);
        if self.mode == StreamMode::Monitor {
            release.text.clear();
        }
        release
    }

    /// Bytes of raw text released so far.
    pub fn released_len(&self) -> usize {
        self.pending_offset
    }

    /// Bytes received but not released.
    pub fn held_len(&self) -> usize {
        self.pending.len()
    }

    fn advance(&mut self, at_end: bool) -> Release {
        if self.pending.is_empty() {
            return Release::default();
        }
        let base = self.context.len();
        let mut buffer = String::with_capacity(base + self.pending.len());
        buffer.push_str(&self.context);
        buffer.push_str(&self.pending);

        let scan = self.guard.scan(self.direction, &buffer);
        let mut cut = buffer.len();
        if !at_end {
            let hold = self
                .guard
                .hold_back_len(self.direction, &buffer)
                .max(self.guard.pending_placeholder_len(&buffer));
            cut = base.max(buffer.len() - hold.min(buffer.len()));
            if buffer.len() - cut > self.max_hold_back_bytes {
                // NOTE: the policy compiler rejects rules that need more hold-back than
                // the limit, but a PEM block or a token run may still exceed it. The text
                // past the limit is then released unguarded, and the overflow is counted.
                cut = floor_char_boundary(&buffer, buffer.len() - self.max_hold_back_bytes);
                self.hold_back_overflows += 1;
            }
            while let Some(start) = scan.crossing(cut) {
                let start = start.max(base);
                if start == cut {
                    break;
                }
                cut = start;
            }
        }
        if cut == base {
            return Release::default();
        }

        let check = self
            .guard
            .check_window(self.direction, &buffer, base..cut, &scan);
        let mut findings = check.findings;
        for finding in &mut findings {
            // Offsets become positions in the channel's whole raw text.
            finding.start = finding.start.map(|s| s - base + self.pending_offset);
            finding.end = finding.end.map(|e| e - base + self.pending_offset);
            if self.mode == StreamMode::Monitor {
                finding.mode = Mode::Monitor;
            }
        }
        let verdict = match self.mode {
            StreamMode::Guarded => check.verdict,
            StreamMode::Monitor => Verdict::Allow,
        };

        self.pending_offset += cut - base;
        let context_start = floor_char_boundary(&buffer, cut.saturating_sub(LEFT_CONTEXT_BYTES));
        self.context = buffer[context_start..cut].to_owned();
        self.pending = buffer[cut..].to_owned();
        let text = match self.guard.restore(&check.text) {
            std::borrow::Cow::Borrowed(_) => check.text,
            std::borrow::Cow::Owned(restored) => restored,
        };
        Release {
            text,
            verdict,
            findings,
        }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::pii::HashKey;
    use crate::policy::load::{PolicySource, parse_sources};

    const POLICY: &str = r#"
apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata: {name: stream-unit}
spec:
  topics:
    - {id: no-weapons, phrases: ["build a bomb"]}
  pii:
    - {id: contact, entities: [EMAIL, PHONE], input: redact, output: redact}
    - {id: ids, entities: [US_SSN, CREDIT_CARD, IBAN, SECRET], input: redact, output: redact}
"#;

    fn guard() -> Arc<Guard> {
        let sources = [PolicySource {
            name: "p.yaml".to_owned(),
            text: POLICY.to_owned(),
        }];
        let (document, _) = parse_sources(&sources).expect("policy parses");
        let policy = crate::policy::compile::compile(
            &document,
            crate::policy::PolicyIdentity {
                name: "stream-unit".to_owned(),
                generation: None,
                hash: "0".to_owned(),
                source: "p.yaml".to_owned(),
            },
        )
        .expect("policy compiles");
        Arc::new(Guard::new(Arc::new(policy), Arc::new(HashKey::new(b"k"))))
    }

    fn stream(guard: &Arc<Guard>) -> TextStream {
        TextStream::new(
            guard.clone(),
            Direction::Output,
            StreamMode::Guarded,
            16 * 1024,
        )
    }

    fn run(guard: &Arc<Guard>, deltas: &[&str]) -> (String, Vec<String>) {
        let mut text_stream = stream(guard);
        let mut released = Vec::new();
        for delta in deltas {
            released.push(text_stream.push(delta).text);
        }
        released.push(text_stream.finish().text);
        (released.concat(), released)
    }

    fn whole(guard: &Guard, text: &str) -> String {
        let check = guard.check_content(Direction::Output, &[text]);
        check.text(0, text).to_owned()
    }

    #[test]
    fn split_ssn_is_redacted() {
        let g = guard();
        let (text, _) = run(&g, &["SSN 123-45-", "6789 ok"]);
        assert_eq!(text, "SSN [US_SSN] ok");
    }

    #[test]
    fn split_email_is_redacted() {
        let g = guard();
        let (text, steps) = run(&g, &["Contact bob@", "example.com now"]);
        assert_eq!(text, "Contact [EMAIL] now");
        assert_eq!(
            steps[0], "Contact ",
            "text before the candidate is released at once"
        );
    }

    #[test]
    fn plain_words_are_released_early() {
        let g = guard();
        let (_, steps) = run(&g, &["The parcel ", "left the ", "warehouse today."]);
        assert_eq!(steps[0], "The parcel ");
        assert_eq!(steps[1], "left the ");
    }

    #[test]
    fn split_phrase_blocks() {
        let g = guard();
        let mut text_stream = stream(&g);
        let first = text_stream.push("Here is how to build a");
        assert!(
            !first.text.contains("build"),
            "a phrase prefix is held: {:?}",
            first.text
        );
        let second = text_stream.push(" bomb at home");
        assert!(
            matches!(second.verdict, Verdict::Block { ref rule, .. } if rule.as_ref() == "no-weapons"),
            "{:?}",
            second.verdict
        );
    }

    #[test]
    fn every_split_matches_whole_message() {
        let g = guard();
        let text = "Call +1 415 555 2671 or mail ann.lee@example.org; card 4111 1111 1111 1111, \
                    IBAN DE89370400440532013000, SSN 078-05-1121, ok.";
        let expected = whole(&g, text);
        assert!(
            expected.contains("[EMAIL]") && expected.contains("[CREDIT_CARD]"),
            "{expected}"
        );
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .collect();
        for &cut in &boundaries {
            let (streamed, _) = run(&g, &[&text[..cut], &text[cut..]]);
            assert_eq!(streamed, expected, "split at {cut}");
        }
        // Byte-sized deltas: the worst case for hold-back.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let deltas: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&g, &deltas).0, expected, "one character per delta");
    }

    #[test]
    fn split_placeholder_is_restored() {
        use crate::state::vault::{PseudonymVault, VaultKey};
        let mut vault = PseudonymVault::open(VaultKey::random(), "conversation", &[]);
        assert_eq!(vault.pseudonym("EMAIL", "ann.lee@example.org"), "<EMAIL_1>");
        let g = Arc::new(guard().with_vault(vault));
        let text = "Write to <EMAIL_1> today, not <EMAIL_9> or <b>.";
        let expected = "Write to ann.lee@example.org today, not <EMAIL_9> or <b>.";
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .collect();
        for &cut in &boundaries {
            let (streamed, _) = run(&g, &[&text[..cut], &text[cut..]]);
            assert_eq!(streamed, expected, "split at {cut}");
        }
        let (_, steps) = run(&g, &["Write to <EMA", "IL_1> today"]);
        assert_eq!(
            steps[0], "Write to ",
            "the placeholder's start is held back"
        );
        assert!(
            steps[1].starts_with("ann.lee@example.org"),
            "{:?}",
            steps[1]
        );
    }

    #[test]
    fn finding_offsets_are_absolute() {
        let g = guard();
        let mut text_stream = stream(&g);
        let mut findings = Vec::new();
        for delta in ["0123456789 ", "mail a@b.io ", "end"] {
            findings.extend(text_stream.push(delta).findings);
        }
        findings.extend(text_stream.finish().findings);
        assert_eq!(findings.len(), 1);
        assert_eq!((findings[0].start, findings[0].end), (Some(16), Some(22)));
    }

    #[test]
    fn monitor_mode_releases_at_once() {
        let g = guard();
        let mut text_stream = TextStream::new(g, Direction::Output, StreamMode::Monitor, 1024);
        let first = text_stream.push("mail bob@");
        assert_eq!(first.text, "mail bob@");
        let second = text_stream.push("example.com now");
        assert_eq!(second.text, "example.com now");
        let end = text_stream.finish();
        let findings: Vec<Finding> = [second.findings, end.findings].concat();
        assert_eq!(findings.len(), 1, "the email is still found");
        assert_eq!(findings[0].mode, Mode::Monitor);
    }

    #[test]
    fn hold_back_limit_forces_release() {
        let g = guard();
        let mut text_stream = TextStream::new(g, Direction::Output, StreamMode::Guarded, 8);
        let release = text_stream.push("abcdefghijklmnopqrstuvwxyz");
        assert!(text_stream.held_len() <= 8);
        assert!(!release.text.is_empty());
        assert_eq!(text_stream.hold_back_overflows, 1);
    }
}
