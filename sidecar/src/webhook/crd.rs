//! The `GuardrailPolicy` CustomResourceDefinition and the policy's JSON Schema, both
//! generated from the Rust types the sidecar loads policies with, so the schema the API
//! server enforces cannot drift from what the sidecar accepts.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::schema::StructuralSchemaRewriter;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::policy::spec::{API_VERSION, GuardrailPolicy, KIND, Spec};

/// API group of the policy resource.
pub const GROUP: &str = "agent-sidecar.io";
/// API version within the group.
pub const VERSION: &str = "v1alpha1";
/// Plural resource name, as in `kubectl get guardrailpolicies`.
pub const PLURAL: &str = "guardrailpolicies";

/// Failure to generate the CRD.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("the generated schema is not a valid OpenAPI v3 schema for a CRD: {0}")]
    Schema(#[source] serde_json::Error),
    #[error(
        "the generated schema uses keywords a CRD cannot carry, which the API server would drop: \
         {0}"
    )]
    LostKeywords(String),
}

/// Generates the OpenAPI v3 schema of `spec` in the structural form Kubernetes
/// requires: no references, enums as `enum` lists, `nullable` instead of null types, and
/// no `additionalProperties: false`. Instead of that, the API server prunes unknown
/// fields, and `kubectl apply` rejects them with server-side field validation.
pub fn spec_openapi_schema() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|settings| {
            settings.inline_subschemas = true;
            settings.meta_schema = None;
        })
        .with_transform(StructuralSchemaRewriter)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<Spec>().to_value();
    make_structural(&mut schema);
    if let Value::Object(map) = &mut schema {
        map.remove("title");
    }
    schema
}

/// Rewrites what schemars emits but a structural CRD schema forbids or ignores.
fn make_structural(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        map.remove("additionalProperties");
    }

    // Defaults of whole sections (`onBlock: {...}`, `topics: []`) and of absent optional
    // fields (`null`) would make the API server write every section into every stored
    // object. The sidecar applies those defaults itself; scalar defaults inside the
    // sections a user writes, such as `mode: enforce`, stay visible in kubectl output.
    if matches!(
        map.get("default"),
        Some(Value::Null | Value::Object(_) | Value::Array(_))
    ) {
        map.remove("default");
    }

    // `enum` values of an argument constraint are arbitrary JSON; schemars leaves their
    // item schema empty, which a structural schema must mark explicitly.
    if map.is_empty() {
        map.insert(
            "x-kubernetes-preserve-unknown-fields".to_owned(),
            Value::Bool(true),
        );
    }
    // A `oneOf` of single `const` values is how schemars writes a documented enum;
    // Kubernetes wants a plain `enum` list.
    if let Some(Value::Array(variants)) = map.get("oneOf") {
        let values: Option<Vec<Value>> = variants
            .iter()
            .map(|variant| variant.get("const").cloned())
            .collect();
        if let Some(values) = values {
            map.remove("oneOf");
            map.insert("type".to_owned(), json!("string"));
            map.insert("enum".to_owned(), Value::Array(values));
        }
    }
    // An optional enum arrives as `anyOf: [<enum>, {enum: [null]}]`; Kubernetes wants the
    // enum itself, marked nullable.
    if let Some(Value::Array(options)) = map.get("anyOf") {
        let is_null = |option: &Value| option.get("enum") == Some(&json!([null]));
        if options.len() == 2 && options.iter().any(is_null) {
            let inner = options.iter().find(|option| !is_null(option)).cloned();
            if let Some(Value::Object(inner)) = inner {
                map.remove("anyOf");
                for (key, value) in inner {
                    map.entry(key).or_insert(value);
                }
                map.insert("nullable".to_owned(), Value::Bool(true));
            }
        }
    }
    // Only keywords that hold schemas are visited: `properties` maps field names (one may
    // be called `default`) to schemas, while `enum` and `default` hold plain data.
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.values_mut().for_each(make_structural);
    }
    for keyword in ["items", "additionalProperties"] {
        match map.get_mut(keyword) {
            Some(Value::Array(items)) => items.iter_mut().for_each(make_structural),
            Some(value @ Value::Object(_)) => make_structural(value),
            _ => {}
        }
    }
    for keyword in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(schemas)) = map.get_mut(keyword) {
            schemas.iter_mut().for_each(make_structural);
        }
    }
}

/// Builds the whole CustomResourceDefinition for `GuardrailPolicy`.
pub fn custom_resource_definition() -> Result<CustomResourceDefinition, CrdError> {
    let object_schema = json!({
        "type": "object",
        "description": "A guardrail policy enforced by the agent-sidecar in each pod that \
                        mounts it. The same document is read by the sidecar from a mounted \
                        ConfigMap file.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_openapi_schema(),
        },
    });
    let props: JSONSchemaProps =
        serde_json::from_value(object_schema.clone()).map_err(CrdError::Schema)?;
    let round_trip = serde_json::to_value(&props).map_err(CrdError::Schema)?;
    let lost = lost_keywords(&object_schema, &round_trip, "");
    if !lost.is_empty() {
        return Err(CrdError::LostKeywords(lost.join(", ")));
    }

    let column = |name: &str, type_: &str, json_path: &str, description: &str| {
        CustomResourceColumnDefinition {
            name: name.to_owned(),
            type_: type_.to_owned(),
            json_path: json_path.to_owned(),
            description: Some(description.to_owned()),
            ..CustomResourceColumnDefinition::default()
        }
    };
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{PLURAL}.{GROUP}")),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_owned(),
                    "agent-sidecar".to_owned(),
                )]
                .into_iter()
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_owned(),
            scope: "Namespaced".to_owned(),
            names: CustomResourceDefinitionNames {
                kind: KIND.to_owned(),
                list_kind: Some(format!("{KIND}List")),
                plural: PLURAL.to_owned(),
                singular: Some("guardrailpolicy".to_owned()),
                short_names: Some(vec!["gpol".to_owned()]),
                categories: Some(vec!["agent-sidecar".to_owned()]),
            },
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(props),
                }),
                additional_printer_columns: Some(vec![
                    column(
                        "On-Block",
                        "string",
                        ".spec.onBlock.response",
                        "How blocked traffic is answered: refusal or error",
                    ),
                    column(
                        "Default-Action",
                        "string",
                        ".spec.actions.default",
                        "Decision for tools no action rule names",
                    ),
                    column(
                        "Age",
                        "date",
                        ".metadata.creationTimestamp",
                        "Time since creation",
                    ),
                ]),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    })
}

/// Renders the CRD as the YAML committed under `manifests/crd/`.
pub fn custom_resource_definition_yaml() -> Result<String, CrdError> {
    let crd = custom_resource_definition()?;
    let mut value = serde_json::to_value(&crd).map_err(CrdError::Schema)?;
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".to_owned(), json!("apiextensions.k8s.io/v1"));
        map.insert("kind".to_owned(), json!("CustomResourceDefinition"));
    }
    let body = serde_norway::to_string(&ordered_crd(value))
        .map_err(|e| CrdError::Schema(serde::ser::Error::custom(e)))?;
    Ok(format!(
        "# Generated by `agent-sidecar policy schema --crd` from the policy's Rust types; \
         do not edit.\n{body}"
    ))
}

/// Puts `apiVersion` and `kind` first, as people expect to read a manifest.
fn ordered_crd(value: Value) -> Value {
    let Value::Object(mut map) = value else {
        return value;
    };
    let mut ordered = Map::new();
    for key in ["apiVersion", "kind", "metadata", "spec"] {
        if let Some(v) = map.remove(key) {
            ordered.insert(key.to_owned(), v);
        }
    }
    ordered.extend(map);
    Value::Object(ordered)
}

/// Generates the JSON Schema of a whole `GuardrailPolicy` document, for editors and
/// linters. Unlike the CRD schema it rejects unknown fields, as the sidecar does.
pub fn policy_json_schema() -> Value {
    // Draft 7 rather than 2020-12: editor integrations have supported it the longest.
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<GuardrailPolicy>()
        .to_value();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert("apiVersion".to_owned(), json!({"const": API_VERSION}));
        properties.insert("kind".to_owned(), json!({"const": KIND}));
    }
    schema
}

/// Keywords present in `before` but missing from `after`, as JSON Pointer paths.
fn lost_keywords(before: &Value, after: &Value, path: &str) -> Vec<String> {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => b
            .iter()
            .flat_map(|(key, value)| {
                let child = format!("{path}/{key}");
                match a.get(key) {
                    Some(other) => lost_keywords(value, other, &child),
                    None => vec![child],
                }
            })
            .collect(),
        (Value::Array(b), Value::Array(a)) => b
            .iter()
            .zip(a)
            .enumerate()
            .flat_map(|(i, (value, other))| lost_keywords(value, other, &format!("{path}/{i}")))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_named_default_keeps_schema() {
        let schema = spec_openapi_schema();
        let default = &schema["properties"]["actions"]["properties"]["default"];
        assert_eq!(default["type"], "string");
        assert_eq!(default["enum"], json!(["allow", "deny", "escalate"]));
        assert_eq!(default["default"], "allow", "a scalar default stays");
    }

    #[test]
    fn section_defaults_are_removed() {
        let schema = spec_openapi_schema();
        assert!(schema["properties"]["onBlock"].get("default").is_none());
        assert!(schema["properties"]["topics"].get("default").is_none());
        let refusal = &schema["properties"]["onBlock"]["properties"]["refusal"];
        assert!(refusal.get("default").is_none(), "no null default");
        assert_eq!(refusal["nullable"], true);
    }

    #[test]
    fn optional_enum_becomes_nullable_enum() {
        let mut schema = json!({
            "anyOf": [
                {"type": "string", "enum": ["a", "b"], "description": "Choice."},
                {"enum": [null], "nullable": true},
            ],
        });
        make_structural(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "string", "enum": ["a", "b"], "description": "Choice.", "nullable": true})
        );
    }

    #[test]
    fn arbitrary_enum_values_are_preserved() {
        let schema = spec_openapi_schema();
        let constraint = &schema["properties"]["actions"]["properties"]["rules"]["items"]["properties"]
            ["arguments"]["items"];
        let items = &constraint["properties"]["enum"]["items"];
        assert_eq!(items["x-kubernetes-preserve-unknown-fields"], true);
        assert!(constraint.get("additionalProperties").is_none());
    }

    #[test]
    fn crd_carries_every_generated_keyword() {
        let crd = custom_resource_definition().expect("the CRD builds");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("guardrailpolicies.agent-sidecar.io")
        );
        let yaml = custom_resource_definition_yaml().expect("the CRD serializes");
        assert!(
            yaml.contains(
                "\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
            )
        );
    }

    #[test]
    fn editor_schema_pins_api_version_and_kind() {
        let schema = policy_json_schema();
        assert_eq!(schema["properties"]["apiVersion"]["const"], API_VERSION);
        assert_eq!(schema["properties"]["kind"]["const"], KIND);
        assert_eq!(schema["additionalProperties"], false);
    }
}
