//! The model catalog: each model's context window and maximum output tokens.
//!
//! Entries match a model name exactly, or by prefix when they end in `*`
//! (`gpt-4o*` covers `gpt-4o-2024-08-06`). The longest matching pattern wins, and an
//! exact match beats any prefix. Configured entries are consulted before the built-in
//! ones, so configuration can correct or extend them.

use super::tokens::base_model_name;

/// Limits of one model, in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelLimits {
    /// Input and output together.
    pub context_window: u32,
    /// Maximum tokens the model may generate in one reply.
    pub max_output_tokens: u32,
}

/// Limits for a model no entry matches: 128k tokens is the window of most current chat
/// models, and a 4,096-token reply reservation suits chat turns. Configure the real
/// values for other models; an upstream context-overflow error is still recognized.
pub const DEFAULT_LIMITS: ModelLimits = ModelLimits {
    context_window: 128_000,
    max_output_tokens: 4_096,
};

/// A catalog entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Exact model name, or a prefix followed by `*`.
    pub pattern: String,
    pub limits: ModelLimits,
}

const fn limits(context_window: u32, max_output_tokens: u32) -> ModelLimits {
    ModelLimits {
        context_window,
        max_output_tokens,
    }
}

/// Built-in limits, from the providers' model documentation (OpenAI's and Anthropic's
/// model pages, 2025). More specific patterns override shorter ones by length.
const BUILT_IN: &[(&str, ModelLimits)] = &[
    ("gpt-5*", limits(400_000, 128_000)),
    ("gpt-4.1*", limits(1_047_576, 32_768)),
    ("gpt-4.5*", limits(128_000, 16_384)),
    ("gpt-4o*", limits(128_000, 16_384)),
    ("chatgpt-4o*", limits(128_000, 16_384)),
    ("gpt-4-turbo*", limits(128_000, 4_096)),
    ("gpt-4-0125*", limits(128_000, 4_096)),
    ("gpt-4-1106*", limits(128_000, 4_096)),
    ("gpt-4-32k*", limits(32_768, 4_096)),
    ("gpt-4", limits(8_192, 8_192)),
    ("gpt-4-0613", limits(8_192, 8_192)),
    ("gpt-3.5-turbo*", limits(16_385, 4_096)),
    ("o1*", limits(200_000, 100_000)),
    ("o1-mini*", limits(128_000, 65_536)),
    ("o1-preview*", limits(128_000, 32_768)),
    ("o3*", limits(200_000, 100_000)),
    ("o4-mini*", limits(200_000, 100_000)),
    // Claude 5 models and Claude Haiku 4.5, from Anthropic's models overview
    // (platform.claude.com/docs/en/models/overview, 2026). NOTE: the ID prefixes other
    // than `claude-haiku-5` are inferred from Anthropic's naming, so configure exact IDs
    // if they differ.
    ("claude-fable-5*", limits(1_000_000, 128_000)),
    ("claude-opus-5*", limits(1_000_000, 128_000)),
    ("claude-sonnet-5*", limits(1_000_000, 128_000)),
    ("claude-haiku-5*", limits(1_000_000, 128_000)),
    ("claude-haiku-4*", limits(200_000, 64_000)),
    ("claude-opus-4*", limits(200_000, 32_000)),
    ("claude-sonnet-4*", limits(200_000, 64_000)),
    ("claude-3-7-sonnet*", limits(200_000, 64_000)),
    ("claude-3-5-sonnet*", limits(200_000, 8_192)),
    ("claude-3-5-haiku*", limits(200_000, 8_192)),
    ("claude-3-opus*", limits(200_000, 4_096)),
    ("claude-3-haiku*", limits(200_000, 4_096)),
];

/// Model limits by name.
#[derive(Clone, Debug)]
pub struct ModelCatalog {
    configured: Vec<CatalogEntry>,
    default: ModelLimits,
}

impl Default for ModelCatalog {
    fn default() -> Self {
        ModelCatalog::new(Vec::new(), DEFAULT_LIMITS)
    }
}

impl ModelCatalog {
    /// Creates a catalog whose `configured` entries take precedence over the built-in
    /// ones, with `default` for models nothing matches.
    pub fn new(configured: Vec<CatalogEntry>, default: ModelLimits) -> ModelCatalog {
        ModelCatalog {
            configured,
            default,
        }
    }

    /// Returns the limits for `model`; never fails.
    pub fn limits(&self, model: &str) -> ModelLimits {
        let model = base_model_name(model);
        let configured = self
            .configured
            .iter()
            .map(|entry| (entry.pattern.as_str(), entry.limits));
        if let Some(found) = best_match(configured, model) {
            return found;
        }
        best_match(BUILT_IN.iter().copied(), model).unwrap_or(self.default)
    }
}

/// Returns the limits of the best pattern for `model`: an exact match, else the longest
/// matching prefix.
fn best_match<'a>(
    entries: impl Iterator<Item = (&'a str, ModelLimits)>,
    model: &str,
) -> Option<ModelLimits> {
    let mut best: Option<(usize, ModelLimits)> = None;
    for (pattern, limits) in entries {
        let rank = match pattern.strip_suffix('*') {
            Some(prefix) if model.starts_with(prefix) => prefix.len(),
            Some(_) => continue,
            None if pattern == model => usize::MAX,
            None => continue,
        };
        if best.is_none_or(|(current, _)| rank > current) {
            best = Some((rank, limits));
        }
    }
    best.map(|(_, limits)| limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_snapshots_match_their_family() {
        let catalog = ModelCatalog::default();
        assert_eq!(catalog.limits("gpt-4o-2024-08-06"), limits(128_000, 16_384));
        assert_eq!(catalog.limits("gpt-4.1-mini"), limits(1_047_576, 32_768));
        assert_eq!(
            catalog.limits("o1-mini-2024-09-12"),
            limits(128_000, 65_536)
        );
        assert_eq!(catalog.limits("o1-2024-12-17"), limits(200_000, 100_000));
        assert_eq!(catalog.limits("gpt-4"), limits(8_192, 8_192));
        assert_eq!(catalog.limits("gpt-4-turbo"), limits(128_000, 4_096));
        assert_eq!(
            catalog.limits("claude-sonnet-4-20250514"),
            limits(200_000, 64_000)
        );
    }

    #[test]
    fn unknown_model_gets_the_default() {
        let catalog = ModelCatalog::default();
        assert_eq!(catalog.limits("my-local-llama"), DEFAULT_LIMITS);
        assert_eq!(catalog.limits(""), DEFAULT_LIMITS);
    }

    #[test]
    fn configured_entries_win() {
        let catalog = ModelCatalog::new(
            vec![
                CatalogEntry {
                    pattern: "gpt-4o*".to_owned(),
                    limits: limits(64_000, 1_000),
                },
                CatalogEntry {
                    pattern: "llama-3.1-8b".to_owned(),
                    limits: limits(131_072, 2_048),
                },
            ],
            limits(32_000, 1_000),
        );
        assert_eq!(catalog.limits("gpt-4o-mini"), limits(64_000, 1_000));
        assert_eq!(catalog.limits("llama-3.1-8b"), limits(131_072, 2_048));
        assert_eq!(catalog.limits("gpt-5"), limits(400_000, 128_000));
        assert_eq!(catalog.limits("unknown"), limits(32_000, 1_000));
    }
}
