//! The gRPC API of `agent-sidecar serve`, driven over real sockets by tonic clients
//! generated from `proto/`: health, reflection and the `Guardrails` service.

mod grpc_support;

use grpc_support::{Sidecar, field_violations, message, proto, tool_call_message, write_policy};
use proto::guardrails_client::GuardrailsClient;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reports_serving_with_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let channel = sidecar.ready_channel().await;
    assert_eq!(
        grpc_support::health_status(&channel).await,
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn health_not_serving_until_policy_appears() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    let sidecar = Sidecar::start(&policy, None, &[]);
    let channel = sidecar.channel().await;
    assert_eq!(
        grpc_support::health_status(&channel).await,
        ServingStatus::NotServing
    );
    let readyz = reqwest::get(format!("{}/readyz", sidecar.admin))
        .await
        .expect("admin answers while the policy is missing");
    assert_eq!(readyz.status(), 503);
    let body: serde_json::Value =
        serde_json::from_slice(&readyz.bytes().await.expect("body")).expect("JSON body");
    assert_eq!(body["checks"]["policy"]["status"], "missing");
    let early = GuardrailsClient::new(channel.clone())
        .check_input(proto::CheckInputRequest {
            conversation_id: String::new(),
            text: "hello".to_owned(),
            messages: vec![],
        })
        .await
        .expect_err("the engine does not serve before its policy");
    assert_eq!(early.code(), tonic::Code::Unavailable, "{early:?}");
    assert!(early.message().contains("policy"), "{early:?}");

    write_policy(dir.path());
    grpc_support::wait_for_status(&channel, ServingStatus::Serving).await;
    let readyz = reqwest::get(format!("{}/readyz", sidecar.admin))
        .await
        .expect("admin answers");
    assert_eq!(readyz.status(), 200);
    let mut client = GuardrailsClient::new(channel);
    let response = client
        .check_action(proto::CheckActionRequest {
            conversation_id: "conv-late-policy".to_owned(),
            tool_name: "delete_user".to_owned(),
            arguments_json: String::new(),
        })
        .await
        .expect("the API serves once the policy is loaded")
        .into_inner();
    assert_eq!(response.decision(), proto::ActionDecision::Deny);
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let channel = sidecar.ready_channel().await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("no error");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!(
            "expected a service list, got {:?}",
            response.message_response
        );
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["agent_sidecar.v1.Guardrails", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn reflection_answers_under_v1alpha_too() {
    use tonic_reflection::pb::v1alpha as alpha;

    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let channel = sidecar.ready_channel().await;
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("no error");
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!(
            "expected a service list, got {:?}",
            response.message_response
        );
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "agent_sidecar.v1.Guardrails"),
        "{:?}",
        list.service
    );
}

#[tokio::test]
async fn check_input_redacts_text_and_reports_span() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = GuardrailsClient::new(sidecar.ready_channel().await);
    let text = "Mail me at jane.doe@example.com please";
    let response = client
        .check_input(proto::CheckInputRequest {
            conversation_id: String::new(),
            text: text.to_owned(),
            messages: vec![],
        })
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(response.verdict(), proto::Verdict::Transform);
    assert_eq!(response.text, "Mail me at [EMAIL] please");
    assert_eq!(response.findings.len(), 1);
    let finding = &response.findings[0];
    assert_eq!(finding.rule_id, "contact-details");
    assert_eq!(finding.entity, "EMAIL");
    assert_eq!(finding.outcome(), proto::Outcome::Redact);
    let span = finding.span.expect("a span");
    let start = text.find("jane").expect("email in text");
    assert_eq!(span.start as usize, start);
    assert_eq!(span.end as usize, start + "jane.doe@example.com".len());
}

#[tokio::test]
async fn check_input_blocks_denied_topic_in_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = GuardrailsClient::new(sidecar.ready_channel().await);
    let response = client
        .check_input(proto::CheckInputRequest {
            conversation_id: "conv-topic".to_owned(),
            text: String::new(),
            messages: vec![
                message(proto::Role::System, "You are helpful."),
                message(proto::Role::User, "What dosage of this should I take?"),
            ],
        })
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(response.verdict(), proto::Verdict::Block);
    assert_eq!(response.rule_id, "no-medical-advice");
    assert_eq!(response.messages.len(), 2);
    let finding = &response.findings[0];
    assert_eq!(finding.kind(), proto::FindingKind::Topic);
    assert_eq!(finding.message_index, Some(1));
    assert_eq!(finding.part_index, Some(0));
}

#[tokio::test]
async fn check_output_redacts_and_checks_tool_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = GuardrailsClient::new(sidecar.ready_channel().await);
    let redacted = client
        .check_output(proto::CheckOutputRequest {
            conversation_id: String::new(),
            text: String::new(),
            messages: vec![tool_call_message(
                "send_mail",
                r#"{"to":"jane.doe@example.com","body":"hi"}"#,
            )],
        })
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(redacted.verdict(), proto::Verdict::Transform);
    let Some(proto::part::Content::ToolCall(call)) = &redacted.messages[0].parts[0].content else {
        panic!("tool call expected in {:?}", redacted.messages);
    };
    assert_eq!(call.arguments_json, r#"{"to":"[EMAIL]","body":"hi"}"#);

    let denied = client
        .check_output(proto::CheckOutputRequest {
            conversation_id: String::new(),
            text: String::new(),
            messages: vec![tool_call_message("delete_user", r#"{"id":7}"#)],
        })
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(denied.verdict(), proto::Verdict::Block);
    assert_eq!(denied.rule_id, "no-deletes");
}

#[tokio::test]
async fn check_action_allows_and_denies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = GuardrailsClient::new(sidecar.ready_channel().await);
    let cases = [
        (
            "get_weather",
            r#"{"city":"Oslo"}"#,
            proto::ActionDecision::Allow,
            "actions-default",
        ),
        (
            "delete_user",
            "{}",
            proto::ActionDecision::Deny,
            "no-deletes",
        ),
        (
            "refund_order",
            r#"{"amount":50}"#,
            proto::ActionDecision::Allow,
            "refund-limit",
        ),
        (
            "refund_order",
            r#"{"amount":500}"#,
            proto::ActionDecision::Deny,
            "refund-limit",
        ),
    ];
    for (tool, arguments, expected, rule) in cases {
        let response = client
            .check_action(proto::CheckActionRequest {
                conversation_id: "conv-actions".to_owned(),
                tool_name: tool.to_owned(),
                arguments_json: arguments.to_owned(),
            })
            .await
            .expect("check succeeds")
            .into_inner();
        assert_eq!(response.decision(), expected, "{tool} {arguments}");
        assert_eq!(response.rule_id, rule, "{tool} {arguments}");
    }
    let over = client
        .check_action(proto::CheckActionRequest {
            conversation_id: "conv-actions".to_owned(),
            tool_name: "refund_order".to_owned(),
            arguments_json: r#"{"amount":500}"#.to_owned(),
        })
        .await
        .expect("check succeeds")
        .into_inner();
    assert!(over.reason.contains("/amount"), "reason: {}", over.reason);
    assert!(
        !over.reason.contains("500"),
        "reason shows the value: {}",
        over.reason
    );
}

#[tokio::test]
async fn guardrails_reject_malformed_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = GuardrailsClient::new(sidecar.ready_channel().await);

    let empty = client
        .check_input(proto::CheckInputRequest::default())
        .await
        .expect_err("an empty request is invalid");
    let fields: Vec<String> = field_violations(&empty).into_iter().map(|v| v.0).collect();
    assert_eq!(fields, ["text"]);

    let no_role = client
        .check_output(proto::CheckOutputRequest {
            messages: vec![proto::Message {
                role: proto::Role::Unspecified.into(),
                parts: vec![proto::Part { content: None }],
            }],
            ..Default::default()
        })
        .await
        .expect_err("a message without role is invalid");
    let fields: Vec<String> = field_violations(&no_role)
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(fields, ["messages[0].role", "messages[0].parts[0]"]);

    let bad_action = client
        .check_action(proto::CheckActionRequest {
            conversation_id: String::new(),
            tool_name: "refund_order".to_owned(),
            arguments_json: "{not json".to_owned(),
        })
        .await
        .expect_err("invalid JSON arguments are rejected");
    let fields: Vec<String> = field_violations(&bad_action)
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(fields, ["conversation_id", "arguments_json"]);
}

#[tokio::test]
async fn oversized_request_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "limits:\n  maxRequestBodyBytes: 4096\n").expect("write config");
    let sidecar = Sidecar::start(
        &write_policy(dir.path()),
        None,
        &["--config", config.to_str().expect("UTF-8 path")],
    );
    let mut client = GuardrailsClient::new(sidecar.ready_channel().await);
    let status = client
        .check_input(proto::CheckInputRequest {
            text: "a".repeat(8192),
            ..Default::default()
        })
        .await
        .expect_err("a request over the limit is rejected");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn unix_socket_serves_the_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("grpc.sock");
    let listen = format!("unix:{}", socket.display());
    let sidecar = Sidecar::start(&write_policy(dir.path()), Some(&listen), &[]);
    let mut client = GuardrailsClient::new(sidecar.ready_channel().await);
    let response = client
        .check_action(proto::CheckActionRequest {
            conversation_id: "conv-unix".to_owned(),
            tool_name: "delete_user".to_owned(),
            arguments_json: String::new(),
        })
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(response.decision(), proto::ActionDecision::Deny);
}
