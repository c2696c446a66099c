//! Custom entities: a policy's own regex, optionally confirmed by context words.
//!
//! Patterns use `regex` crate syntax, which matches in linear time. Empty matches are
//! ignored. With context words, a match counts only if one of them occurs as a whole
//! word, ignoring case, inside the window that runs from [`CONTEXT_WINDOW`] bytes before
//! the match start to [`CONTEXT_WINDOW`] bytes after the match end. The match itself is
//! part of the window. The window edges move inward to char boundaries, and a word must
//! lie entirely inside the window.

use regex::Regex;

use super::{Candidate, CustomEntity, Entity, ScannerError};

/// Bytes on each side of a custom match that are searched for its context words.
pub(super) const CONTEXT_WINDOW: usize = 64;

/// A compiled custom entity.
#[derive(Debug)]
pub(super) struct CustomRecognizer {
    pub(super) name: String,
    entity: Entity,
    pub(super) pattern: Regex,
    /// Alternation of the escaped context words, or `None` when every match counts.
    context: Option<Regex>,
}

impl CustomRecognizer {
    pub(super) fn new(index: u16, entity: &CustomEntity) -> Result<Self, ScannerError> {
        let pattern =
            Regex::new(&entity.pattern).map_err(|source| ScannerError::InvalidPattern {
                entity: entity.name.clone(),
                source,
            })?;

        let mut words: Vec<&str> = entity
            .context_words
            .iter()
            .map(|word| word.trim())
            .filter(|word| !word.is_empty())
            .collect();
        // Longest first, because the alternation takes the first word that matches at a
        // position, and a shorter word could hide a longer one (`ssn` in `ssnumber`).
        words.sort_by_key(|word| std::cmp::Reverse(word.len()));
        let context = if words.is_empty() {
            None
        } else {
            let escaped: Vec<String> = words.iter().map(|word| regex::escape(word)).collect();
            let alternation = format!("(?i)(?:{})", escaped.join("|"));
            let regex =
                Regex::new(&alternation).map_err(|source| ScannerError::InvalidContextWords {
                    entity: entity.name.clone(),
                    source,
                })?;
            Some(regex)
        };

        Ok(Self {
            name: entity.name.clone(),
            entity: Entity::Custom(index),
            pattern,
            context,
        })
    }

    pub(super) fn has_context_words(&self) -> bool {
        self.context.is_some()
    }

    /// Appends the confirmed matches in `text` to `out`.
    pub(super) fn find(&self, text: &str, out: &mut Vec<Candidate>) {
        for found in self.pattern.find_iter(text) {
            if !found.is_empty() && self.context_confirms(text, found.start(), found.end()) {
                out.push(Candidate {
                    entity: self.entity,
                    start: found.start(),
                    end: found.end(),
                });
            }
        }
    }

    fn context_confirms(&self, text: &str, start: usize, end: usize) -> bool {
        let Some(context) = &self.context else {
            return true;
        };
        let window_start =
            super::boundary::ceil_char_boundary(text, start.saturating_sub(CONTEXT_WINDOW));
        let window_end =
            super::boundary::floor_char_boundary(text, end.saturating_add(CONTEXT_WINDOW));
        context
            .find_iter(&text[window_start..window_end])
            .any(|word| is_whole_word(text, window_start + word.start(), window_start + word.end()))
    }
}

/// Returns whether `text[start..end]` has no letter, digit or underscore on either side.
fn is_whole_word(text: &str, start: usize, end: usize) -> bool {
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(pattern: &str, context_words: &[&str]) -> CustomRecognizer {
        let entity = CustomEntity {
            name: "EMPLOYEE_ID".to_owned(),
            pattern: pattern.to_owned(),
            context_words: context_words.iter().map(|w| (*w).to_owned()).collect(),
        };
        CustomRecognizer::new(3, &entity).expect("test pattern compiles")
    }

    fn matches_in<'a>(recognizer: &CustomRecognizer, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        recognizer.find(text, &mut out);
        out.iter().map(|c| &text[c.start..c.end]).collect()
    }

    #[test]
    fn pattern_without_context_words() {
        let recognizer = custom(r"E-\d{6}", &[]);
        assert!(!recognizer.has_context_words());
        assert_eq!(
            matches_in(&recognizer, "ids E-123456, E-654321"),
            ["E-123456", "E-654321"]
        );
        let mut out = Vec::new();
        recognizer.find("E-123456", &mut out);
        assert_eq!(out[0].entity, Entity::Custom(3));
    }

    #[test]
    fn context_word_window() {
        let recognizer = custom(r"\b\d{6}\b", &["employee", "  badge no  ", ""]);
        assert!(recognizer.has_context_words());
        let far = format!("employee {} 123456", "x".repeat(60));
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("Employee 123456", vec!["123456"]),
            ("123456 is the EMPLOYEE number", vec!["123456"]),
            ("BADGE NO 123456", vec!["123456"]),
            ("employees 123456", vec![]),
            ("order 123456", vec![]),
            (&far, vec![]),
        ];
        for (text, expected) in &cases {
            assert_eq!(&matches_in(&recognizer, text), expected, "{text:?}");
        }
    }

    #[test]
    fn longer_context_word_found_first() {
        let recognizer = custom(r"\d{4}", &["ssn", "ssnumber"]);
        assert_eq!(matches_in(&recognizer, "ssnumber 1234"), ["1234"]);
    }

    #[test]
    fn context_window_at_char_boundaries() {
        let recognizer = custom(r"\d{4}", &["工号"]);
        // "工号" is 6 bytes and "·" 2, so 29 of them put the match 64 bytes after the
        // word start, and 30 move the window start into the middle of "工".
        let text = format!("工号{}1234{}", "·".repeat(29), "日本".repeat(20));
        assert_eq!(matches_in(&recognizer, &text), ["1234"]);
        let far = format!("工号{}1234", "·".repeat(30));
        assert_eq!(matches_in(&recognizer, &far), Vec::<&str>::new());
    }

    #[test]
    fn empty_matches_ignored() {
        let recognizer = custom(r"x*", &[]);
        assert_eq!(matches_in(&recognizer, "a xx b"), ["xx"]);
    }

    #[test]
    fn invalid_pattern_names_entity() {
        let entity = CustomEntity {
            name: "BROKEN".to_owned(),
            pattern: "(unclosed".to_owned(),
            context_words: Vec::new(),
        };
        let error = CustomRecognizer::new(0, &entity).expect_err("pattern is invalid");
        assert!(
            matches!(error, ScannerError::InvalidPattern { ref entity, .. } if entity == "BROKEN")
        );
        let message = error.to_string();
        assert!(message.contains("BROKEN"), "{message}");
        assert!(message.contains("unclosed group"), "{message}");
    }
}
