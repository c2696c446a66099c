//! agent-sidecar: a per-pod sidecar that enforces a guardrail policy on an AI agent's
//! model traffic.
//!
//! The binary in `main.rs` only parses the command line; everything else lives here so
//! that the proxy, the `check` command and tests share one engine.

pub mod cmd;
pub mod config;
pub mod context;
pub mod dialect;
pub mod events;
pub mod grpc;
pub mod guard;
pub mod health;
pub mod policy;
pub mod proxy;
pub mod sse;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod webhook;
