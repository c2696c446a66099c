//! Kubernetes integration: injecting the sidecar into pods, the admission webhook that
//! does it at pod creation, and the `GuardrailPolicy` CustomResourceDefinition.
//!
//! [`mutate::mutate`] is a pure function from a pod (or a workload's pod template) to a
//! JSON Patch. The webhook ([`server`], [`admission`]) and the offline `inject` command
//! ([`workload`]) both call it, so a pod injected either way is the same.

pub mod admission;
pub mod container;
pub mod crd;
pub mod metrics;
pub mod mutate;
pub mod server;
pub mod settings;
pub mod tls;
pub mod workload;

#[cfg(test)]
mod tests;
