//! Per-event cost of the streaming guard on a recorded-shape OpenAI stream.
//!
//! The stream is 1,000 `chat.completion.chunk` events of 2 to 9 bytes of text each, as
//! models stream them, generated deterministically, with an email and a card number
//! split across events. One iteration decodes the SSE bytes, guards every event with the
//! embedded default policy plus redaction of contact details, and re-encodes what is
//! released; the reported time divided by 1,000 is the cost per event.
//!
//! Run: `cargo bench -p agent-sidecar --bench stream_guard -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;
use std::sync::Arc;

use agent_sidecar::guard::Guard;
use agent_sidecar::guard::pii::HashKey;
use agent_sidecar::policy::Policy;
use agent_sidecar::sse::{DEFAULT_MAX_EVENT_BYTES, Decoder};
use agent_sidecar::stream::StreamMode;
use agent_sidecar::stream::openai::OpenAiStream;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 1_000;

const TEXT: &str = "Thanks for waiting. Your order shipped on Monday and the courier expects to \
deliver it on Friday between 9 and 12. If you need to change the address, write to \
orders.help@example.com before Thursday. The refund for the damaged item went to the card \
ending 4111 1111 1111 1111 and should appear within five business days. ";

fn recorded_stream() -> Vec<u8> {
    let mut body = String::new();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut source = TEXT.chars().cycle();
    let envelope = r#""id":"chatcmpl-bench","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini""#;
    body.push_str(&format!(
        "data: {{{envelope},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n"
    ));
    for _ in 0..EVENTS - 2 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 2 + (state % 8) as usize;
        let piece: String = source.by_ref().take(len).collect();
        let delta = serde_json::to_string(&piece).expect("string encodes");
        body.push_str(&format!(
            "data: {{{envelope},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{delta}}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    body.push_str(&format!(
        "data: {{{envelope},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n"
    ));
    body.push_str("data: [DONE]\n\n");
    body.into_bytes()
}

fn guard() -> Arc<Guard> {
    let policy = Policy::embedded_default().expect("embedded policy compiles");
    Arc::new(Guard::new(
        Arc::new(policy),
        Arc::new(HashKey::new(b"bench")),
    ))
}

fn bench_stream(c: &mut Criterion) {
    let stream = recorded_stream();
    let guard = guard();
    // Reads of about 1.5 KiB, as a TCP socket delivers them.
    let reads: Vec<&[u8]> = stream.chunks(1536).collect();
    let mut group = c.benchmark_group("stream_guard");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("openai_1000_events", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new(DEFAULT_MAX_EVENT_BYTES);
            let mut guarded = OpenAiStream::new(guard.clone(), StreamMode::Guarded, 8192, false);
            let mut frames = Vec::new();
            let mut out = String::with_capacity(stream.len());
            for read in &reads {
                decoder.feed(read, &mut frames).expect("valid stream");
                for frame in frames.drain(..) {
                    guarded.on_frame(frame, &mut out);
                }
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_stream);
criterion_main!(benches);
