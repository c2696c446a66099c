//! Reading policy documents from a file, a directory (such as a mounted ConfigMap) or the
//! policy embedded in the binary.
//!
//! Parsing goes section by section and rule by rule, so one wrong rule does not hide the
//! errors in the others: the caller gets every problem in one report.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_norway::Value;

use super::spec::{API_VERSION, Actions, GuardrailPolicy, KIND, Metadata, Spec};

/// The policy compiled into the binary, used when no policy path is configured.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../policies/default.yaml");
/// Name shown as the source of the embedded policy.
pub const EMBEDDED_SOURCE: &str = "<embedded default.yaml>";

/// One problem in a policy: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// File the problem is in.
    pub source: String,
    /// Path inside the document, such as `spec.topics[1].patterns[0]`; empty for the
    /// whole document.
    pub path: String,
    /// Description of the problem and of what is allowed.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.path, self.message)
        }
    }
}

/// Every problem found in a policy, reported together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(
            f,
            "invalid policy: {count} problem{}",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            // Multi-line messages (regex syntax errors draw a caret line) stay inside
            // their list item.
            let text = error.to_string().replace('\n', "\n    ");
            writeln!(f, "  - {text}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// The text of a policy document and where it came from.
#[derive(Clone, Debug)]
pub struct PolicySource {
    pub name: String,
    pub text: String,
}

/// Reads the policy at `path`: one YAML file, or a directory whose `*.yaml` and `*.yml`
/// files hold exactly one `GuardrailPolicy` between them. Entries whose names start with
/// `.` are skipped, which ignores the `..data` indirection Kubernetes uses for ConfigMap
/// volumes while still following the file symlinks it creates.
pub fn read_sources(path: &Path) -> Result<Vec<PolicySource>, PolicyErrors> {
    let io_error = |p: &Path, e: std::io::Error| {
        PolicyErrors(vec![PolicyError {
            source: p.display().to_string(),
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])
    };
    let metadata = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !metadata.is_dir() {
        let text = read_text(path)?;
        return Ok(vec![PolicySource {
            name: path.display().to_string(),
            text,
        }]);
    }

    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| io_error(path, e))? {
        let entry = entry.map_err(|e| io_error(path, e))?;
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let entry_path = entry.path();
        if std::fs::metadata(&entry_path).is_ok_and(|m| m.is_file()) {
            files.push(entry_path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyErrors(vec![PolicyError {
            source: path.display().to_string(),
            path: String::new(),
            message: "directory contains no *.yaml or *.yml file; mount the policy ConfigMap \
                      here or point --policy at a file"
                .to_owned(),
        }]));
    }
    files
        .iter()
        .map(|file| {
            Ok(PolicySource {
                name: file.display().to_string(),
                text: read_text(file)?,
            })
        })
        .collect()
}

fn read_text(path: &Path) -> Result<String, PolicyErrors> {
    let bytes = std::fs::read(path).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            source: path.display().to_string(),
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    String::from_utf8(bytes).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            source: path.display().to_string(),
            path: String::new(),
            message: format!(
                "not valid UTF-8 at byte {}; save the file as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        }])
    })
}

/// Parses the sources into exactly one policy document. Empty documents (such as a
/// trailing `---`) are ignored.
pub fn parse_sources(sources: &[PolicySource]) -> Result<(GuardrailPolicy, String), PolicyErrors> {
    let (document, errors) = parse_sources_partial(sources);
    match document {
        Some(found) if errors.is_empty() => Ok(found),
        _ => Err(PolicyErrors(errors)),
    }
}

/// Parses the sources as far as possible: the document (with the elements that failed
/// to parse left out) when exactly one was found, and every error met on the way.
pub fn parse_sources_partial(
    sources: &[PolicySource],
) -> (Option<(GuardrailPolicy, String)>, Vec<PolicyError>) {
    let mut errors = Vec::new();
    let mut found: Vec<(GuardrailPolicy, String)> = Vec::new();
    for source in sources {
        let documents = match split_documents(&source.text) {
            Ok(documents) => documents,
            Err(e) => {
                errors.push(PolicyError {
                    source: source.name.clone(),
                    path: String::new(),
                    message: format!("invalid YAML: {e}"),
                });
                continue;
            }
        };
        for (index, document) in documents.into_iter().enumerate() {
            if document.is_null() {
                continue;
            }
            let name = if index == 0 {
                source.name.clone()
            } else {
                format!("{} (document {})", source.name, index + 1)
            };
            if let Some(policy) = parse_document(&name, document, &mut errors) {
                found.push((policy, name));
            }
        }
    }
    match found.len() {
        1 => (Some(found.remove(0)), errors),
        0 if !errors.is_empty() => (None, errors),
        0 => (
            None,
            vec![PolicyError {
                source: sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                path: String::new(),
                message: format!("no {KIND} document found"),
            }],
        ),
        n => (
            None,
            vec![PolicyError {
                source: found
                    .iter()
                    .map(|(_, name)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                path: String::new(),
                message: format!(
                    "found {n} {KIND} documents; a sidecar enforces exactly one policy, so merge \
                 them or mount only one"
                ),
            }],
        ),
    }
}

fn split_documents(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(Value::deserialize)
        .collect()
}

const TOP_LEVEL_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const SPEC_FIELDS: &[&str] = &[
    "onBlock",
    "topics",
    "allowedTopics",
    "offTopic",
    "actions",
    "pii",
    "customEntities",
    "context",
    "conversation",
    "stream",
    "thinking",
];
const ACTIONS_FIELDS: &[&str] = &["default", "defaultRuleId", "rules"];

fn parse_document(
    source: &str,
    document: Value,
    errors: &mut Vec<PolicyError>,
) -> Option<GuardrailPolicy> {
    let before = errors.len();
    let mut push = |path: &str, message: String| {
        errors.push(PolicyError {
            source: source.to_owned(),
            path: path.to_owned(),
            message,
        })
    };
    let Value::Mapping(mut top) = document else {
        push(
            "",
            format!(
                "expected a {KIND} mapping with apiVersion, kind, metadata and spec, found {}",
                describe(&document)
            ),
        );
        return None;
    };
    for key in top.keys() {
        check_known_key(key, TOP_LEVEL_FIELDS, "", &mut push);
    }

    let api_version = take_string(&mut top, "apiVersion", &mut push);
    if let Some(v) = &api_version
        && v != API_VERSION
    {
        push(
            "apiVersion",
            format!("unsupported apiVersion {v:?}; this build reads {API_VERSION:?}"),
        );
    }
    let kind = take_string(&mut top, "kind", &mut push);
    if let Some(k) = &kind
        && k != KIND
    {
        push("kind", format!("unsupported kind {k:?}; expected {KIND:?}"));
    }
    let metadata = match top.remove("metadata") {
        Some(value) => deserialize_at::<Metadata>(value, "metadata", source, errors),
        None => {
            errors.push(PolicyError {
                source: source.to_owned(),
                path: "metadata".to_owned(),
                message: "missing field; set metadata.name".to_owned(),
            });
            None
        }
    };
    let spec = match top.remove("spec") {
        Some(value) => parse_spec(source, value, errors),
        None => Some(Spec::default()),
    };

    let _ = before;
    // A partial document is returned even after errors, so that semantic validation can
    // report the remaining problems in the same run; the caller knows from `errors` that
    // it must not be used. A placeholder name keeps a missing one from being reported
    // twice.
    Some(GuardrailPolicy {
        api_version: api_version.unwrap_or_default(),
        kind: kind.unwrap_or_default(),
        metadata: metadata.unwrap_or_else(|| Metadata {
            name: "unnamed".to_owned(),
            ..Metadata::default()
        }),
        spec: spec.unwrap_or_default(),
    })
}

fn parse_spec(source: &str, value: Value, errors: &mut Vec<PolicyError>) -> Option<Spec> {
    let mut spec = Spec::default();
    let Value::Mapping(map) = value else {
        errors.push(PolicyError {
            source: source.to_owned(),
            path: "spec".to_owned(),
            message: format!("expected a mapping, found {}", describe(&value)),
        });
        return None;
    };
    for (key, value) in map {
        let Some(name) = key.as_str().map(str::to_owned) else {
            errors.push(PolicyError {
                source: source.to_owned(),
                path: "spec".to_owned(),
                message: format!("keys must be strings, found {}", describe(&key)),
            });
            continue;
        };
        let path = format!("spec.{name}");
        match name.as_str() {
            "onBlock" => {
                if let Some(v) = deserialize_at(value, &path, source, errors) {
                    spec.on_block = v;
                }
            }
            "topics" => spec.topics = deserialize_list(value, &path, source, errors),
            "allowedTopics" => spec.allowed_topics = deserialize_list(value, &path, source, errors),
            "offTopic" => {
                if let Some(v) = deserialize_at(value, &path, source, errors) {
                    spec.off_topic = v;
                }
            }
            "actions" => {
                if let Some(v) = parse_actions(source, value, errors) {
                    spec.actions = v;
                }
            }
            "pii" => spec.pii = deserialize_list(value, &path, source, errors),
            "stream" => {
                if let Some(v) = deserialize_at(value, &path, source, errors) {
                    spec.stream = v;
                }
            }
            "thinking" => {
                if let Some(v) = deserialize_at(value, &path, source, errors) {
                    spec.thinking = v;
                }
            }
            "customEntities" => {
                spec.custom_entities = deserialize_list(value, &path, source, errors)
            }
            "context" => spec.context = deserialize_at(value, &path, source, errors),
            "conversation" => spec.conversation = deserialize_at(value, &path, source, errors),
            _ => errors.push(PolicyError {
                source: source.to_owned(),
                path: path.clone(),
                message: unknown_field_message(&name, SPEC_FIELDS),
            }),
        }
    }
    Some(spec)
}

fn parse_actions(source: &str, value: Value, errors: &mut Vec<PolicyError>) -> Option<Actions> {
    let Value::Mapping(mut map) = value else {
        errors.push(PolicyError {
            source: source.to_owned(),
            path: "spec.actions".to_owned(),
            message: format!("expected a mapping, found {}", describe(&value)),
        });
        return None;
    };
    let before = errors.len();
    let rules = map
        .remove("rules")
        .map(|rules| deserialize_list(rules, "spec.actions.rules", source, errors))
        .unwrap_or_default();
    for key in map.keys() {
        let mut push = |path: &str, message: String| {
            errors.push(PolicyError {
                source: source.to_owned(),
                path: path.to_owned(),
                message,
            })
        };
        check_known_key(key, ACTIONS_FIELDS, "spec.actions", &mut push);
    }
    if errors.len() > before {
        return None;
    }
    let mut actions: Actions = deserialize_at(Value::Mapping(map), "spec.actions", source, errors)?;
    actions.rules = rules;
    Some(actions)
}

/// Deserializes each element of a list on its own so that every bad element is reported.
fn deserialize_list<T: DeserializeOwned>(
    value: Value,
    path: &str,
    source: &str,
    errors: &mut Vec<PolicyError>,
) -> Vec<T> {
    match value {
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| deserialize_at(item, &format!("{path}[{i}]"), source, errors))
            .collect(),
        Value::Null => Vec::new(),
        other => {
            errors.push(PolicyError {
                source: source.to_owned(),
                path: path.to_owned(),
                message: format!("expected a list, found {}", describe(&other)),
            });
            Vec::new()
        }
    }
}

fn deserialize_at<T: DeserializeOwned>(
    value: Value,
    path: &str,
    source: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_owned()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            errors.push(PolicyError {
                source: source.to_owned(),
                path: full,
                message: plain_type_names(&e.into_inner().to_string()),
            });
            None
        }
    }
}

/// Replaces Rust type names in serde's messages with the words a YAML author uses.
fn plain_type_names(message: &str) -> String {
    [
        ("expected usize", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a character", "expected a single character"),
    ]
    .iter()
    .fold(message.to_owned(), |text, (from, to)| {
        text.replace(from, to)
    })
}

fn take_string(
    map: &mut serde_norway::Mapping,
    key: &str,
    push: &mut impl FnMut(&str, String),
) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            push(
                key,
                format!("expected a string, found {}", describe(&other)),
            );
            None
        }
        None => {
            push(key, "missing field".to_owned());
            None
        }
    }
}

fn check_known_key(key: &Value, known: &[&str], parent: &str, push: &mut impl FnMut(&str, String)) {
    match key.as_str() {
        Some(name) if known.contains(&name) => {}
        Some(name) => {
            let path = if parent.is_empty() {
                name.to_owned()
            } else {
                format!("{parent}.{name}")
            };
            push(&path, unknown_field_message(name, known));
        }
        None => push(
            parent,
            format!("keys must be strings, found {}", describe(key)),
        ),
    }
}

fn unknown_field_message(name: &str, known: &[&str]) -> String {
    format!("unknown field `{name}`; allowed: {}", known.join(", "))
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GuardrailPolicy, PolicyErrors> {
        parse_sources(&[PolicySource {
            name: "p.yaml".to_owned(),
            text: text.to_owned(),
        }])
        .map(|(p, _)| p)
    }

    #[test]
    fn embedded_default_parses() {
        let policy = parse(EMBEDDED_DEFAULT).expect("embedded policy must parse");
        assert_eq!(policy.metadata.name, "default");
    }

    #[test]
    fn every_bad_rule_is_reported() {
        let text = r#"
apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata: {name: t}
spec:
  topics:
    - {id: a, phrases: "not-a-list"}
    - {id: b, phrasez: []}
  pii:
    - {id: c, entities: [EMAIL], input: erase, output: redact}
  colour: blue
"#;
        let errors = parse(text).expect_err("policy has four problems").0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(paths.contains(&"spec.topics[0].phrases"), "{paths:?}");
        assert!(
            paths.iter().any(|p| p.starts_with("spec.topics[1]")),
            "{paths:?}"
        );
        assert!(paths.contains(&"spec.pii[0].input"), "{paths:?}");
        assert!(paths.contains(&"spec.colour"), "{paths:?}");
        let pii = errors.iter().find(|e| e.path == "spec.pii[0].input");
        let message = &pii.expect("pii error").message;
        assert!(
            message.contains("erase") && message.contains("redact"),
            "{message}"
        );
    }

    #[test]
    fn wrong_api_version_and_kind_are_reported() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        let errors = parse(text).expect_err("wrong header").0;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.contains(API_VERSION));
    }

    #[test]
    fn yaml_syntax_error_names_the_file() {
        let errors = parse("spec: [unclosed").expect_err("bad yaml").0;
        assert_eq!(errors[0].source, "p.yaml");
        assert!(errors[0].message.starts_with("invalid YAML"));
    }

    #[test]
    fn two_policies_are_rejected() {
        let one =
            "apiVersion: agent-sidecar.io/v1alpha1\nkind: GuardrailPolicy\nmetadata: {name: a}\n";
        let text = format!("{one}---\n{one}");
        let errors = parse(&text).expect_err("two documents").0;
        assert!(errors[0].message.contains("exactly one policy"));
    }

    #[test]
    fn directory_skips_configmap_internals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("..2026_12_04");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("policy.yaml"), EMBEDDED_DEFAULT).expect("write");
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).expect("symlink");
        std::os::unix::fs::symlink(
            dir.path().join("..data/policy.yaml"),
            dir.path().join("policy.yaml"),
        )
        .expect("symlink");
        let sources = read_sources(dir.path()).expect("read");
        assert_eq!(sources.len(), 1);
        assert!(parse_sources(&sources).is_ok());
    }

    #[test]
    fn empty_directory_explains_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let errors = read_sources(dir.path()).expect_err("empty dir").0;
        assert!(errors[0].message.contains("no *.yaml"));
    }
}
