//! Injection into YAML manifests, for `agent-sidecar inject`: finds the pod template of
//! each workload document, applies the same mutation the webhook applies, and writes the
//! document back. Documents of other kinds, and workloads left unchanged, are copied
//! byte for byte so the output diffs cleanly in Git.

use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use super::mutate::{Mutation, NamespaceInjection, Outcome, mutate};
use super::settings::InjectionSettings;

/// Outcome and warnings for one pod template in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateReport {
    /// `Kind/name` of the document, with `items[i]` inside a `List`.
    pub object: String,
    pub outcome: Outcome,
    pub warnings: Vec<String>,
}

/// The rewritten manifest and a report per pod template found.
#[derive(Debug)]
pub struct InjectedManifest {
    pub text: String,
    pub templates: Vec<TemplateReport>,
}

/// Error in one document of a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: invalid YAML: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_norway::Error,
    },
    #[error("document {index} ({object}): {message}")]
    Object {
        index: usize,
        object: String,
        message: String,
    },
}

/// Injects the sidecar into every pod template in `text` (one or more YAML documents).
/// A template with invalid annotations is an error, and every such error is returned.
pub fn inject_manifest(
    text: &str,
    namespace: NamespaceInjection,
    settings: &InjectionSettings,
) -> Result<InjectedManifest, Vec<ManifestError>> {
    let mut output = String::with_capacity(text.len() + 1024);
    let mut templates = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in split_documents(text).into_iter().enumerate() {
        if index > 0 {
            output.push_str("---\n");
        }
        let number = index + 1;
        let mut value: Value = match serde_norway::from_str(document) {
            Ok(value) => value,
            Err(source) => {
                errors.push(ManifestError::Yaml {
                    index: number,
                    source,
                });
                continue;
            }
        };
        let mut changed = false;
        let object = describe(&value);
        let mut reports = Vec::new();
        if kind_of(&value) == Some(("", "List")) {
            let count = value
                .get("items")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for item in 0..count {
                let base = PointerBuf::from_tokens(["items".to_owned(), item.to_string()]);
                let name = format!("{object} items[{item}] {}", describe(&value["items"][item]));
                changed |=
                    inject_object(&mut value, &base, &name, namespace, settings, &mut reports);
            }
        } else {
            changed = inject_object(
                &mut value,
                &PointerBuf::root(),
                &object,
                namespace,
                settings,
                &mut reports,
            );
        }
        for report in &reports {
            if let Outcome::Rejected(problems) = &report.outcome {
                errors.push(ManifestError::Object {
                    index: number,
                    object: report.object.clone(),
                    message: problems.join("; "),
                });
            }
        }
        templates.extend(reports);
        if !changed {
            output.push_str(document);
            continue;
        }
        match serde_norway::to_string(&value) {
            Ok(yaml) => output.push_str(&yaml),
            Err(source) => errors.push(ManifestError::Yaml {
                index: number,
                source,
            }),
        }
    }
    if errors.is_empty() {
        Ok(InjectedManifest {
            text: output,
            templates,
        })
    } else {
        Err(errors)
    }
}

/// Injects into the workload at `base` inside `document`. Returns whether it changed.
fn inject_object(
    document: &mut Value,
    base: &PointerBuf,
    name: &str,
    namespace: NamespaceInjection,
    settings: &InjectionSettings,
    reports: &mut Vec<TemplateReport>,
) -> bool {
    let Some(object) = base.resolve(&*document).ok() else {
        return false;
    };
    let Some(template_path) = kind_of(object).and_then(template_path) else {
        return false;
    };
    let mut template_base = base.clone();
    for token in template_path {
        template_base.push_back(*token);
    }
    let template = match template_base.resolve(&*document) {
        Ok(value) => serde_json::from_value::<PodTemplateSpec>(value.clone()),
        Err(_) => {
            reports.push(TemplateReport {
                object: name.to_owned(),
                outcome: Outcome::Rejected(vec!["the workload has no pod template".to_owned()]),
                warnings: Vec::new(),
            });
            return false;
        }
    };
    let template = match template {
        Ok(template) => template,
        Err(error) => {
            reports.push(TemplateReport {
                object: name.to_owned(),
                outcome: Outcome::Rejected(vec![format!("invalid pod template: {error}")]),
                warnings: Vec::new(),
            });
            return false;
        }
    };
    let Mutation {
        outcome,
        patch,
        warnings,
    } = mutate(
        template.metadata.as_ref(),
        template.spec.as_ref(),
        &template_base,
        namespace,
        settings,
    );
    let mut changed = false;
    let mut outcome = outcome;
    if matches!(outcome, Outcome::Injected { .. }) {
        match json_patch::patch(document, &patch) {
            Ok(()) => changed = true,
            Err(error) => {
                outcome = Outcome::Rejected(vec![format!("cannot apply the patch: {error}")]);
            }
        }
    }
    reports.push(TemplateReport {
        object: name.to_owned(),
        outcome,
        warnings,
    });
    changed
}

/// (API group, kind) of a Kubernetes object; the core group is `""`.
fn kind_of(object: &Value) -> Option<(&str, &str)> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let kind = object.get("kind")?.as_str()?;
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    Some((group, kind))
}

/// Returns the path of a kind's pod template, relative to the object.
fn template_path((group, kind): (&str, &str)) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{kind}/{name}")
}

/// Splits a YAML stream at document markers (`---` at the start of a line), keeping each
/// document's text exactly. A marker before the first document does not start an empty
/// one.
fn split_documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_marker =
            content == "---" || content.starts_with("--- ") || content.starts_with("---\t");
        if is_marker {
            if offset > 0 {
                documents.push(&text[start..offset]);
            }
            start = offset + line.len();
        }
        offset += line.len();
    }
    if start < text.len() || documents.is_empty() {
        documents.push(&text[start..]);
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_document_text() {
        let text = "---\na: 1\n---\n# c\nb: 2\n--- # x\nc: 3\n";
        assert_eq!(
            split_documents(text),
            vec!["a: 1\n", "# c\nb: 2\n", "c: 3\n"]
        );
    }

    #[test]
    fn split_without_markers_is_one_document() {
        assert_eq!(split_documents("a: 1\n"), vec!["a: 1\n"]);
        assert_eq!(split_documents(""), vec![""]);
    }

    #[test]
    fn template_paths_per_kind() {
        assert_eq!(
            template_path(("apps", "Deployment")),
            Some(&["spec", "template"][..])
        );
        assert_eq!(
            template_path(("batch", "CronJob")),
            Some(&["spec", "jobTemplate", "spec", "template"][..])
        );
        assert_eq!(template_path(("", "Service")), None);
    }
}
