//! Escalations of `agent-sidecar serve --redis-url` processes sharing one `redis-server`
//! that the test starts on a free loopback port: an escalation raised by one sidecar is
//! listed and resolved by another, and its resolution applies after a restart.

mod grpc_support;
mod support;

use std::path::Path;

use grpc_support::{Sidecar, proto, write_policy};
use proto::escalations_client::EscalationsClient;
use proto::guardrails_client::GuardrailsClient;
use support::RedisServer;

fn wire_transfer(arguments: &str) -> proto::CheckActionRequest {
    proto::CheckActionRequest {
        conversation_id: "conv-shared".to_owned(),
        tool_name: "wire_transfer".to_owned(),
        arguments_json: arguments.to_owned(),
    }
}

/// Writes a config file with a fixed hash key, which the fingerprint of a tool call
/// depends on, so that restarted and other sidecars recognize the identical call.
fn write_config(dir: &Path) -> String {
    let key = dir.join("hash-key");
    std::fs::write(&key, "escalation test hash key").expect("write hash key");
    let config = dir.join("config.yaml");
    std::fs::write(&config, format!("pii:\n  hashKeyFile: {}\n", key.display()))
        .expect("write config");
    config.display().to_string()
}

async fn check(sidecar: &Sidecar, arguments: &str) -> proto::CheckActionResponse {
    GuardrailsClient::new(sidecar.ready_channel().await)
        .check_action(wire_transfer(arguments))
        .await
        .expect("check succeeds")
        .into_inner()
}

#[tokio::test]
async fn escalation_shared_and_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = RedisServer::start(dir.path(), &[]);
    let policy = write_policy(dir.path());
    let config = write_config(dir.path());
    let redis_url = redis.url();
    let extra = [
        "--config",
        config.as_str(),
        "--redis-url",
        redis_url.as_str(),
    ];
    let arguments = r#"{"to": "jane.doe@example.com", "amount": 5000}"#;

    let first = Sidecar::start(&policy, None, &extra);
    let raised = check(&first, arguments).await;
    assert_eq!(raised.decision(), proto::ActionDecision::Escalate);
    assert!(raised.escalation_id.starts_with("esc_"), "{raised:?}");

    let second = Sidecar::start(&policy, None, &extra);
    let again = check(&second, r#"{"amount": 5000, "to": "jane.doe@example.com"}"#).await;
    assert_eq!(again.decision(), proto::ActionDecision::Escalate);
    assert_eq!(
        again.escalation_id, raised.escalation_id,
        "the other sidecar reuses the pending escalation"
    );

    let mut escalations = EscalationsClient::new(second.ready_channel().await);
    let listed = escalations
        .list(proto::ListRequest {
            conversation_id: "conv-shared".to_owned(),
            state: proto::EscalationState::Pending.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list succeeds")
        .into_inner();
    assert_eq!(listed.escalations.len(), 1);
    assert_eq!(listed.escalations[0].escalation_id, raised.escalation_id);
    assert_eq!(
        listed.escalations[0].arguments_json,
        r#"{"to":"[EMAIL]","amount":5000}"#
    );

    let resolved = escalations
        .resolve(proto::ResolveRequest {
            escalation_id: raised.escalation_id.clone(),
            resolution: proto::Resolution::Approve.into(),
            resolved_by: "oncall@example.com".to_owned(),
            reason: "customer confirmed by phone".to_owned(),
        })
        .await
        .expect("resolve succeeds")
        .into_inner();
    assert_eq!(resolved.state(), proto::EscalationState::Approved);

    drop(first);
    drop(second);
    let restarted = Sidecar::start(&policy, None, &extra);
    let allowed = check(&restarted, arguments).await;
    assert_eq!(allowed.decision(), proto::ActionDecision::Allow);
    assert_eq!(allowed.escalation_id, raised.escalation_id);

    let twice = EscalationsClient::new(restarted.ready_channel().await)
        .resolve(proto::ResolveRequest {
            escalation_id: raised.escalation_id.clone(),
            resolution: proto::Resolution::Deny.into(),
            resolved_by: "someone-else".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("a resolved escalation cannot be resolved again");
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
}
