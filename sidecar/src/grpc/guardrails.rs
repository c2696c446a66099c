//! The `Guardrails` service: input, output and action checks with the loaded policy.

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::convert::{
    finding_to_proto, message_to_proto, messages_from_proto, timestamp_from_ms, verdict_rule,
    verdict_to_proto,
};
use super::invalid::{MAX_TOOL_NAME_LEN, Violations};
use super::{GrpcState, proto};
use crate::dialect::openai::guard_arguments;
use crate::dialect::{Message, Part, Role};
use crate::guard::{Finding, FindingKind, Guard, Verdict};
use crate::policy::spec::Direction;
use crate::state::escalation::EscalationOutcome;

/// Serves `agent_sidecar.v1.Guardrails`.
#[derive(Debug, Clone)]
pub struct GuardrailsService {
    state: GrpcState,
}

impl GuardrailsService {
    pub fn new(state: GrpcState) -> GuardrailsService {
        GuardrailsService { state }
    }
}

/// The result of checking a request's text or messages.
struct ContentResult {
    verdict: Verdict,
    text: String,
    messages: Vec<proto::Message>,
    findings: Vec<proto::Finding>,
}

#[tonic::async_trait]
impl proto::guardrails_server::Guardrails for GuardrailsService {
    async fn check_input(
        &self,
        request: Request<proto::CheckInputRequest>,
    ) -> Result<Response<proto::CheckInputResponse>, Status> {
        let request = request.into_inner();
        let result = check_content(
            &self.state,
            Direction::Input,
            &request.conversation_id,
            request.text,
            &request.messages,
        )?;
        Ok(Response::new(proto::CheckInputResponse {
            verdict: verdict_to_proto(&result.verdict).into(),
            rule_id: verdict_rule(&result.verdict),
            text: result.text,
            messages: result.messages,
            findings: result.findings,
        }))
    }

    async fn check_output(
        &self,
        request: Request<proto::CheckOutputRequest>,
    ) -> Result<Response<proto::CheckOutputResponse>, Status> {
        let request = request.into_inner();
        let result = check_content(
            &self.state,
            Direction::Output,
            &request.conversation_id,
            request.text,
            &request.messages,
        )?;
        Ok(Response::new(proto::CheckOutputResponse {
            verdict: verdict_to_proto(&result.verdict).into(),
            rule_id: verdict_rule(&result.verdict),
            text: result.text,
            messages: result.messages,
            findings: result.findings,
        }))
    }

    async fn check_action(
        &self,
        request: Request<proto::CheckActionRequest>,
    ) -> Result<Response<proto::CheckActionResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        violations.conversation_id("conversation_id", &request.conversation_id);
        if request.tool_name.trim().is_empty() {
            violations.add("tool_name", "missing; set the name of the tool to run");
        } else if request.tool_name.len() > MAX_TOOL_NAME_LEN {
            violations.add(
                "tool_name",
                format!("longer than {MAX_TOOL_NAME_LEN} bytes"),
            );
        }
        let arguments = if request.arguments_json.trim().is_empty() {
            Some(Value::Object(Map::new()))
        } else {
            match serde_json::from_str::<Value>(&request.arguments_json) {
                Ok(value) => Some(value),
                Err(e) => {
                    violations.add("arguments_json", format!("not valid JSON: {e}"));
                    None
                }
            }
        };
        violations.into_result()?;

        let guard = self.state.guard();
        let check = guard.check_action(Direction::Output, &request.tool_name, arguments.as_ref());
        self.state.record_findings(&guard, &check.findings);
        // The deciding outcome is always the last finding; monitor-mode ones precede it.
        let deciding = check.findings.last();
        let mut response = proto::CheckActionResponse {
            decision: proto::ActionDecision::Allow.into(),
            rule_id: deciding.map(|f| f.rule.to_string()).unwrap_or_default(),
            reason: deciding.and_then(|f| f.detail.clone()).unwrap_or_default(),
            escalation_id: String::new(),
            escalation_expire_time: None,
            findings: check
                .findings
                .iter()
                .map(|f| finding_to_proto(f, None))
                .collect(),
        };
        let decision = match &check.verdict {
            Verdict::Allow | Verdict::Transform => proto::ActionDecision::Allow,
            Verdict::Block { .. } => proto::ActionDecision::Deny,
            Verdict::Escalate { rule, .. } => {
                let outcome = self
                    .state
                    .escalations
                    .decide(
                        &guard,
                        &request.conversation_id,
                        &request.tool_name,
                        arguments.as_ref(),
                        rule,
                    )
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "escalation store call failed");
                        Status::unavailable(format!(
                            "the call needs approval, but the escalation store failed: {e}; retry later"
                        ))
                    })?;
                let escalation = outcome.escalation();
                response.escalation_id = escalation.id.clone();
                response.escalation_expire_time = Some(timestamp_from_ms(escalation.expires_at_ms));
                match outcome {
                    EscalationOutcome::Approved(_) => proto::ActionDecision::Allow,
                    EscalationOutcome::Denied(_) => {
                        self.state.publish_block(
                            &request.conversation_id,
                            &Verdict::Block {
                                rule: rule.clone(),
                                kind: FindingKind::Action,
                            },
                            Some(&request.tool_name),
                        );
                        proto::ActionDecision::Deny
                    }
                    EscalationOutcome::Pending { .. } => proto::ActionDecision::Escalate,
                }
            }
        };
        self.state.publish_block(
            &request.conversation_id,
            &check.verdict,
            Some(&request.tool_name),
        );
        response.decision = decision.into();
        Ok(Response::new(response))
    }
}

/// Validates and checks the `text` or `messages` of a CheckInput or CheckOutput request.
fn check_content(
    state: &GrpcState,
    direction: Direction,
    conversation_id: &str,
    text: String,
    messages: &[proto::Message],
) -> Result<ContentResult, Status> {
    let mut violations = Violations::new();
    violations.optional_conversation_id("conversation_id", conversation_id);
    match (text.is_empty(), messages.is_empty()) {
        (true, true) => violations.add("text", "missing; set text or messages"),
        (false, false) => violations.add("messages", "set either text or messages, not both"),
        _ => {}
    }
    let mut converted = messages_from_proto("messages", messages, &mut violations);
    violations.into_result()?;

    let guard = state.guard();
    let mut verdict = Verdict::Allow;
    let mut findings: Vec<(Finding, Option<usize>)> = Vec::new();
    let mut transformed_text = String::new();
    if converted.is_empty() {
        let check = guard.check_content(direction, &[text.as_str()]);
        if direction == Direction::Input
            && let Some(finding) = guard.check_on_topic(&[text.as_str()])
        {
            verdict.merge(Verdict::from_finding(&finding));
            findings.push((finding, None));
        }
        transformed_text = check.text(0, &text).to_owned();
        verdict.merge(check.verdict);
        findings.extend(check.findings.into_iter().map(|f| (f, None)));
    } else {
        let last_user = converted.iter().rposition(|m| m.role == Role::User);
        for (index, message) in converted.iter_mut().enumerate() {
            if direction == Direction::Input && Some(index) == last_user {
                let texts = text_parts(message);
                if let Some(finding) = guard.check_on_topic(&texts) {
                    verdict.merge(Verdict::from_finding(&finding));
                    findings.push((finding, Some(index)));
                }
            }
            for finding in check_message(&guard, direction, message, &mut verdict) {
                findings.push((finding, Some(index)));
            }
        }
    }

    let plain: Vec<Finding> = findings.iter().map(|(f, _)| f.clone()).collect();
    state.record_findings(&guard, &plain);
    state.publish_block(conversation_id, &verdict, None);
    Ok(ContentResult {
        verdict,
        text: transformed_text,
        messages: converted.iter().map(message_to_proto).collect(),
        findings: findings
            .iter()
            .map(|(f, index)| finding_to_proto(f, *index))
            .collect(),
    })
}

fn text_parts(message: &Message) -> Vec<&str> {
    message
        .parts
        .iter()
        .filter_map(|part| match part {
            Part::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Checks one message in place and returns its findings with `part` set to the index of
/// the part they are in. The text parts are checked together, so a denied phrase split
/// across two parts is found. Tool-call arguments and tool results are checked one by
/// one, and in the output direction tool calls also go through the action rules.
pub(super) fn check_message(
    guard: &Guard,
    direction: Direction,
    message: &mut Message,
    verdict: &mut Verdict,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let text_indexes: Vec<usize> = message
        .parts
        .iter()
        .enumerate()
        .filter(|(_, part)| matches!(part, Part::Text { .. }))
        .map(|(index, _)| index)
        .collect();
    if !text_indexes.is_empty() {
        let texts: Vec<String> = text_parts(message).into_iter().map(str::to_owned).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let check = guard.check_content(direction, &refs);
        for (text_index, &part_index) in text_indexes.iter().enumerate() {
            if let (Some(Some(new_text)), Some(Part::Text { text })) = (
                check.transformed.get(text_index),
                message.parts.get_mut(part_index),
            ) {
                *text = new_text.clone();
            }
        }
        verdict.merge(check.verdict);
        for mut finding in check.findings {
            finding.part = finding
                .part
                .and_then(|text_index| text_indexes.get(text_index).copied());
            findings.push(finding);
        }
    }

    for (part_index, part) in message.parts.iter_mut().enumerate() {
        match part {
            Part::ToolCall {
                name, arguments, ..
            } => {
                if direction == Direction::Output {
                    let parsed = if arguments.trim().is_empty() {
                        Some(Value::Object(Map::new()))
                    } else {
                        serde_json::from_str::<Value>(arguments).ok()
                    };
                    let check = guard.check_action(direction, name, parsed.as_ref());
                    verdict.merge(check.verdict);
                    findings.extend(check.findings.into_iter().map(|mut f| {
                        f.part = Some(part_index);
                        f
                    }));
                }
                let evaluation = guard_arguments(guard, direction, arguments);
                verdict.merge(evaluation.verdict);
                // Offsets of argument findings point into single JSON string values,
                // not into the arguments text, so they are left out.
                findings.extend(evaluation.findings.into_iter().map(|mut f| {
                    f.part = Some(part_index);
                    f.start = None;
                    f.end = None;
                    f
                }));
            }
            Part::ToolResult { text, .. } => {
                let check = guard.check_content(direction, &[text.as_str()]);
                if let Some(Some(new_text)) = check.transformed.first() {
                    *text = new_text.clone();
                }
                verdict.merge(check.verdict);
                findings.extend(check.findings.into_iter().map(|mut f| {
                    f.part = Some(part_index);
                    f
                }));
            }
            Part::Text { .. } | Part::Other { .. } => {}
        }
    }
    findings
}
