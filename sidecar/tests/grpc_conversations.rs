//! The `Conversations` gRPC service of `agent-sidecar serve`, with the in-memory store and
//! with a `redis-server` started on loopback.

mod grpc_support;
mod support;

use grpc_support::{Sidecar, field_violations, message, proto, write_policy};
use proto::conversations_client::ConversationsClient;
use tonic::transport::Channel;

fn append_request(conversation: &str, messages: Vec<proto::Message>) -> proto::AppendRequest {
    proto::AppendRequest {
        conversation_id: conversation.to_owned(),
        messages,
        model: "gpt-4o-mini".to_owned(),
        expected_version: None,
        request_id: String::new(),
    }
}

fn text_of(message: &proto::Message) -> String {
    message
        .parts
        .iter()
        .filter_map(|part| match &part.content {
            Some(proto::part::Content::Text(text)) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

async fn client(sidecar: &Sidecar) -> ConversationsClient<Channel> {
    ConversationsClient::new(sidecar.ready_channel().await)
}

/// Appends, reads back and deletes one conversation, whatever the store behind it.
async fn round_trip(client: &mut ConversationsClient<Channel>, conversation: &str) {
    let first = client
        .append(append_request(
            conversation,
            vec![
                message(proto::Role::System, "You are a travel agent."),
                message(proto::Role::User, "Book Oslo, mail jane.doe@example.com"),
            ],
        ))
        .await
        .expect("first append succeeds")
        .into_inner();
    assert_eq!(first.version, 1);
    assert!(first.tokens > 0, "tokens counted");
    assert_eq!(first.verdict(), proto::Verdict::Transform);
    assert_eq!(first.findings[0].message_index, Some(1));

    let mut second = append_request(
        conversation,
        vec![message(proto::Role::Assistant, "Booked.")],
    );
    second.expected_version = Some(1);
    second.request_id = "turn-2".to_owned();
    let appended = client
        .append(second.clone())
        .await
        .expect("append at the expected version succeeds")
        .into_inner();
    assert_eq!(appended.version, 2);

    let replayed = client
        .append(second.clone())
        .await
        .expect("a replayed request id is accepted")
        .into_inner();
    assert!(replayed.duplicate, "replay reported as duplicate");
    assert_eq!(replayed.version, 2);

    second.request_id = "turn-3".to_owned();
    let stale = client
        .append(second)
        .await
        .expect_err("an append at a stale version conflicts");
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");

    let stored = client
        .get(proto::GetRequest {
            conversation_id: conversation.to_owned(),
        })
        .await
        .expect("get succeeds")
        .into_inner();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.messages.len(), 3);
    assert_eq!(text_of(&stored.messages[1]), "Book Oslo, mail [EMAIL]");
    assert_eq!(stored.model, "gpt-4o-mini");
    assert!(stored.create_time.is_some());

    let context = client
        .get_context(proto::GetContextRequest {
            conversation_id: conversation.to_owned(),
            model: "gpt-4o-mini".to_owned(),
            max_output_tokens: 0,
        })
        .await
        .expect("get_context succeeds")
        .into_inner();
    assert_eq!(context.messages.len(), 3);
    assert_eq!(context.dropped_messages, 0);
    assert_eq!(context.budget_tokens, 2000);
    assert!(context.tokens > 0, "{context:?}");
    assert!(context.tokens <= context.budget_tokens, "{context:?}");
    assert_eq!(context.version, 2);

    client
        .delete(proto::DeleteRequest {
            conversation_id: conversation.to_owned(),
        })
        .await
        .expect("delete succeeds");
    let deleted = client
        .get(proto::GetRequest {
            conversation_id: conversation.to_owned(),
        })
        .await
        .expect_err("a deleted conversation is not found");
    assert_eq!(deleted.code(), tonic::Code::NotFound);
    client
        .delete(proto::DeleteRequest {
            conversation_id: conversation.to_owned(),
        })
        .await
        .expect("deleting a missing conversation succeeds");
}

#[tokio::test]
async fn conversation_round_trip_in_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    round_trip(&mut client(&sidecar).await, "conv-memory").await;
}

#[tokio::test]
async fn conversation_round_trip_in_redis() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).expect("redis dir");
    let redis = support::RedisServer::start(&redis_dir, &[]);
    let sidecar = Sidecar::start(
        &write_policy(dir.path()),
        None,
        &["--redis-url", &redis.url()],
    );
    round_trip(&mut client(&sidecar).await, "conv-redis").await;
}

#[tokio::test]
async fn append_rejects_blocked_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = client(&sidecar).await;
    let status = client
        .append(append_request(
            "conv-blocked",
            vec![message(proto::Role::User, "Which dosage should I take?")],
        ))
        .await
        .expect_err("a blocked message is not stored");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("no-medical-advice"), "{status:?}");
    let missing = client
        .get(proto::GetRequest {
            conversation_id: "conv-blocked".to_owned(),
        })
        .await
        .expect_err("nothing was stored");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn get_context_drops_oldest_over_budget() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = client(&sidecar).await;
    // Each turn has 400 words, so six turns exceed the 2,000-token budget.
    let long = "travel plans ".repeat(200);
    for turn in 0..6 {
        client
            .append(append_request(
                "conv-long",
                vec![message(proto::Role::User, &format!("{turn}: {long}"))],
            ))
            .await
            .expect("append succeeds");
    }
    let context = client
        .get_context(proto::GetContextRequest {
            conversation_id: "conv-long".to_owned(),
            model: "gpt-4o-mini".to_owned(),
            max_output_tokens: 0,
        })
        .await
        .expect("get_context succeeds")
        .into_inner();
    assert!(context.dropped_messages > 0, "{context:?}");
    assert!(context.tokens <= context.budget_tokens, "{context:?}");
    let newest = context.messages.last().expect("the newest message is kept");
    assert!(text_of(newest).starts_with("5: "));
}

#[tokio::test]
async fn summarize_starts_and_reports_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = client(&sidecar).await;
    let long = "travel plans ".repeat(200);
    for turn in 0..6 {
        client
            .append(append_request(
                "conv-summary",
                vec![message(proto::Role::User, &format!("{turn}: {long}"))],
            ))
            .await
            .expect("append succeeds");
    }
    let started = client
        .summarize(proto::SummarizeRequest {
            conversation_id: "conv-summary".to_owned(),
            model: String::new(),
        })
        .await
        .expect("summarize succeeds")
        .into_inner();
    assert_eq!(started.state(), proto::SummarizeState::Started);

    let missing = client
        .summarize(proto::SummarizeRequest {
            conversation_id: "conv-never-written".to_owned(),
            model: String::new(),
        })
        .await
        .expect_err("an unknown conversation is not found");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn conversations_reject_malformed_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = Sidecar::start(&write_policy(dir.path()), None, &[]);
    let mut client = client(&sidecar).await;
    let empty = client
        .append(proto::AppendRequest::default())
        .await
        .expect_err("an empty append is invalid");
    let fields: Vec<String> = field_violations(&empty).into_iter().map(|v| v.0).collect();
    assert_eq!(fields, ["conversation_id", "model", "messages"]);

    let no_model = client
        .get_context(proto::GetContextRequest {
            conversation_id: "x".repeat(300),
            model: String::new(),
            max_output_tokens: 0,
        })
        .await
        .expect_err("an overlong id and a missing model are invalid");
    let fields: Vec<String> = field_violations(&no_model)
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(fields, ["conversation_id", "model"]);
}
