//! Whether a text's tail could still grow into a regex match.
//!
//! The `regex` crate reports complete matches only. The streaming guard also needs to
//! know, for text that ends mid-stream, whether some suffix is the start of a match that
//! more text could complete, so that it holds back that suffix and nothing more. This
//! runs the pattern's lazy DFA (regex-automata) anchored at each candidate start and
//! checks whether it is still alive at the end of the text.

use std::sync::Mutex;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

/// One pattern compiled for partial-match questions.
#[derive(Debug)]
pub struct PartialMatcher {
    dfa: DFA,
    /// Lazy DFA caches, reused across calls; a cache is taken for one call and put back.
    caches: Mutex<Vec<Cache>>,
    /// Maximum length of a match in bytes; candidates start no earlier than that.
    max_len: usize,
}

impl PartialMatcher {
    /// Compiles `pattern` with the same case sensitivity as the matching regex. Returns
    /// `None` when the pattern cannot be compiled for this purpose or is unbounded; the
    /// caller then holds back conservatively.
    pub fn new(pattern: &str, case_insensitive: bool, max_len: usize) -> Option<PartialMatcher> {
        let dfa = DFA::builder()
            // Unicode word boundaries are evaluated on ASCII text; on non-ASCII bytes the
            // DFA quits, and a quit counts as a possible match.
            .configure(DFA::config().unicode_word_boundary(true))
            .syntax(syntax::Config::new().case_insensitive(case_insensitive))
            .build(pattern)
            .ok()?;
        Some(PartialMatcher {
            dfa,
            caches: Mutex::new(Vec::new()),
            max_len,
        })
    }

    /// Returns the length of the longest suffix of `text` that is the start of a possible
    /// match (or a complete match that more text could still extend or invalidate), or 0.
    pub fn pending_tail_len(&self, text: &str) -> usize {
        let mut cache = self
            .caches
            .lock()
            .ok()
            .and_then(|mut caches| caches.pop())
            .unwrap_or_else(|| self.dfa.create_cache());
        let earliest = text.len().saturating_sub(self.max_len);
        let mut held = 0;
        for start in (earliest..text.len()).filter(|i| text.is_char_boundary(*i)) {
            if self.alive_from(&mut cache, text, start) {
                held = text.len() - start;
                break;
            }
        }
        if let Ok(mut caches) = self.caches.lock() {
            caches.push(cache);
        }
        held
    }

    /// Runs the DFA anchored at `start` to the end of `text`; true unless it dies. A DFA
    /// that gives up (a Unicode word boundary on non-ASCII text, a cache error) counts as
    /// alive, which only holds back more.
    fn alive_from(&self, cache: &mut Cache, text: &str, start: usize) -> bool {
        let input = Input::new(text).range(start..).anchored(Anchored::Yes);
        let Ok(mut state) = self.dfa.start_state_forward(cache, &input) else {
            return true;
        };
        for &byte in &text.as_bytes()[start..] {
            match self.dfa.next_state(cache, state, byte) {
                Ok(next) if next.is_dead() => return false,
                Ok(next) if next.is_quit() => return true,
                Ok(next) => state = next,
                Err(_) => return true,
            }
        }
        !state.is_dead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(pattern: &str) -> PartialMatcher {
        let max = crate::guard::topic::pattern_max_len(pattern, true).expect("bounded");
        PartialMatcher::new(pattern, true, max).expect("compiles")
    }

    #[test]
    fn prefix_of_a_match_is_held() {
        let m = matcher(r"\bexplosives?\b");
        assert_eq!(m.pending_tail_len("buy some expl"), 4);
        assert_eq!(m.pending_tail_len("buy some explosive"), "explosive".len());
    }

    #[test]
    fn unrelated_text_is_not_held() {
        let m = matcher(r"\bexplosives?\b");
        assert_eq!(m.pending_tail_len("Here is the plan: "), 0);
        assert_eq!(m.pending_tail_len("Hello there. "), 0);
    }

    #[test]
    fn word_boundary_before_is_respected() {
        let m = matcher(r"\bexplosives?\b");
        assert_eq!(
            m.pending_tail_len("nonexpl"),
            0,
            "no match can start inside a word"
        );
    }

    #[test]
    fn non_ascii_text_is_safe() {
        let m = matcher(r"\bexplosives?\b");
        // Whatever the DFA decides on non-ASCII input, the result stays on a boundary.
        let text = "日本語 expl";
        let held = m.pending_tail_len(text);
        assert!(text.is_char_boundary(text.len() - held));
        assert!(held >= 4);
    }
}
