//! Streamed chat completions: asking the upstream for usage, sending the request (once
//! more after a context overflow), and guarding the event stream with [`OpenAiStream`].

use std::time::Instant;

use axum::http::{HeaderMap, Method};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::ProxyState;
use super::conversation::Compaction;
use super::error::ProxyError;
use super::openai::OpenAi;
use super::pipeline;
use super::routing::{Call, Opened};
use super::stream::{self, StreamContext};
use crate::config::routing::Dialect;
use crate::dialect::openai::ChatRequest;
use crate::stream::openai::OpenAiStream;
use crate::telemetry::traces;
use tracing::Instrument;

/// Asks the upstream for usage in the stream. Returns true when the sidecar added the
/// option, so the extra usage chunk must not reach the client.
pub(super) fn request_usage(chat: &mut ChatRequest) -> bool {
    let already = chat
        .body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    if already {
        return false;
    }
    match chat.body.get_mut("stream_options") {
        Some(Value::Object(options)) => {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        }
        _ => {
            chat.body
                .insert("stream_options".to_owned(), json!({"include_usage": true}));
        }
    }
    true
}

/// Sends a streamed request and returns the client's response: a guarded event stream,
/// or the upstream's response as it came when it is an error or not a stream. After a
/// context overflow error the request is compacted and sent once more.
pub(super) async fn stream_chat(
    state: &ProxyState,
    body: Bytes,
    query: Option<&str>,
    headers: &HeaderMap,
    strip_usage: bool,
    compaction: Option<Compaction>,
    context: StreamContext,
) -> Result<Response, ProxyError> {
    let call_started = Instant::now();
    let open = |body: Bytes| {
        let model = context.model.clone();
        let span = context.span.clone();
        async move {
            let call = Call {
                method: &Method::POST,
                path: "chat/completions",
                query,
                headers,
                body: &body,
                stream: true,
            };
            state
                .routes
                .dispatch(&state.metrics, Dialect::OpenAi, &model, call)
                .instrument(span)
                .await
        }
    };
    let mut routed = match open(body.clone()).await {
        Ok(routed) => routed,
        Err(error) => {
            super::openai::record_call(state, &context, call_started, Err(&error));
            return Err(error);
        }
    };
    let mut retried = false;
    let (target, response) = loop {
        let whole = match routed.response {
            Opened::Headers(response) if stream::is_event_stream(&response) => {
                break (routed.target, response);
            }
            Opened::Headers(response) => routed.target.upstream.read_whole(response).await,
            Opened::Whole(whole) => Ok(whole),
        };
        let retry = match (&whole, retried) {
            (Ok(whole), false) => super::conversation::overflow_retry::<OpenAi>(
                state,
                whole,
                compaction.as_ref(),
                &body,
            ),
            _ => None,
        };
        let Some(retry) = retry else {
            super::openai::record_call(state, &context, call_started, whole.as_ref());
            return pipeline::finish_whole::<OpenAi>(state, whole?, &context).await;
        };
        retried = true;
        routed = open(retry).await?;
    };

    traces::record_server(&context.span, target.upstream.base_url());
    let policy = context.guard.policy().clone();
    let guarded = OpenAiStream::new(
        context.guard.clone(),
        stream::mode(&policy),
        policy.stream.max_hold_back_bytes,
        strip_usage,
    );
    Ok(stream::serve(
        state,
        &target,
        response,
        guarded,
        context,
        call_started,
    ))
}
