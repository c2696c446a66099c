//! Escalations and events over gRPC: a tool call that an `escalate` rule stops is
//! created, watched as an event, approved or denied, and the identical call retried.

mod grpc_support;

use std::time::Duration;

use grpc_support::{Sidecar, field_violations, message, proto, write_policy};
use proto::escalations_client::EscalationsClient;
use proto::events_client::EventsClient;
use proto::guardrails_client::GuardrailsClient;
use tonic::Streaming;

/// Returns the next event of `stream`, failing after 10 seconds.
async fn next_event(stream: &mut Streaming<proto::Event>) -> proto::Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 seconds")
        .expect("the stream has no error")
        .expect("the stream is open")
}

fn wire_transfer(conversation: &str, arguments: &str) -> proto::CheckActionRequest {
    proto::CheckActionRequest {
        conversation_id: conversation.to_owned(),
        tool_name: "wire_transfer".to_owned(),
        arguments_json: arguments.to_owned(),
    }
}

fn escalation_of(event: &proto::Event) -> &proto::Escalation {
    match &event.payload {
        Some(proto::event::Payload::Escalation(escalation)) => escalation,
        other => panic!("expected an escalation payload, got {other:?}"),
    }
}

#[tokio::test]
async fn escalation_approved_then_call_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let channel = sidecar.ready_channel().await;
    let mut guardrails = GuardrailsClient::new(channel.clone());
    let mut escalations = EscalationsClient::new(channel.clone());
    let mut events = EventsClient::new(channel)
        .watch(proto::WatchRequest {
            types: vec![],
            conversation_id: "conv-approve".to_owned(),
        })
        .await
        .expect("watch starts")
        .into_inner();
    let arguments = r#"{"to": "jane.doe@example.com", "amount": 5000}"#;

    let first = guardrails
        .check_action(wire_transfer("conv-approve", arguments))
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(first.decision(), proto::ActionDecision::Escalate);
    assert_eq!(first.rule_id, "wire-review");
    assert!(first.escalation_id.starts_with("esc_"), "{first:?}");
    assert!(first.escalation_expire_time.is_some());

    let created = next_event(&mut events).await;
    assert_eq!(created.r#type(), proto::EventType::EscalationCreated);
    assert_eq!(created.conversation_id, "conv-approve");
    let escalation = escalation_of(&created);
    assert_eq!(escalation.escalation_id, first.escalation_id);
    assert_eq!(escalation.tool_name, "wire_transfer");
    assert_eq!(
        escalation.arguments_json,
        r#"{"to":"[EMAIL]","amount":5000}"#
    );
    assert_eq!(escalation.state(), proto::EscalationState::Pending);

    let again = guardrails
        .check_action(wire_transfer(
            "conv-approve",
            r#"{"amount": 5000, "to": "jane.doe@example.com"}"#,
        ))
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(again.decision(), proto::ActionDecision::Escalate);
    assert_eq!(
        again.escalation_id, first.escalation_id,
        "same call, same escalation"
    );

    let pending = escalations
        .list(proto::ListRequest {
            conversation_id: "conv-approve".to_owned(),
            state: proto::EscalationState::Pending.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list succeeds")
        .into_inner();
    assert_eq!(pending.escalations.len(), 1);
    assert_eq!(pending.escalations[0].escalation_id, first.escalation_id);

    let resolved = escalations
        .resolve(proto::ResolveRequest {
            escalation_id: first.escalation_id.clone(),
            resolution: proto::Resolution::Approve.into(),
            resolved_by: "oncall@example.com".to_owned(),
            reason: "customer confirmed by phone".to_owned(),
        })
        .await
        .expect("resolve succeeds")
        .into_inner();
    assert_eq!(resolved.state(), proto::EscalationState::Approved);
    assert_eq!(resolved.resolved_by, "oncall@example.com");
    assert!(resolved.resolve_time.is_some());

    let resolved_event = next_event(&mut events).await;
    assert_eq!(
        resolved_event.r#type(),
        proto::EventType::EscalationResolved
    );
    assert_eq!(
        escalation_of(&resolved_event).state(),
        proto::EscalationState::Approved
    );

    let retried = guardrails
        .check_action(wire_transfer("conv-approve", arguments))
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(retried.decision(), proto::ActionDecision::Allow);
    assert_eq!(retried.escalation_id, first.escalation_id);

    let other_arguments = guardrails
        .check_action(wire_transfer("conv-approve", r#"{"amount": 9000}"#))
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(other_arguments.decision(), proto::ActionDecision::Escalate);
    assert_ne!(other_arguments.escalation_id, first.escalation_id);

    let twice = escalations
        .resolve(proto::ResolveRequest {
            escalation_id: first.escalation_id.clone(),
            resolution: proto::Resolution::Deny.into(),
            resolved_by: "someone-else".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("a resolved escalation cannot be resolved again");
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);

    let metrics = reqwest::get(format!("{}/metrics", sidecar.admin))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .contains(r#"agent_sidecar_escalations_total{event="approved",rule="wire-review"} 1"#),
        "approval not counted:\n{metrics}"
    );
}

#[tokio::test]
async fn escalation_denied_then_call_denied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let channel = sidecar.ready_channel().await;
    let mut guardrails = GuardrailsClient::new(channel.clone());
    let mut escalations = EscalationsClient::new(channel);
    let arguments = r#"{"amount": 70000}"#;

    let first = guardrails
        .check_action(wire_transfer("conv-deny", arguments))
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(first.decision(), proto::ActionDecision::Escalate);
    escalations
        .resolve(proto::ResolveRequest {
            escalation_id: first.escalation_id.clone(),
            resolution: proto::Resolution::Deny.into(),
            resolved_by: "oncall@example.com".to_owned(),
            reason: "amount too high".to_owned(),
        })
        .await
        .expect("resolve succeeds");

    let retried = guardrails
        .check_action(wire_transfer("conv-deny", arguments))
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(retried.decision(), proto::ActionDecision::Deny);
    assert_eq!(retried.escalation_id, first.escalation_id);

    let elsewhere = guardrails
        .check_action(wire_transfer("conv-other", arguments))
        .await
        .expect("check succeeds")
        .into_inner();
    assert_eq!(
        elsewhere.decision(),
        proto::ActionDecision::Escalate,
        "a decision applies to one conversation"
    );
}

#[tokio::test]
async fn events_report_blocks_and_summaries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let channel = sidecar.ready_channel().await;
    let mut events = EventsClient::new(channel.clone())
        .watch(proto::WatchRequest {
            types: vec![
                proto::EventType::RuleBlocked.into(),
                proto::EventType::SummarizationStarted.into(),
                proto::EventType::SummarizationFinished.into(),
            ],
            conversation_id: String::new(),
        })
        .await
        .expect("watch starts")
        .into_inner();

    GuardrailsClient::new(channel.clone())
        .check_input(proto::CheckInputRequest {
            conversation_id: "conv-events".to_owned(),
            text: "What dosage should I take?".to_owned(),
            messages: vec![],
        })
        .await
        .expect("check succeeds");
    let blocked = next_event(&mut events).await;
    assert_eq!(blocked.r#type(), proto::EventType::RuleBlocked);
    assert_eq!(blocked.conversation_id, "conv-events");
    let Some(proto::event::Payload::RuleBlocked(rule)) = &blocked.payload else {
        panic!("expected a rule block, got {blocked:?}");
    };
    assert_eq!(rule.rule_id, "no-medical-advice");
    assert_eq!(rule.source, "grpc");

    let mut conversations = proto::conversations_client::ConversationsClient::new(channel.clone());
    let long = "travel plans ".repeat(200);
    for turn in 0..6 {
        conversations
            .append(proto::AppendRequest {
                conversation_id: "conv-events".to_owned(),
                messages: vec![message(proto::Role::User, &format!("{turn}: {long}"))],
                model: "gpt-4o-mini".to_owned(),
                expected_version: None,
                request_id: String::new(),
            })
            .await
            .expect("append succeeds");
    }
    conversations
        .summarize(proto::SummarizeRequest {
            conversation_id: "conv-events".to_owned(),
            model: String::new(),
        })
        .await
        .expect("summarize succeeds");
    let started = next_event(&mut events).await;
    assert_eq!(started.r#type(), proto::EventType::SummarizationStarted);
    // Nothing listens on the upstream port, so the summarization fails after its retries.
    let finished = tokio::time::timeout(Duration::from_secs(30), events.message())
        .await
        .expect("summarization finishes within 30 seconds")
        .expect("no stream error")
        .expect("stream open");
    assert_eq!(finished.r#type(), proto::EventType::SummarizationFinished);
    let Some(proto::event::Payload::SummarizationFinished(outcome)) = &finished.payload else {
        panic!("expected a summarization outcome, got {finished:?}");
    };
    assert!(!outcome.stored);
    assert!(!outcome.error.is_empty());
}

#[tokio::test]
async fn escalations_and_events_reject_malformed_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let channel = sidecar.ready_channel().await;
    let mut escalations = EscalationsClient::new(channel.clone());

    let empty = escalations
        .resolve(proto::ResolveRequest::default())
        .await
        .expect_err("an empty resolution is invalid");
    let fields: Vec<String> = field_violations(&empty).into_iter().map(|v| v.0).collect();
    assert_eq!(fields, ["escalation_id", "resolution", "resolved_by"]);

    let unknown = escalations
        .resolve(proto::ResolveRequest {
            escalation_id: "esc_unknown".to_owned(),
            resolution: proto::Resolution::Approve.into(),
            resolved_by: "oncall".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("an unknown escalation is not found");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let bad_page = escalations
        .list(proto::ListRequest {
            page_size: 5_000,
            page_token: "next".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("an oversized page and a foreign token are invalid");
    let fields: Vec<String> = field_violations(&bad_page)
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(fields, ["page_size", "page_token"]);

    let bad_watch = EventsClient::new(channel)
        .watch(proto::WatchRequest {
            types: vec![99],
            conversation_id: String::new(),
        })
        .await
        .expect_err("an unknown event type is invalid");
    let fields: Vec<String> = field_violations(&bad_watch)
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(fields, ["types[0]"]);
}

/// A chat completion whose assistant message calls `wire_transfer`.
const TOOL_CALL_COMPLETION: &str = r#"{"id":"chatcmpl-esc","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"wire_transfer","arguments":"{\"amount\":5000}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tool_calls":0,"prompt_tokens":20,"completion_tokens":5,"total_tokens":25}}"#;

/// Starts a stub OpenAI upstream on loopback that replies to every chat completion with
/// `body` as `content_type`.
async fn stub_upstream(content_type: &'static str, body: &'static str) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || async move { ([("content-type", content_type)], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stub upstream");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}/v1")
}

/// Starts a stub OpenAI upstream on loopback that always returns the tool call.
async fn tool_call_upstream() -> String {
    stub_upstream("application/json", TOOL_CALL_COMPLETION).await
}

/// The same call as [`TOOL_CALL_COMPLETION`], streamed with its arguments in two deltas.
const TOOL_CALL_STREAM: &str = concat!(
    r#"data: {"id":"chatcmpl-esc","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"wire_transfer","arguments":""}}]},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-esc","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"amount\":"}}]},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-esc","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"5000}"}}]},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-esc","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
    "\n\ndata: [DONE]\n\n",
);

/// Starts a stub OpenAI upstream on loopback that always streams the tool call.
async fn streamed_tool_call_upstream() -> String {
    stub_upstream("text/event-stream", TOOL_CALL_STREAM).await
}

/// Sends the chat request that makes the stub call `wire_transfer`, streamed or not.
async fn send_chat(sidecar: &Sidecar, conversation: &str, stream: bool) -> reqwest::Response {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "user", "content": "Send the transfer"}],
    });
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", sidecar.proxy))
        .header("x-agent-conversation-id", conversation)
        .header("authorization", "Bearer test")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("proxy answers")
}

/// Sends a streamed chat request and returns the event stream's body.
async fn chat_stream(sidecar: &Sidecar, conversation: &str) -> String {
    let response = send_chat(sidecar, conversation, true).await;
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.expect("event stream body")
}

#[tokio::test]
async fn streamed_call_is_escalated_then_released_after_approval() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = streamed_tool_call_upstream().await;
    let sidecar = Sidecar::start(
        &write_policy(dir.path()),
        None,
        &["--openai-upstream", &upstream],
    );
    let mut escalations = EscalationsClient::new(sidecar.ready_channel().await);

    let held = chat_stream(&sidecar, "conv-stream").await;
    assert!(held.contains("approval_required"), "{held}");
    assert!(
        !held.contains("wire_transfer"),
        "the held call reached the client: {held}"
    );
    let listed = escalations
        .list(proto::ListRequest {
            conversation_id: "conv-stream".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list succeeds")
        .into_inner();
    assert_eq!(listed.escalations.len(), 1);
    let escalation = &listed.escalations[0];
    assert_eq!(escalation.tool_name, "wire_transfer");
    assert!(
        held.contains(&escalation.escalation_id),
        "the error event names {}: {held}",
        escalation.escalation_id
    );

    escalations
        .resolve(proto::ResolveRequest {
            escalation_id: escalation.escalation_id.clone(),
            resolution: proto::Resolution::Approve.into(),
            resolved_by: "oncall@example.com".to_owned(),
            reason: String::new(),
        })
        .await
        .expect("resolve succeeds");
    let released = chat_stream(&sidecar, "conv-stream").await;
    assert!(released.contains("wire_transfer"), "{released}");
    assert!(!released.contains("approval_required"), "{released}");
    assert!(released.trim_end().ends_with("data: [DONE]"), "{released}");
}

/// Sends a chat request read whole and returns its status and JSON body.
async fn chat(sidecar: &Sidecar, conversation: &str) -> (u16, serde_json::Value) {
    let response = send_chat(sidecar, conversation, false).await;
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

#[tokio::test]
async fn proxy_names_pending_escalation_then_follows_resolution() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = tool_call_upstream().await;
    let sidecar = Sidecar::start(
        &write_policy(dir.path()),
        None,
        &["--openai-upstream", &upstream],
    );
    let mut escalations = EscalationsClient::new(sidecar.ready_channel().await);

    let (status, body) = chat(&sidecar, "conv-proxy-approve").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "approval_required");
    let message = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(message.contains("approval pending"), "{message}");
    let listed = escalations
        .list(proto::ListRequest {
            conversation_id: "conv-proxy-approve".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list succeeds")
        .into_inner();
    assert_eq!(listed.escalations.len(), 1);
    let id = listed.escalations[0].escalation_id.clone();
    assert!(message.contains(&id), "{message} names {id}");

    let (status, body) = chat(&sidecar, "conv-proxy-approve").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&id)),
        "the retried call is held by the same escalation: {body}"
    );

    escalations
        .resolve(proto::ResolveRequest {
            escalation_id: id.clone(),
            resolution: proto::Resolution::Approve.into(),
            resolved_by: "oncall@example.com".to_owned(),
            reason: String::new(),
        })
        .await
        .expect("resolve succeeds");
    let (status, body) = chat(&sidecar, "conv-proxy-approve").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "wire_transfer"
    );

    let (status, _) = chat(&sidecar, "conv-proxy-deny").await;
    assert_eq!(status, 403);
    let pending = escalations
        .list(proto::ListRequest {
            conversation_id: "conv-proxy-deny".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list succeeds")
        .into_inner();
    escalations
        .resolve(proto::ResolveRequest {
            escalation_id: pending.escalations[0].escalation_id.clone(),
            resolution: proto::Resolution::Deny.into(),
            resolved_by: "oncall@example.com".to_owned(),
            reason: "not today".to_owned(),
        })
        .await
        .expect("resolve succeeds");
    let (status, body) = chat(&sidecar, "conv-proxy-deny").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "blocked_by_policy");
}
