//! The `Conversations` service: the conversation store, context budgets and summaries
//! that the model proxy uses, for agents that manage their own model calls.

use tonic::{Code, Request, Response, Status};

use super::convert::{
    finding_to_proto, message_to_proto, messages_from_proto, timestamp_from_ms, verdict_to_proto,
};
use super::guardrails::check_message;
use super::invalid::Violations;
use super::{GrpcState, proto};
use crate::context::window::summary_message;
use crate::context::{Scheduled, TokenCounter, fit};
use crate::dialect::{Message, Role};
use crate::guard::{Finding, Guard, Verdict};
use crate::policy::spec::Direction;
use crate::state::{Append, Appended, Conversation, StoreError, Turn};

/// Longest accepted `request_id`, in bytes.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest accepted model name, in bytes.
const MAX_MODEL_LEN: usize = 256;

/// Serves `agent_sidecar.v1.Conversations`.
#[derive(Debug, Clone)]
pub struct ConversationsService {
    state: GrpcState,
}

impl ConversationsService {
    pub fn new(state: GrpcState) -> ConversationsService {
        ConversationsService { state }
    }

    async fn load(&self, conversation_id: &str) -> Result<Conversation, Status> {
        match self.state.store.load(conversation_id).await {
            Ok(Some(conversation)) => Ok(conversation),
            Ok(None) => Err(Status::not_found(format!(
                "conversation {conversation_id:?} not found; it was never appended to, or it expired or was deleted"
            ))),
            Err(error) => Err(store_status(conversation_id, error)),
        }
    }
}

/// Maps a store failure to a gRPC status.
fn store_status(conversation_id: &str, error: StoreError) -> Status {
    let code = match &error {
        StoreError::Conflict { .. } => Code::Aborted,
        StoreError::Unavailable(_) | StoreError::BufferFull { .. } => Code::Unavailable,
        StoreError::Corrupt(_) => Code::DataLoss,
    };
    tracing::debug!(conversation.id = %conversation_id, error = %error, "conversation store call failed");
    Status::new(code, error.to_string())
}

fn model_violation(violations: &mut Violations, model: &str) {
    if model.trim().is_empty() {
        violations.add("model", "missing; set the model name, such as gpt-4o-mini");
    } else if model.len() > MAX_MODEL_LEN {
        violations.add("model", format!("longer than {MAX_MODEL_LEN} bytes"));
    }
}

#[tonic::async_trait]
impl proto::conversations_server::Conversations for ConversationsService {
    async fn append(
        &self,
        request: Request<proto::AppendRequest>,
    ) -> Result<Response<proto::AppendResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.conversation_id("conversation_id", &request.conversation_id);
        model_violation(&mut violations, &request.model);
        if request.messages.is_empty() {
            violations.add("messages", "missing; append at least one message");
        }
        if request.request_id.len() > MAX_REQUEST_ID_LEN {
            violations.add(
                "request_id",
                format!("longer than {MAX_REQUEST_ID_LEN} bytes"),
            );
        }
        let mut messages = messages_from_proto("messages", &request.messages, &mut violations);
        violations.into_result()?;

        let guard = self.state.guard();
        let (verdict, findings) = guard_messages(&guard, &mut messages);
        let plain: Vec<Finding> = findings.iter().map(|(f, _)| f.clone()).collect();
        self.state.record_findings(&guard, &plain);
        if let Verdict::Block { rule, kind } | Verdict::Escalate { rule, kind } = &verdict {
            return Err(Status::permission_denied(format!(
                "messages blocked by guardrail rule {rule:?} ({}); nothing was stored",
                kind.as_str()
            )));
        }

        let policy = guard.policy();
        let tokens = TokenCounter::for_model(&request.model).messages(&messages);
        let mut turn = Turn::new(
            request.model.clone(),
            format!("{}@{}", policy.identity.name, policy.identity.hash),
            messages,
        )
        .with_tokens(tokens);
        if !request.request_id.is_empty() {
            turn.id = request.request_id.clone();
        }
        let append = Append {
            turn,
            vault: Vec::new(),
            expected_version: request.expected_version,
            ttl: policy.conversation.ttl,
        };
        let appended = self
            .state
            .store
            .append(&request.conversation_id, append)
            .await
            .map_err(|e| store_status(&request.conversation_id, e))?;
        let (version, duplicate, buffered) = match appended {
            Appended::Stored { version } => (version, false, false),
            Appended::Duplicate { version } => (version, true, false),
            Appended::Buffered { .. } => (0, false, true),
        };
        Ok(Response::new(proto::AppendResponse {
            version,
            duplicate,
            buffered,
            tokens,
            verdict: verdict_to_proto(&verdict).into(),
            findings: findings
                .iter()
                .map(|(f, index)| finding_to_proto(f, Some(*index)))
                .collect(),
        }))
    }

    async fn get_context(
        &self,
        request: Request<proto::GetContextRequest>,
    ) -> Result<Response<proto::GetContextResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.conversation_id("conversation_id", &request.conversation_id);
        model_violation(&mut violations, &request.model);
        violations.into_result()?;

        let conversation = self.load(&request.conversation_id).await?;
        let guard = self.state.guard();
        let policy = guard.policy();
        let messages = conversation.messages();
        let counter = TokenCounter::for_model(&request.model);
        let Some(context) = &policy.context else {
            return Ok(Response::new(proto::GetContextResponse {
                tokens: counter.messages(&messages),
                messages: messages.iter().map(message_to_proto).collect(),
                budget_tokens: 0,
                summary_applied: false,
                dropped_messages: 0,
                version: conversation.version,
            }));
        };
        let requested_output = (request.max_output_tokens > 0).then_some(request.max_output_tokens);
        let budget = context.budget_for(&self.state.models, &request.model, requested_output);
        let summary = conversation.summary.as_ref();
        let plan = fit(&messages, &counter, budget, 0, context.strategy, summary).map_err(|over| {
            Status::failed_precondition(format!(
                "conversation needs about {} tokens, {} over the policy's budget of {} tokens for {}; summarize or delete it",
                over.tokens, over.over, over.budget, request.model
            ))
        })?;
        // `fit` places a summary only when it was given one, so the empty fallback
        // message is never inserted.
        let summary_text = summary.map(summary_message);
        let fitted = plan.apply(&messages, || {
            summary_text.clone().unwrap_or(Message {
                role: Role::System,
                parts: Vec::new(),
            })
        });
        Ok(Response::new(proto::GetContextResponse {
            messages: fitted.iter().map(message_to_proto).collect(),
            tokens: plan.tokens,
            budget_tokens: budget,
            summary_applied: plan.summary_at.is_some(),
            dropped_messages: super::convert::saturating_u32(plan.dropped),
            version: conversation.version,
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::Conversation>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.conversation_id("conversation_id", &request.conversation_id);
        violations.into_result()?;

        let conversation = self.load(&request.conversation_id).await?;
        Ok(Response::new(conversation_to_proto(&conversation)))
    }

    async fn delete(&self, request: Request<proto::DeleteRequest>) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.conversation_id("conversation_id", &request.conversation_id);
        violations.into_result()?;

        let existed = self
            .state
            .store
            .delete(&request.conversation_id)
            .await
            .map_err(|e| store_status(&request.conversation_id, e))?;
        tracing::info!(conversation.id = %request.conversation_id, existed, "conversation deleted");
        Ok(Response::new(()))
    }

    async fn summarize(
        &self,
        request: Request<proto::SummarizeRequest>,
    ) -> Result<Response<proto::SummarizeResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.conversation_id("conversation_id", &request.conversation_id);
        if !request.model.is_empty() {
            model_violation(&mut violations, &request.model);
        }
        violations.into_result()?;

        let guard = self.state.guard();
        let policy = guard.policy();
        let Some(context) = &policy.context else {
            return Err(Status::failed_precondition(
                "the policy has no context section, so it sets no summarizer; add spec.context to the policy",
            ));
        };
        let conversation = self.load(&request.conversation_id).await?;
        let model = if request.model.is_empty() {
            conversation.metadata.model.clone()
        } else {
            request.model.clone()
        };
        let budget = context.budget_for(&self.state.models, &model, None);
        let settings = context.summary_settings(&model, budget, policy.conversation.ttl);
        let state = match self.state.summaries.schedule(&conversation, settings) {
            Scheduled::Started => proto::SummarizeState::Started,
            Scheduled::AlreadyRunning => proto::SummarizeState::AlreadyRunning,
            Scheduled::NothingToSummarize => proto::SummarizeState::NothingToSummarize,
        };
        Ok(Response::new(proto::SummarizeResponse {
            state: state.into(),
        }))
    }
}

/// Runs the guardrails over messages to be stored, in place: assistant messages in the
/// output direction, every other role in the input direction. Returns each finding with
/// the index of its message.
fn guard_messages(guard: &Guard, messages: &mut [Message]) -> (Verdict, Vec<(Finding, usize)>) {
    let mut verdict = Verdict::Allow;
    let mut findings = Vec::new();
    for (index, message) in messages.iter_mut().enumerate() {
        let direction = match message.role {
            Role::Assistant => Direction::Output,
            Role::System | Role::User | Role::Tool => Direction::Input,
        };
        for finding in check_message(guard, direction, message, &mut verdict) {
            findings.push((finding, index));
        }
    }
    (verdict, findings)
}

fn conversation_to_proto(conversation: &Conversation) -> proto::Conversation {
    proto::Conversation {
        conversation_id: conversation.id.clone(),
        version: conversation.version,
        messages: conversation
            .messages()
            .iter()
            .map(message_to_proto)
            .collect(),
        tokens: conversation.tokens(),
        summary: conversation.summary.as_ref().map(|summary| proto::Summary {
            text: summary.text.clone(),
            covered_messages: summary.covered_messages,
            tokens: summary.tokens,
            model: summary.model.clone(),
            create_time: Some(timestamp_from_ms(summary.created_at_ms)),
        }),
        model: conversation.metadata.model.clone(),
        create_time: Some(timestamp_from_ms(conversation.metadata.created_at_ms)),
        update_time: Some(timestamp_from_ms(conversation.metadata.updated_at_ms)),
    }
}
