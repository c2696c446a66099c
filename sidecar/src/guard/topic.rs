//! Topic matching: literal phrases with aho-corasick and regular expressions.
//!
//! Phrases match case-insensitively on word boundaries. Any run of whitespace in the text
//! matches the single space between a phrase's words, so a phrase split across a line
//! break, or across two content parts joined with a newline, is still found. ASCII
//! phrases go through one aho-corasick automaton; a phrase with non-ASCII letters becomes
//! a Unicode case-insensitive regex, because aho-corasick folds ASCII case only.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use super::partial::PartialMatcher;
use crate::policy::spec::{Direction, Mode};

/// A compiled topic rule.
#[derive(Debug)]
pub struct TopicRule {
    pub id: Arc<str>,
    pub mode: Mode,
    pub input: bool,
    pub output: bool,
}

impl TopicRule {
    pub fn applies_to(&self, direction: Direction) -> bool {
        match direction {
            Direction::Input => self.input,
            Direction::Output => self.output,
        }
    }
}

/// The source of one topic before compilation.
#[derive(Debug)]
pub struct TopicDefinition {
    pub rule: TopicRule,
    pub phrases: Vec<String>,
    /// Compiled regexes, already case-insensitive unless the pattern turned that off.
    pub patterns: Vec<Regex>,
}

/// A topic rule's match, as byte offsets into the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicMatch {
    pub rule: usize,
    pub start: usize,
    pub end: usize,
}

/// A set of topic rules compiled for scanning.
#[derive(Debug)]
pub struct TopicSet {
    rules: Vec<TopicRule>,
    phrases: Option<AhoCorasick>,
    /// Rule index for each aho-corasick pattern.
    phrase_rule: Vec<usize>,
    /// Per-rule regexes: user patterns and non-ASCII phrases.
    regexes: Vec<(usize, Regex)>,
    /// ASCII phrases, lower-cased and sorted, with their rule, for the streaming
    /// hold-back.
    sorted_phrases: Vec<(String, usize)>,
    longest_phrase_len: usize,
    /// Per-rule partial matchers for the regexes, for the streaming hold-back. `None` for
    /// a regex that cannot be compiled for it; its longest match length is held instead.
    partial: Vec<(usize, Option<PartialMatcher>, usize)>,
}

/// Returns the maximum number of bytes `pattern` can match (case-insensitively when
/// `case_insensitive`), or `None` when it can match text of any length.
pub fn pattern_max_len(pattern: &str, case_insensitive: bool) -> Option<usize> {
    regex_syntax::ParserBuilder::new()
        .case_insensitive(case_insensitive)
        .build()
        .parse(pattern)
        .ok()?
        .properties()
        .maximum_len()
}

/// Normalizes a phrase: trimmed, inner whitespace runs collapsed to one space.
pub fn normalize_phrase(phrase: &str) -> String {
    phrase.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl TopicSet {
    /// Builds the matcher. Phrases must be non-empty after normalization; the policy
    /// compiler checks that and reports it with the rule's path.
    pub fn new(definitions: Vec<TopicDefinition>) -> Result<TopicSet, regex::Error> {
        let mut rules = Vec::with_capacity(definitions.len());
        let mut ascii_phrases = Vec::new();
        let mut phrase_rule = Vec::new();
        let mut regexes = Vec::new();
        for (index, definition) in definitions.into_iter().enumerate() {
            for phrase in &definition.phrases {
                let phrase = normalize_phrase(phrase);
                if phrase.is_ascii() {
                    ascii_phrases.push(phrase);
                    phrase_rule.push(index);
                } else {
                    let words: Vec<String> = phrase.split(' ').map(regex::escape).collect();
                    let pattern = format!(r"(?i)(?:^|\b){}(?:\b|$)", words.join(r"\s+"));
                    regexes.push((index, Regex::new(&pattern)?));
                }
            }
            for pattern in definition.patterns {
                regexes.push((index, pattern));
            }
            rules.push(definition.rule);
        }
        let phrases = if ascii_phrases.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&ascii_phrases)
                    .map_err(|e| regex::Error::Syntax(e.to_string()))?,
            )
        };
        let partial = regexes
            .iter()
            .map(|(rule, regex)| {
                let max_len = pattern_max_len(regex.as_str(), true).unwrap_or(usize::MAX);
                (
                    *rule,
                    PartialMatcher::new(regex.as_str(), true, max_len),
                    max_len,
                )
            })
            .collect();
        let mut sorted_phrases: Vec<(String, usize)> = ascii_phrases
            .iter()
            .zip(&phrase_rule)
            .map(|(p, rule)| (p.to_ascii_lowercase(), *rule))
            .collect();
        sorted_phrases.sort();
        sorted_phrases.dedup();
        let longest_phrase_len = sorted_phrases
            .iter()
            .map(|(p, _)| p.len())
            .max()
            .unwrap_or(0);
        Ok(TopicSet {
            rules,
            phrases,
            phrase_rule,
            regexes,
            sorted_phrases,
            longest_phrase_len,
            partial,
        })
    }

    pub fn rules(&self) -> &[TopicRule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Appends the first match of each rule that applies to `direction` (all rules when
    /// `direction` is `None`), in rule order.
    pub fn find(&self, text: &str, direction: Option<Direction>, out: &mut Vec<TopicMatch>) {
        let applies = |rule: usize| direction.is_none_or(|d| self.rules[rule].applies_to(d));
        if !(0..self.rules.len()).any(applies) {
            return;
        }
        let mut first: Vec<Option<(usize, usize)>> = vec![None; self.rules.len()];

        if let Some(automaton) = &self.phrases {
            let normalized = WhitespaceNormalized::new(text);
            let haystack = normalized.text();
            for m in automaton.find_overlapping_iter(haystack) {
                let rule = self.phrase_rule[m.pattern().as_usize()];
                if first[rule].is_some() || !applies(rule) {
                    continue;
                }
                if is_word_boundary(haystack, m.start()) && is_word_boundary(haystack, m.end()) {
                    first[rule] = Some(normalized.original_span(m.start(), m.end()));
                }
            }
        }
        for (rule, regex) in &self.regexes {
            if first[*rule].is_some() || !applies(*rule) {
                continue;
            }
            if let Some(m) = regex.find(text) {
                first[*rule] = Some((m.start(), m.end()));
            }
        }
        out.extend(
            first.into_iter().enumerate().filter_map(|(rule, span)| {
                span.map(|(start, end)| TopicMatch { rule, start, end })
            }),
        );
    }

    /// Returns how many trailing bytes of `text` could still become part of a match of a
    /// rule that applies to `direction` when more text is appended: the longest suffix
    /// that starts a phrase (a complete phrase too, since the next character decides its
    /// word boundary) or a regex match. The result is on a character boundary.
    pub fn pending_tail_len(&self, text: &str, direction: Direction) -> usize {
        let applies = |rule: usize| self.rules[rule].applies_to(direction);
        if !(0..self.rules.len()).any(applies) {
            return 0;
        }
        let mut hold = 0;
        for (rule, matcher, max_len) in &self.partial {
            if !applies(*rule) {
                continue;
            }
            let tail = match matcher {
                Some(matcher) => matcher.pending_tail_len(text),
                None => (*max_len).min(text.len()),
            };
            hold = hold.max(tail);
        }
        if self.sorted_phrases.iter().any(|(_, rule)| applies(*rule)) {
            let earliest = text.len().saturating_sub(self.longest_phrase_len);
            for (offset, _) in text.char_indices().filter(|(i, _)| *i >= earliest) {
                if text.len() - offset <= hold {
                    // Suffixes from here on are no longer than what is already held.
                    break;
                }
                if !is_word_boundary(text, offset) {
                    continue;
                }
                let suffix = normalize_suffix(&text[offset..]);
                if suffix.is_empty() || suffix.starts_with(' ') {
                    continue;
                }
                let at = self
                    .sorted_phrases
                    .partition_point(|(p, _)| p.as_str() < suffix.as_str());
                let starts_phrase = self.sorted_phrases[at..]
                    .iter()
                    .take_while(|(p, _)| p.starts_with(&suffix))
                    .any(|(_, rule)| applies(*rule));
                if starts_phrase {
                    hold = hold.max(text.len() - offset);
                    break;
                }
            }
        }
        let mut start = text.len() - hold;
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        text.len() - start
    }

    /// Returns true when any rule matches `text`, whatever its direction settings.
    pub fn matches_any(&self, text: &str) -> bool {
        let mut found = Vec::new();
        self.find(text, None, &mut found);
        !found.is_empty()
    }
}

/// Lower-cases ASCII and collapses whitespace runs to one space, keeping a trailing one.
fn normalize_suffix(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_ascii_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            in_space = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// True when the position between two characters is not inside a word.
fn is_word_boundary(text: &str, at: usize) -> bool {
    let before = text[..at].chars().next_back();
    let after = text[at..].chars().next();
    !(before.is_some_and(is_word_char) && after.is_some_and(is_word_char))
}

/// Text with every run of whitespace replaced by one space, plus the map back to the
/// original offsets. Borrows the text when it has nothing to collapse, which is the
/// common case for short chat messages.
struct WhitespaceNormalized<'a> {
    text: Cow<'a, str>,
    /// For each byte of the normalized text, its offset in the original; empty when
    /// borrowed.
    offsets: Vec<usize>,
    original_len: usize,
}

impl<'a> WhitespaceNormalized<'a> {
    fn new(text: &'a str) -> Self {
        let needs_work =
            text.as_bytes().windows(2).any(|w| {
                w[0].is_ascii_whitespace() && (w[1].is_ascii_whitespace() || w[0] != b' ')
            }) || text
                .as_bytes()
                .last()
                .is_some_and(|b| b.is_ascii_whitespace() && *b != b' ');
        if !needs_work {
            return WhitespaceNormalized {
                text: Cow::Borrowed(text),
                offsets: Vec::new(),
                original_len: text.len(),
            };
        }
        let mut normalized = String::with_capacity(text.len());
        let mut offsets = Vec::with_capacity(text.len());
        let mut in_space = false;
        for (offset, c) in text.char_indices() {
            if c.is_ascii_whitespace() {
                if !in_space {
                    normalized.push(' ');
                    offsets.push(offset);
                }
                in_space = true;
                continue;
            }
            in_space = false;
            normalized.push(c);
            offsets.extend((0..c.len_utf8()).map(|i| offset + i));
        }
        WhitespaceNormalized {
            text: Cow::Owned(normalized),
            offsets,
            original_len: text.len(),
        }
    }

    fn text(&self) -> &str {
        &self.text
    }

    fn original_span(&self, start: usize, end: usize) -> (usize, usize) {
        if self.offsets.is_empty() {
            return (start, end);
        }
        let original_start = self.offsets[start];
        let original_end = if end >= self.offsets.len() {
            self.original_len
        } else {
            // The end is exclusive: one past the last matched byte in the original.
            self.offsets[end - 1] + 1
        };
        (original_start, original_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(phrases: &[&str], patterns: &[&str]) -> TopicSet {
        TopicSet::new(vec![TopicDefinition {
            rule: TopicRule {
                id: Arc::from("t"),
                mode: Mode::Enforce,
                input: true,
                output: false,
            },
            phrases: phrases.iter().map(|s| s.to_string()).collect(),
            patterns: patterns
                .iter()
                .map(|p| Regex::new(&format!("(?i){p}")).expect("valid test regex"))
                .collect(),
        }])
        .expect("valid topic set")
    }

    fn spans(set: &TopicSet, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        set.find(text, Some(Direction::Input), &mut out);
        out.iter().map(|m| (m.start, m.end)).collect()
    }

    #[test]
    fn phrase_matches_case_insensitively() {
        let s = set(&["dosage"], &[]);
        assert_eq!(spans(&s, "What DOSAGE is safe?"), vec![(5, 11)]);
    }

    #[test]
    fn phrase_respects_word_boundaries() {
        let s = set(&["dosage"], &[]);
        assert!(spans(&s, "dosages and overdosage").is_empty());
    }

    #[test]
    fn later_match_on_boundary_is_found() {
        let s = set(&["dose"], &[]);
        assert_eq!(spans(&s, "overdose, dose"), vec![(10, 14)]);
    }

    #[test]
    fn phrase_spans_line_breaks() {
        let s = set(&["build a bomb"], &[]);
        assert_eq!(spans(&s, "how to build a\n  bomb?"), vec![(7, 21)]);
    }

    #[test]
    fn non_ascii_phrase_folds_unicode_case() {
        let s = set(&["Überweisung"], &[]);
        assert_eq!(spans(&s, "eine ÜBERWEISUNG bitte").len(), 1);
    }

    #[test]
    fn pattern_matches() {
        let s = set(&[], &[r"\bprescri(be|ption)\b"]);
        assert_eq!(spans(&s, "Can you Prescribe it"), vec![(8, 17)]);
    }

    #[test]
    fn direction_filter_applies() {
        let s = set(&["dosage"], &[]);
        let mut out = Vec::new();
        s.find("dosage", Some(Direction::Output), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn tail_holds_phrase_prefix() {
        let s = set(&["build a bomb"], &[]);
        assert_eq!(
            s.pending_tail_len("how to build a\n ", Direction::Input),
            "build a\n ".len()
        );
        assert_eq!(s.pending_tail_len("how to bu", Direction::Input), 2);
        assert_eq!(
            s.pending_tail_len("we rebuild", Direction::Input),
            0,
            "no phrase starts inside a word"
        );
        assert_eq!(s.pending_tail_len("nothing here", Direction::Input), 0);
    }

    #[test]
    fn tail_holds_complete_phrase_until_boundary() {
        let s = set(&["dosage"], &[]);
        assert_eq!(s.pending_tail_len("the dosage", Direction::Input), 6);
        assert_eq!(s.pending_tail_len("the dosage.", Direction::Input), 0);
    }

    #[test]
    fn tail_holds_partial_pattern_match() {
        let s = set(&[], &[r"\bprescri(be|ption)\b"]);
        assert_eq!(
            s.pending_tail_len("can you prescri", Direction::Input),
            "prescri".len()
        );
        assert_eq!(
            s.pending_tail_len("a long enough text here", Direction::Input),
            0
        );
        assert_eq!(pattern_max_len(r"\w+", true), None);
    }

    #[test]
    fn tail_ignores_rules_of_other_direction() {
        let s = set(&["dosage"], &[r"\bprescri(be|ption)\b"]);
        assert_eq!(s.pending_tail_len("the dos", Direction::Output), 0);
        assert_eq!(s.pending_tail_len("can you prescri", Direction::Output), 0);
    }

    #[test]
    fn special_tokens_are_plain_text() {
        let s = set(&["endoftext"], &[]);
        assert_eq!(spans(&s, "a <|endoftext|> b"), vec![(4, 13)]);
    }
}
