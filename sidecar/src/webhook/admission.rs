//! `AdmissionReview` v1 in, `AdmissionReview` v1 out: reads the request with
//! `kube-core`'s types, runs the pod mutation and builds the response. No I/O, so the
//! server and the unit tests share it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use json_patch::Patch;
use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Pod;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use super::mutate::{Mutation, NamespaceInjection, Outcome, mutate};
use super::settings::InjectionSettings;

/// The only review version the webhook serves; `v1beta1` was removed in Kubernetes 1.22.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// Error for a request body that is not a review the webhook can process. The server
/// returns 400 with this message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("invalid AdmissionReview: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error(
        "unsupported review {api_version:?} {kind:?}; send kind AdmissionReview with apiVersion \
         {ADMISSION_API_VERSION} (admissionReviewVersions: [v1])"
    )]
    UnsupportedVersion { api_version: String, kind: String },
    #[error("invalid AdmissionReview: the request field is missing")]
    MissingRequest,
    #[error("invalid AdmissionReview: request.object is not a valid Pod: {0}")]
    InvalidPod(#[source] serde_json::Error),
}

/// A response and what it decided, for logs and metrics.
#[derive(Debug)]
pub struct Reviewed {
    pub review: AdmissionReview<DynamicObject>,
    /// `injected`, `skipped` or `rejected`.
    pub outcome: &'static str,
    /// The skip reason, or the outcome again.
    pub reason: &'static str,
    pub uid: String,
    pub namespace: String,
    /// The pod's name, or its `generateName` prefix when the API server has not named it yet.
    pub pod: String,
    pub warnings: Vec<String>,
}

impl Reviewed {
    /// Encodes the response review as the API server reads it. `kube-core` serializes the
    /// patch bytes as a JSON array of numbers, but the `patch` field of the v1 API is a
    /// base64 string, so it is rewritten here.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.review).unwrap_or_default();
        let patch = self.review.response.as_ref().and_then(|r| r.patch.as_ref());
        if let (Some(bytes), Some(response)) = (patch, value.get_mut("response")) {
            response["patch"] = serde_json::Value::String(BASE64.encode(bytes));
        }
        value
    }
}

/// Builds the response to one admission review body.
pub fn review(
    body: &[u8],
    namespace_injection: NamespaceInjection,
    settings: &InjectionSettings,
) -> Result<Reviewed, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(ReviewError::InvalidJson)?;
    if review.types.api_version != ADMISSION_API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(ReviewError::UnsupportedVersion {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::MissingRequest)?;
    let response = AdmissionResponse::from(&request);
    let namespace = request.namespace.clone().unwrap_or_default();
    let mut reviewed = Reviewed {
        review: response.clone().into_review(),
        outcome: "skipped",
        reason: "",
        uid: request.uid.clone(),
        namespace,
        pod: request.name.clone(),
        warnings: Vec::new(),
    };

    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.sub_resource.is_some() {
        reviewed.reason = "unsupported_kind";
        return Ok(reviewed);
    }
    if request.operation != Operation::Create {
        reviewed.reason = "not_create";
        return Ok(reviewed);
    }
    let Some(object) = &request.object else {
        reviewed.reason = "no_object";
        return Ok(reviewed);
    };
    let value = serde_json::to_value(object).map_err(ReviewError::InvalidPod)?;
    let pod: Pod = serde_json::from_value(value).map_err(ReviewError::InvalidPod)?;
    if reviewed.pod.is_empty() {
        reviewed.pod = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_default();
    }

    let Mutation {
        outcome,
        patch,
        warnings,
    } = mutate(
        Some(&pod.metadata),
        pod.spec.as_ref(),
        &PointerBuf::root(),
        namespace_injection,
        settings,
    );
    let mut response = response;
    match outcome {
        Outcome::Injected { .. } => {
            reviewed.outcome = "injected";
            reviewed.reason = "injected";
            // A JSON Patch of plain JSON values always serializes; keep the pod
            // admitted unmodified if it somehow does not.
            response = match response.clone().with_patch(Patch(patch)) {
                Ok(patched) => patched,
                Err(_) => response,
            };
        }
        Outcome::Skipped(reason) => {
            reviewed.reason = reason.as_str();
        }
        Outcome::Rejected(problems) => {
            reviewed.outcome = "rejected";
            reviewed.reason = "rejected";
            response = response.deny(format!(
                "agent-sidecar injection requested with invalid settings: {}; fix the \
                 annotations or set agent-sidecar.io/inject: \"false\"",
                problems.join("; ")
            ));
        }
    }
    response
        .audit_annotations
        .insert("injection".to_owned(), reviewed.reason.to_owned());
    if !warnings.is_empty() {
        response.warnings = Some(warnings.clone());
    }
    reviewed.warnings = warnings;
    reviewed.review = response.into_review();
    Ok(reviewed)
}
