//! The `Escalations` service: listing escalated tool calls and resolving them.

use tonic::{Request, Response, Status};

use super::convert::timestamp_from_ms;
use super::invalid::Violations;
use super::{GrpcState, proto};
use crate::state::escalation::{Escalation, EscalationState, Resolution, ResolveError};
use crate::state::now_ms;

/// Page size when the request sets none.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest accepted page size.
const MAX_PAGE_SIZE: usize = 1_000;
/// Longest accepted `resolved_by`, in bytes.
const MAX_RESOLVED_BY_LEN: usize = 256;
/// Longest accepted `reason`, in bytes.
const MAX_REASON_LEN: usize = 4_096;

/// Serves `agent_sidecar.v1.Escalations`.
#[derive(Debug, Clone)]
pub struct EscalationsService {
    state: GrpcState,
}

impl EscalationsService {
    pub fn new(state: GrpcState) -> EscalationsService {
        EscalationsService { state }
    }
}

/// Returns the state shown to clients: a pending or resolved escalation past its expiry
/// is expired.
fn visible_state(escalation: &Escalation, now: u64) -> proto::EscalationState {
    if escalation.is_expired(now) {
        return proto::EscalationState::Expired;
    }
    match escalation.state {
        EscalationState::Pending => proto::EscalationState::Pending,
        EscalationState::Approved => proto::EscalationState::Approved,
        EscalationState::Denied => proto::EscalationState::Denied,
    }
}

pub fn escalation_to_proto(escalation: &Escalation) -> proto::Escalation {
    proto::Escalation {
        escalation_id: escalation.id.clone(),
        conversation_id: escalation.conversation_id.clone(),
        tool_name: escalation.tool.clone(),
        arguments_json: escalation.arguments.clone(),
        rule_id: escalation.rule.clone(),
        state: visible_state(escalation, now_ms()).into(),
        create_time: Some(timestamp_from_ms(escalation.created_at_ms)),
        expire_time: Some(timestamp_from_ms(escalation.expires_at_ms)),
        resolve_time: escalation.resolved_at_ms.map(timestamp_from_ms),
        resolved_by: escalation.resolved_by.clone().unwrap_or_default(),
        reason: escalation.reason.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl proto::escalations_server::Escalations for EscalationsService {
    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.optional_conversation_id("conversation_id", &request.conversation_id);
        let state_filter = match proto::EscalationState::try_from(request.state) {
            Ok(proto::EscalationState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => {
                violations.add("state", format!("unknown state {}", request.state));
                None
            }
        };
        let page_size = match usize::try_from(request.page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) if size <= MAX_PAGE_SIZE => size,
            _ => {
                violations.add(
                    "page_size",
                    format!("must be 0 to {MAX_PAGE_SIZE}, not {}", request.page_size),
                );
                DEFAULT_PAGE_SIZE
            }
        };
        // The page token is the offset of the next escalation, as decimal text.
        let offset = if request.page_token.is_empty() {
            0
        } else {
            request.page_token.parse::<usize>().unwrap_or_else(|_| {
                violations.add(
                    "page_token",
                    "invalid; pass next_page_token from the previous response unchanged",
                );
                0
            })
        };
        violations.into_result()?;

        let conversation =
            (!request.conversation_id.is_empty()).then_some(request.conversation_id.as_str());
        let listed = self
            .state
            .escalations
            .store
            .list(conversation)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let now = now_ms();
        let matching: Vec<&Escalation> = listed
            .iter()
            .filter(|e| state_filter.is_none_or(|state| visible_state(e, now) == state))
            .collect();
        let page: Vec<proto::Escalation> = matching
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|e| escalation_to_proto(e))
            .collect();
        let next = offset + page.len();
        Ok(Response::new(proto::ListResponse {
            escalations: page,
            next_page_token: if next < matching.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn resolve(
        &self,
        request: Request<proto::ResolveRequest>,
    ) -> Result<Response<proto::Escalation>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.escalation_id.trim().is_empty() {
            violations.add(
                "escalation_id",
                "missing; set the id from CheckAction or List",
            );
        }
        let approve = match proto::Resolution::try_from(request.resolution) {
            Ok(proto::Resolution::Approve) => true,
            Ok(proto::Resolution::Deny) => false,
            Ok(proto::Resolution::Unspecified) | Err(_) => {
                violations.add(
                    "resolution",
                    "missing or unknown; use RESOLUTION_APPROVE or RESOLUTION_DENY",
                );
                false
            }
        };
        if request.resolved_by.trim().is_empty() {
            violations.add("resolved_by", "missing; name who decided");
        } else if request.resolved_by.len() > MAX_RESOLVED_BY_LEN {
            violations.add(
                "resolved_by",
                format!("longer than {MAX_RESOLVED_BY_LEN} bytes"),
            );
        }
        if request.reason.len() > MAX_REASON_LEN {
            violations.add("reason", format!("longer than {MAX_REASON_LEN} bytes"));
        }
        violations.into_result()?;

        let resolution = Resolution {
            approve,
            resolved_by: request.resolved_by,
            reason: (!request.reason.is_empty()).then_some(request.reason),
        };
        match self
            .state
            .escalations
            .resolve(&request.escalation_id, resolution)
            .await
        {
            Ok(resolved) => Ok(Response::new(escalation_to_proto(&resolved))),
            Err(error @ ResolveError::NotFound(_)) => Err(Status::not_found(error.to_string())),
            Err(error @ (ResolveError::AlreadyResolved { .. } | ResolveError::Expired(_))) => {
                Err(Status::failed_precondition(error.to_string()))
            }
            Err(ResolveError::Store(error)) => Err(Status::unavailable(error.to_string())),
        }
    }
}
