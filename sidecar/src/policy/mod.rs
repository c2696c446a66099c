//! Guardrail policies: the `GuardrailPolicy` resource, reading it from files, validating
//! it and compiling it into the form the guard engine runs.

pub mod compile;
pub mod conversation;
pub mod load;
pub mod reload;
pub mod spec;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::guard::action::ActionPolicy;
use crate::guard::pii::{Entity, Scanner};
use crate::guard::topic::TopicSet;
pub use load::{PolicyError, PolicyErrors};
use spec::{BlockResponse, Mode, PiiAction};

/// Refusal text used when the policy sets none.
pub const DEFAULT_REFUSAL: &str = "Sorry, I can't help with that request.";

/// Identity of the policy that made a decision, attached to logs, readiness detail and
/// metrics so that two versions of a policy can be distinguished.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyIdentity {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// First 12 hex digits of the SHA-256 of the policy's source text.
    pub hash: String,
    /// File or directory the policy was read from.
    pub source: String,
}

/// A PII rule as the engine applies it to one entity.
#[derive(Debug)]
pub struct PiiBinding {
    pub rule: Arc<str>,
    pub mode: Mode,
    pub input: PiiAction,
    pub output: PiiAction,
    pub mask_keep: usize,
    pub mask_char: char,
}

/// The compiled PII section: one scanner for every entity some rule names, and the rule
/// that owns each entity.
#[derive(Debug)]
pub struct PiiPolicy {
    pub scanner: Option<Scanner>,
    pub bindings: HashMap<Entity, Arc<PiiBinding>>,
}

/// A validated, compiled policy. Immutable: a reload builds a new one.
#[derive(Debug)]
pub struct Policy {
    pub identity: PolicyIdentity,
    pub on_block: BlockResponse,
    pub refusal: String,
    pub topics: TopicSet,
    /// Present when the policy lists allowed topics.
    pub allowed_topics: Option<TopicSet>,
    pub off_topic_rule: Arc<str>,
    pub off_topic_mode: Mode,
    pub actions: ActionPolicy,
    pub pii: PiiPolicy,
    pub stream: spec::StreamSettings,
    pub thinking: spec::ThinkingSettings,
    pub rule_count: usize,
    /// Context-window management, when the policy has a `context` section.
    pub context: Option<crate::context::ContextPolicy>,
    pub conversation: crate::state::ConversationPolicy,
}

impl Policy {
    /// Loads and compiles the policy at `path` (file or directory).
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        let sources = load::read_sources(path)?;
        Policy::from_sources(&sources, path)
    }

    /// Parses and compiles sources read from `path` by [`load::read_sources`].
    pub fn from_sources(
        sources: &[load::PolicySource],
        path: &Path,
    ) -> Result<Policy, PolicyErrors> {
        let (document, mut errors) = load::parse_sources_partial(sources);
        let Some((document, _)) = document else {
            return Err(PolicyErrors(errors));
        };
        let combined: String = sources.iter().map(|s| s.text.as_str()).collect();
        let compiled = compile::compile(
            &document,
            identity(&document, &combined, &path.display().to_string()),
        );
        // Structural and semantic errors are reported together, so an author fixes a
        // policy in one pass.
        match compiled {
            Ok(policy) if errors.is_empty() => Ok(policy),
            Ok(_) => Err(PolicyErrors(errors)),
            Err(PolicyErrors(semantic)) => {
                errors.extend(semantic);
                Err(PolicyErrors(errors))
            }
        }
    }

    /// Compiles the policy embedded in the binary.
    pub fn embedded_default() -> Result<Policy, PolicyErrors> {
        let sources = [load::PolicySource {
            name: load::EMBEDDED_SOURCE.to_owned(),
            text: load::EMBEDDED_DEFAULT.to_owned(),
        }];
        let (document, _) = load::parse_sources(&sources)?;
        compile::compile(
            &document,
            identity(&document, load::EMBEDDED_DEFAULT, load::EMBEDDED_SOURCE),
        )
    }

    /// Loads `path` when given, else the embedded default.
    pub fn load_or_default(path: Option<&Path>) -> Result<Policy, PolicyErrors> {
        match path {
            Some(path) => Policy::load(path),
            None => Policy::embedded_default(),
        }
    }
}

/// Returns the first 12 hex digits of the SHA-256 of a policy's source text, joined
/// in the order [`load::read_sources`] returns the files.
pub fn content_hash(sources: &[load::PolicySource]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        hasher.update(source.text.as_bytes());
    }
    hex::encode(&hasher.finalize()[..6])
}

fn identity(document: &spec::GuardrailPolicy, text: &str, source: &str) -> PolicyIdentity {
    let digest = Sha256::digest(text.as_bytes());
    PolicyIdentity {
        name: document.metadata.name.clone(),
        generation: document.metadata.generation,
        hash: hex::encode(&digest[..6]),
        source: source.to_owned(),
    }
}

/// Compiles a policy from YAML text for unit tests, named `unit`.
#[cfg(test)]
pub(crate) fn compile_for_test(yaml: &str) -> Policy {
    let sources = [load::PolicySource {
        name: "unit.yaml".to_owned(),
        text: yaml.to_owned(),
    }];
    let (document, _) = load::parse_sources(&sources).expect("test policy parses");
    compile::compile(
        &document,
        PolicyIdentity {
            name: "unit".to_owned(),
            generation: None,
            hash: "0".to_owned(),
            source: "unit.yaml".to_owned(),
        },
    )
    .expect("test policy compiles")
}
