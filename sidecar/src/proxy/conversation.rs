//! Conversation state and context windows on the request path: finding the conversation,
//! admission by the store, the pseudonym vault, fitting a request into its budget,
//! compacting after an upstream overflow, recording the turn and starting summaries.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::error::ProxyError;
use super::pipeline::ProviderDialect;
use super::routing::{Call, Opened, RouteTable};
use super::upstream::UpstreamResponse;
use super::{CONVERSATION_ID_HEADER, ProxyState};
use crate::config::routing::Dialect;
use crate::context::{
    ContextPolicy, Strategy, SummarizeError, Summarizer, SummaryRequest, TokenCounter,
    context_overflow, fit_starting_with, reached_trigger,
};
use crate::dialect::{Message, Part, Role};
use crate::guard::Guard;
use crate::policy::Policy;
use crate::policy::spec::PiiAction;
use crate::state::escalation::RequestEscalations;
use crate::state::vault::PseudonymVault;
use crate::state::{Admission, Append, Conversation, ConversationStore, StoreError, Summary, Turn};
use crate::telemetry::metrics::Metrics;

/// The conversation a request belongs to, as loaded before it is guarded.
#[derive(Debug, Default)]
pub(super) struct RequestConversation {
    pub id: Option<String>,
    /// The stored conversation; `None` when it is new, the store is unavailable, or the
    /// request has no conversation.
    pub stored: Option<Conversation>,
    /// The conversation's escalations; `None` when the request has no conversation.
    pub escalations: Option<Arc<RequestEscalations>>,
}

/// Finds the request's conversation, checks admission with the store and loads the
/// conversation. An unavailable store means no history; only a full outage buffer under
/// `onStoreFull: failClosed` rejects the request.
pub(super) async fn open(
    state: &ProxyState,
    policy: &Policy,
    headers: &HeaderMap,
    body: &Map<String, Value>,
) -> Result<RequestConversation, ProxyError> {
    if let Admission::Reject { reason } = state.store.admission(policy.conversation.on_store_full) {
        return Err(ProxyError::StoreUnavailable { reason });
    }
    let header = headers
        .get(CONVERSATION_ID_HEADER)
        .and_then(|value| value.to_str().ok());
    let id = crate::state::id::conversation_id(header, body, &policy.conversation.id_source);
    let stored = match &id {
        Some(id) => match state.store.load(id).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::debug!(conversation.id = %id, error = %error, "conversation not loaded; continuing without history");
                None
            }
        },
        None => None,
    };
    let escalations = match &id {
        Some(id) => Some(Arc::new(state.escalations.for_request(id).await)),
        None => None,
    };
    Ok(RequestConversation {
        id,
        stored,
        escalations,
    })
}

/// Returns a guard for this request: with a pseudonym vault when the policy
/// pseudonymizes, holding the conversation's stored mappings. A request without a
/// conversation gets a vault that lives only for the request.
pub(super) fn request_guard(
    state: &ProxyState,
    enforced: &Guard,
    conversation: &RequestConversation,
) -> Guard {
    let guard = vault_guard(state, enforced, conversation);
    match &conversation.escalations {
        Some(escalations) => guard.with_escalations(escalations.clone()),
        None => guard,
    }
}

fn vault_guard(state: &ProxyState, enforced: &Guard, conversation: &RequestConversation) -> Guard {
    let pseudonymizes = enforced.policy().pii.bindings.values().any(|binding| {
        binding.input == PiiAction::Pseudonymize || binding.output == PiiAction::Pseudonymize
    });
    if !pseudonymizes {
        return enforced.clone();
    }
    // NOTE: when the store could not be loaded, the vault starts empty. A new value may
    // then get a placeholder that the stored vault maps to another value, and after a
    // reload that placeholder restores to the entry stored last.
    let stored = conversation
        .stored
        .as_ref()
        .map_or(&[][..], |c| c.vault.as_slice());
    let vault = PseudonymVault::open(
        state.vault_key.clone(),
        conversation.id.as_deref().unwrap_or_default(),
        stored,
    );
    if vault.unreadable() > 0 {
        tracing::warn!(
            entries = vault.unreadable(),
            "pseudonym vault entries do not open with the configured key; their values cannot be restored"
        );
    }
    enforced.with_vault(vault)
}

/// Output tokens the request sets, from `max_completion_tokens` or `max_tokens`.
fn requested_output_tokens(body: &Map<String, Value>) -> Option<u32> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body.get(*key).and_then(Value::as_u64))
        .map(|tokens| u32::try_from(tokens).unwrap_or(u32::MAX))
}

/// Returns the input-token budget of the request under `context`.
pub(super) fn budget(
    state: &ProxyState,
    context: &ContextPolicy,
    body: &Map<String, Value>,
) -> u32 {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    context.budget_for(&state.models, model, requested_output_tokens(body))
}

/// Result of fitting a request body into its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fitted {
    /// Token count of the request as it will be sent.
    pub tokens: u32,
    /// Metric label of the change: `truncated` or `summarized`; `None` when unchanged.
    pub action: Option<&'static str>,
}

/// Fits the request's messages into `budget` with `strategy`, rewriting the body through
/// the dialect when messages are dropped or the summary is inserted.
pub(super) fn fit_body<D: ProviderDialect>(
    body: &mut Map<String, Value>,
    budget: u32,
    strategy: Strategy,
    summary: Option<&Summary>,
) -> Result<Fitted, ProxyError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let counter = TokenCounter::for_model(&model);
    let extra = D::extra_tokens(&counter, body);
    let common = D::context_messages(body);
    if common.is_empty() {
        return Ok(Fitted {
            tokens: extra,
            action: None,
        });
    }
    let plan = fit_starting_with(
        &common,
        &counter,
        budget,
        extra,
        strategy,
        summary,
        D::FIRST_KEPT_ROLE,
    )
    .map_err(|over| ProxyError::ContextOverBudget {
        tokens: over.tokens,
        budget: over.budget,
        over: over.over,
    })?;
    if plan.is_unchanged() {
        return Ok(Fitted {
            tokens: plan.tokens,
            action: None,
        });
    }
    D::apply_fit(body, &plan, summary);
    tracing::debug!(
        model = %model,
        dropped = plan.dropped,
        summary = plan.summary_at.is_some(),
        tokens = plan.tokens,
        budget,
        "request fitted into its context budget"
    );
    let action = match plan.summary_at {
        Some(_) => "summarized",
        None => "truncated",
    };
    Ok(Fitted {
        tokens: plan.tokens,
        action: Some(action),
    })
}

/// Applies the policy's `spec.context` to a guarded request body: fits it into the
/// model's budget and records the context metrics. Returns the budget, or `None` when
/// the policy has no context section.
pub(super) fn fit_request<D: ProviderDialect>(
    state: &ProxyState,
    policy: &Policy,
    body: &mut Map<String, Value>,
    summary: Option<&Summary>,
) -> Result<Option<u32>, ProxyError> {
    let Some(context) = &policy.context else {
        return Ok(None);
    };
    let budget = budget(state, context, body);
    match fit_body::<D>(body, budget, context.strategy, summary) {
        Ok(fitted) => {
            state.metrics.record_context_tokens(fitted.tokens);
            if let Some(action) = fitted.action {
                state.metrics.record_context_action(action);
            }
            Ok(Some(budget))
        }
        Err(error) => {
            state.metrics.record_context_action("rejected");
            Err(error)
        }
    }
}

/// Settings for compacting a request once after the upstream reported a context
/// overflow.
#[derive(Clone, Debug)]
pub(super) struct Compaction {
    pub strategy: Strategy,
    pub summary: Option<Summary>,
}

/// Share of the sent request's tokens that a compacted retry aims for: the upstream's
/// window is smaller than the catalog states, by an unknown amount, so the retry halves it.
const OVERFLOW_RETRY_SHARE: f64 = 0.5;

impl Compaction {
    /// Returns `policy`'s compaction, or `None` when its strategy is `reject`, which
    /// passes the upstream's error on. Without a context policy the request is truncated.
    pub fn for_policy(policy: &Policy, summary: Option<&Summary>) -> Option<Compaction> {
        let strategy = policy
            .context
            .as_ref()
            .map_or(Strategy::Truncate, |c| c.strategy);
        (strategy != Strategy::Reject).then(|| Compaction {
            strategy,
            summary: summary.cloned(),
        })
    }

    /// Returns the compacted body to retry with, or `None` when it cannot get smaller.
    pub fn compact<D: ProviderDialect>(&self, sent: &Bytes) -> Option<Bytes> {
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(sent) else {
            return None;
        };
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let counter = TokenCounter::for_model(&model);
        let tokens = D::request_tokens(&counter, &body);
        let target = (f64::from(tokens) * OVERFLOW_RETRY_SHARE) as u32;
        let before = body.get("messages").and_then(Value::as_array).map(Vec::len);
        fit_body::<D>(&mut body, target, self.strategy, self.summary.as_ref()).ok()?;
        let after = body.get("messages").and_then(Value::as_array).map(Vec::len);
        if before == after {
            return None;
        }
        serde_json::to_vec(&body).ok().map(Bytes::from)
    }
}

/// Returns the compacted body to send once more when the upstream rejected `sent` as
/// too long for the model's context window. The caller retries at most once.
pub(super) fn overflow_retry<D: ProviderDialect>(
    state: &ProxyState,
    upstream: &UpstreamResponse,
    compaction: Option<&Compaction>,
    sent: &Bytes,
) -> Option<Bytes> {
    let overflow = context_overflow(upstream.status.as_u16(), &upstream.body)?;
    let retry = compaction?.compact::<D>(sent);
    if retry.is_some() {
        state.metrics.record_context_action("overflow_retried");
    }
    tracing::info!(
        overflow = ?overflow,
        retried = retry.is_some(),
        "upstream reported a context overflow"
    );
    retry
}

/// Request state needed to record the turn once the response is complete.
#[derive(Debug, Clone)]
pub(super) struct TurnContext {
    pub id: String,
    pub stored: Option<Conversation>,
    /// The request's input budget when the policy manages context windows.
    pub budget: Option<u32>,
}

/// Appends the turn (the request messages the conversation does not contain yet and the
/// response), with the vault entries created during the request, then starts a
/// summarization when the conversation reached its trigger. A conflicting append is
/// retried once against the reloaded conversation. A store failure never fails the
/// request: the client already has its answer.
pub(super) async fn record_turn(
    state: &ProxyState,
    guard: &Guard,
    turn: &TurnContext,
    model: &str,
    request_messages: &[Message],
    response: Option<Message>,
) {
    let stored = append_turn(
        state.store.as_ref(),
        guard,
        turn,
        model,
        request_messages,
        response,
    )
    .await;
    if stored {
        schedule_summary(state, guard.policy(), turn, model).await;
    }
}

/// Appends the turn as `record_turn` describes; returns whether it was stored.
async fn append_turn(
    store: &dyn ConversationStore,
    guard: &Guard,
    turn: &TurnContext,
    model: &str,
    request_messages: &[Message],
    response: Option<Message>,
) -> bool {
    let policy = guard.policy();
    let counter = TokenCounter::for_model(model);
    let response = response.map(|message| conceal_message(guard, message));
    let vault = guard.take_new_vault_entries();
    let mut stored = turn.stored.clone();
    for attempt in 0..2 {
        let new = match &stored {
            Some(conversation) => conversation.new_messages(request_messages),
            None => request_messages,
        };
        let mut messages = new.to_vec();
        messages.extend(response.clone());
        let tokens = counter.messages(&messages);
        let append = Append {
            turn: Turn::new(
                model.to_owned(),
                format!("{}@{}", policy.identity.name, policy.identity.hash),
                messages,
            )
            .with_tokens(tokens),
            vault: vault.clone(),
            // A conversation that was not loaded (new, or the store is unreachable) is
            // appended unconditionally, so an outage buffer can replay it.
            expected_version: stored.as_ref().map(|c| c.version),
            ttl: policy.conversation.ttl,
        };
        match store.append(&turn.id, append).await {
            Ok(_) => return true,
            Err(StoreError::Conflict { .. }) if attempt == 0 => {
                tracing::debug!(conversation.id = %turn.id, "conversation changed meanwhile; reloading to append");
                match store.load(&turn.id).await {
                    Ok(reloaded) => stored = reloaded,
                    Err(error) => {
                        tracing::debug!(conversation.id = %turn.id, error = %error, "conversation turn not stored");
                        return false;
                    }
                }
            }
            Err(error) => {
                tracing::debug!(conversation.id = %turn.id, error = %error, "conversation turn not stored");
                return false;
            }
        }
    }
    false
}

/// Starts a summarization when the policy summarizes and the unsummarized part of the
/// conversation (plus its summary) reached the trigger share of the budget.
async fn schedule_summary(state: &ProxyState, policy: &Policy, turn: &TurnContext, model: &str) {
    let (Some(context), Some(budget)) = (&policy.context, turn.budget) else {
        return;
    };
    if context.strategy != Strategy::Summarize {
        return;
    }
    let Ok(Some(conversation)) = state.store.load(&turn.id).await else {
        return;
    };
    if !reached_trigger(unsummarized_tokens(&conversation), budget, context.trigger) {
        return;
    }
    let settings = context.summary_settings(model, budget, policy.conversation.ttl);
    let scheduled = state.summaries.schedule(&conversation, settings);
    tracing::debug!(conversation.id = %turn.id, outcome = ?scheduled, "summarization trigger reached");
}

/// Tokens of the turns the stored summary does not cover, plus the summary's own.
fn unsummarized_tokens(conversation: &Conversation) -> u64 {
    let summary_end = conversation.summary.as_ref().map_or(0, |s| s.end_turn);
    let turns: u64 = conversation
        .turns
        .iter()
        .enumerate()
        .filter(|(index, _)| conversation.first_seq + *index as u64 >= summary_end)
        .map(|(_, turn)| u64::from(turn.tokens))
        .sum();
    turns
        + conversation
            .summary
            .as_ref()
            .map_or(0, |s| u64::from(s.tokens))
}

/// Puts placeholders back into a response restored for the client, so stored turns
/// hold only what the model saw.
fn conceal_message(guard: &Guard, mut message: Message) -> Message {
    for part in &mut message.parts {
        match part {
            Part::Text { text } | Part::ToolResult { text, .. } => {
                *text = guard.conceal(text).into_owned();
            }
            Part::ToolCall { arguments, .. } => {
                *arguments = guard.conceal(arguments).into_owned();
            }
            Part::Other { .. } => {}
        }
    }
    message
}

/// Writes summaries through the OpenAI route of the summary model, with the sidecar's
/// own credentials, retries and fallback.
///
/// NOTE: a target without a configured credential gets no `Authorization` header from
/// the summarizer, because no client request is there to forward one from. Anthropic
/// conversations are summarized through this Chat Completions route too, so a policy for
/// them should set `summarizer.model` to a model that route serves.
#[derive(Debug)]
pub struct UpstreamSummarizer {
    pub routes: Arc<RouteTable>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl Summarizer for UpstreamSummarizer {
    async fn summarize(&self, request: SummaryRequest) -> Result<String, SummarizeError> {
        let mut transcript = String::new();
        if let Some(previous) = &request.previous_summary {
            transcript.push_str("Summary so far:\n");
            transcript.push_str(previous);
            transcript.push_str("\n\nConversation to add:\n");
        }
        for message in &request.messages {
            transcript.push_str(role_name(message.role));
            transcript.push_str(": ");
            transcript.push_str(&message_text(message));
            transcript.push('\n');
        }
        let body = json!({
            "model": request.model,
            "messages": [
                {"role": "system", "content": request.prompt},
                {"role": "user", "content": transcript},
            ],
            "max_tokens": request.max_output_tokens,
        });
        let bytes =
            Bytes::from(serde_json::to_vec(&body).map_err(|e| SummarizeError(e.to_string()))?);
        let call = Call {
            method: &Method::POST,
            path: "chat/completions",
            query: None,
            headers: &HeaderMap::new(),
            body: &bytes,
            stream: false,
        };
        let routed = self
            .routes
            .dispatch(&self.metrics, Dialect::OpenAi, &request.model, call)
            .await;
        let response = match routed {
            Ok(routed) => match routed.response {
                Opened::Whole(whole) => Ok(whole),
                Opened::Headers(response) => routed.target.upstream.read_whole(response).await,
            },
            Err(error) => Err(error),
        }
        .map_err(|e| SummarizeError(e.to_string()));
        let result = response.and_then(|response| summary_text(&response));
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics.record_summarization(outcome);
        result
    }
}

/// Returns the summary text of a Chat Completions response.
fn summary_text(response: &UpstreamResponse) -> Result<String, SummarizeError> {
    if !response.status.is_success() {
        return Err(SummarizeError(format!(
            "upstream returned status {}",
            response.status
        )));
    }
    let value: Value = serde_json::from_slice(&response.body)
        .map_err(|e| SummarizeError(format!("response is not JSON: {e}")))?;
    value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .filter(|text| !text.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| SummarizeError("response has no summary text".to_owned()))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn message_text(message: &Message) -> String {
    let mut pieces = Vec::new();
    for part in &message.parts {
        match part {
            Part::Text { text } | Part::ToolResult { text, .. } => pieces.push(text.clone()),
            Part::ToolCall {
                name, arguments, ..
            } => pieces.push(format!("[tool call {name} {arguments}]")),
            Part::Other { .. } => {}
        }
    }
    pieces.join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::openai::OpenAi;
    use super::*;
    use crate::context::window::SUMMARY_INTRO;

    fn body(turns: usize) -> Map<String, Value> {
        let mut messages = vec![json!({"role": "system", "content": "You track parcels."})];
        for n in 0..turns {
            messages.push(json!({"role": "user", "content": format!("Where is parcel {n}? ").repeat(20), "name": "kept"}));
            messages.push(json!({"role": "assistant", "content": format!("Parcel {n} left.")}));
        }
        messages.push(json!({"role": "user", "content": "And the last one?"}));
        match json!({"model": "gpt-4o-mini", "messages": messages}) {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        }
    }

    fn contents(body: &Map<String, Value>) -> Vec<String> {
        body["messages"]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn summary(covered_messages: u64) -> Summary {
        Summary {
            text: "Parcels 0 and 1 left.".to_owned(),
            first_turn: 0,
            end_turn: 1,
            covered_messages,
            tokens: 8,
            model: "gpt-4o-mini".to_owned(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn fit_body_keeps_request_within_budget() {
        let mut unchanged = body(1);
        let original = unchanged.clone();
        let fitted =
            fit_body::<OpenAi>(&mut unchanged, 10_000, Strategy::Truncate, None).expect("fits");
        assert_eq!(fitted.action, None);
        assert_eq!(unchanged, original);

        let mut truncated = body(4);
        let fitted =
            fit_body::<OpenAi>(&mut truncated, 200, Strategy::Truncate, None).expect("fits");
        assert!(fitted.tokens <= 200, "{fitted:?}");
        assert_eq!(fitted.action, Some("truncated"));
        let kept = contents(&truncated);
        assert_eq!(kept[0], "You track parcels.");
        assert_eq!(kept.last().map(String::as_str), Some("And the last one?"));
        assert!(kept.len() < 10, "{kept:?}");
        let names: Vec<&Value> = truncated["messages"]
            .as_array()
            .map(|messages| messages.iter().filter_map(|m| m.get("name")).collect())
            .unwrap_or_default();
        assert!(!names.is_empty(), "{kept:?}");
        assert!(
            names.iter().all(|name| *name == "kept"),
            "fields outside the common model survive"
        );
    }

    #[test]
    fn fit_body_inserts_summary() {
        let mut fitted = body(4);
        let outcome = fit_body::<OpenAi>(&mut fitted, 200, Strategy::Summarize, Some(&summary(4)))
            .expect("fits");
        assert_eq!(outcome.action, Some("summarized"));
        let kept = contents(&fitted);
        assert_eq!(kept[1], format!("{SUMMARY_INTRO}Parcels 0 and 1 left."));
        assert!(
            !kept
                .iter()
                .any(|text| text.starts_with("Where is parcel 0"))
        );
        assert!(
            !kept
                .iter()
                .any(|text| text.starts_with("Where is parcel 1"))
        );
    }

    #[test]
    fn fit_body_reject_reports_overage() {
        let mut request = body(4);
        let error =
            fit_body::<OpenAi>(&mut request, 50, Strategy::Reject, None).expect_err("over budget");
        let ProxyError::ContextOverBudget {
            tokens,
            budget,
            over,
        } = error
        else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(budget, 50);
        assert_eq!(over, tokens - 50);
    }

    #[test]
    fn compaction_halves_and_keeps_newest() {
        let compaction = Compaction {
            strategy: Strategy::Truncate,
            summary: None,
        };
        let sent = Bytes::from(serde_json::to_vec(&Value::Object(body(4))).expect("encode"));
        let retry = compaction
            .compact::<OpenAi>(&sent)
            .expect("a smaller request");
        let Ok(Value::Object(retry)) = serde_json::from_slice::<Value>(&retry) else {
            panic!("retry body is not a JSON object");
        };
        let counter = TokenCounter::for_model("gpt-4o-mini");
        let before = serde_json::from_slice::<Value>(&sent).expect("JSON");
        let before = counter.openai_request(before.as_object().expect("object"));
        assert!(counter.openai_request(&retry) <= before / 2 + 1);
        assert_eq!(
            contents(&retry).last().map(String::as_str),
            Some("And the last one?")
        );

        let short = Bytes::from(serde_json::to_vec(&Value::Object(body(0))).expect("encode"));
        assert_eq!(
            compaction.compact::<OpenAi>(&short),
            None,
            "nothing left to drop"
        );
    }

    fn guard() -> Guard {
        let policy = Policy::load_or_default(None).expect("default policy");
        Guard::new(
            Arc::new(policy),
            Arc::new(crate::guard::pii::HashKey::new(b"k")),
        )
    }

    fn user(text: &str) -> Message {
        Message {
            role: Role::User,
            parts: vec![Part::Text {
                text: text.to_owned(),
            }],
        }
    }

    #[tokio::test]
    async fn conflicting_append_retried_on_reload() {
        let store = crate::state::memory::MemoryStore::with_defaults();
        let guard = guard();
        let context = |stored| TurnContext {
            id: "conv".to_owned(),
            stored,
            budget: None,
        };
        let first = [user("one")];
        assert!(append_turn(&store, &guard, &context(None), "gpt-4o-mini", &first, None).await);
        let stale = store.load("conv").await.expect("load").expect("stored");

        // Another sidecar appends turn two while this request still has version 1.
        let second = [user("one"), user("two")];
        let current = context(Some(stale.clone()));
        assert!(append_turn(&store, &guard, &current, "gpt-4o-mini", &second, None).await);
        let third = [user("one"), user("two"), user("three")];
        assert!(
            append_turn(
                &store,
                &guard,
                &context(Some(stale)),
                "gpt-4o-mini",
                &third,
                None
            )
            .await
        );

        let stored = store.load("conv").await.expect("load").expect("stored");
        assert_eq!(stored.version, 3);
        assert_eq!(
            stored.messages(),
            vec![user("one"), user("two"), user("three")],
            "the retry appends only what the reloaded conversation lacks"
        );
    }

    #[test]
    fn unsummarized_tokens_skip_covered_turns() {
        let turn = |tokens| Turn::new("m", "p", Vec::new()).with_tokens(tokens);
        let mut conversation = Conversation {
            turns: vec![turn(100), turn(50), turn(20)],
            ..Conversation::default()
        };
        assert_eq!(unsummarized_tokens(&conversation), 170);
        conversation.summary = Some(summary(2));
        // Turn 0 is covered; turns 1 and 2 plus the summary's 8 tokens remain.
        assert_eq!(unsummarized_tokens(&conversation), 78);
    }
}
