//! The `Events` service: a server stream of the event bus, filtered per watcher.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};

use super::convert::timestamp_from_ms;
use super::escalations::escalation_to_proto;
use super::invalid::Violations;
use super::{GrpcState, proto};
use crate::events::{Event, EventPayload};

/// Serves `agent_sidecar.v1.Events`.
#[derive(Debug, Clone)]
pub struct EventsService {
    state: GrpcState,
}

impl EventsService {
    pub fn new(state: GrpcState) -> EventsService {
        EventsService { state }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

fn event_to_proto(event: &Event) -> proto::Event {
    use proto::event::Payload;
    let (event_type, payload) = match &event.payload {
        EventPayload::SummarizationStarted { model } => (
            proto::EventType::SummarizationStarted,
            Payload::SummarizationStarted(proto::SummarizationStarted {
                model: model.clone(),
            }),
        ),
        EventPayload::SummarizationFinished { stored, error } => (
            proto::EventType::SummarizationFinished,
            Payload::SummarizationFinished(proto::SummarizationFinished {
                stored: *stored,
                error: error.clone().unwrap_or_default(),
            }),
        ),
        EventPayload::EscalationCreated(escalation) => (
            proto::EventType::EscalationCreated,
            Payload::Escalation(escalation_to_proto(escalation)),
        ),
        EventPayload::EscalationResolved(escalation) => (
            proto::EventType::EscalationResolved,
            Payload::Escalation(escalation_to_proto(escalation)),
        ),
        EventPayload::RuleBlocked {
            rule,
            kind,
            source,
            tool,
        } => (
            proto::EventType::RuleBlocked,
            Payload::RuleBlocked(proto::RuleBlocked {
                rule_id: rule.clone(),
                kind: (*kind).to_owned(),
                source: (*source).to_owned(),
                tool_name: tool.clone().unwrap_or_default(),
            }),
        ),
        EventPayload::PolicyReloaded {
            applied,
            policy_name,
            policy_hash,
            error,
        } => (
            proto::EventType::PolicyReloaded,
            Payload::PolicyReloaded(proto::PolicyReloaded {
                applied: *applied,
                policy_name: policy_name.clone(),
                policy_hash: policy_hash.clone(),
                error: error.clone().unwrap_or_default(),
            }),
        ),
    };
    proto::Event {
        r#type: event_type.into(),
        create_time: Some(timestamp_from_ms(event.created_at_ms)),
        conversation_id: event.conversation_id.clone().unwrap_or_default(),
        payload: Some(payload),
    }
}

/// A watcher's filter.
struct Filter {
    types: Vec<i32>,
    conversation_id: String,
}

impl Filter {
    fn accepts(&self, event: &proto::Event) -> bool {
        let type_matches = self.types.is_empty() || self.types.contains(&event.r#type);
        let conversation_matches =
            self.conversation_id.is_empty() || self.conversation_id == event.conversation_id;
        type_matches && conversation_matches
    }
}

#[tonic::async_trait]
impl proto::events_server::Events for EventsService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.optional_conversation_id("conversation_id", &request.conversation_id);
        for (index, value) in request.types.iter().enumerate() {
            match proto::EventType::try_from(*value) {
                Ok(proto::EventType::Unspecified) | Err(_) => violations.add(
                    format!("types[{index}]"),
                    format!("unknown event type {value}; leave types empty to watch every type"),
                ),
                Ok(_) => {}
            }
        }
        violations.into_result()?;

        let filter = Arc::new(Filter {
            types: request.types,
            conversation_id: request.conversation_id,
        });
        let stream =
            BroadcastStream::new(self.state.events.subscribe()).filter_map(move |received| {
                match received {
                    Ok(event) => {
                        let converted = event_to_proto(&event);
                        filter.accepts(&converted).then_some(Ok(converted))
                    }
                    Err(BroadcastStreamRecvError::Lagged(missed)) => {
                        tracing::info!(missed, "event watcher fell behind; events were skipped");
                        None
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
