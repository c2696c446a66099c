use std::sync::atomic::AtomicU32;

use tokio::sync::Semaphore;

use super::*;
use crate::state::memory::MemoryStore;
use crate::state::{Append, Turn};

const HOUR: Duration = Duration::from_secs(3600);

fn text(role: Role, text: &str) -> Message {
    Message {
        role,
        parts: vec![Part::Text {
            text: text.to_owned(),
        }],
    }
}

fn turn(index: usize, tokens: u32) -> Turn {
    Turn::new(
        "gpt-4o",
        "p@1",
        vec![
            text(Role::User, &format!("question {index}")),
            text(Role::Assistant, &format!("answer {index}")),
        ],
    )
    .with_tokens(tokens)
}

fn conversation(turns: Vec<Turn>) -> Conversation {
    Conversation {
        id: "c1".to_owned(),
        version: turns.len() as u64,
        turns,
        ..Conversation::default()
    }
}

fn settings() -> SummarySettings {
    SummarySettings {
        model: "gpt-4o-mini".to_owned(),
        prompt: "Summarize.".to_owned(),
        max_output_tokens: 200,
        keep_recent_tokens: 25,
        ttl: HOUR,
    }
}

fn quick_retry(max_attempts: u32) -> RetrySettings {
    RetrySettings {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

#[test]
fn plan_keeps_the_newest_turns_verbatim() {
    let turns: Vec<Turn> = (0..5).map(|i| turn(i, 10)).collect();
    let plan = plan(&conversation(turns), 25).expect("something to summarize");
    assert_eq!((plan.start_turn, plan.end_turn), (0, 3));
    assert_eq!(plan.messages.len(), 6);
    assert_eq!(plan.covered_messages, 6);
}

#[test]
fn plan_starts_after_the_stored_summary() {
    let mut conversation = conversation((0..6).map(|i| turn(i, 10)).collect());
    conversation.summary = Some(Summary {
        text: "earlier".to_owned(),
        first_turn: 0,
        end_turn: 2,
        covered_messages: 4,
        tokens: 1,
        model: "m".to_owned(),
        created_at_ms: 0,
    });
    let plan = plan(&conversation, 15).expect("turns 2 and later");
    assert_eq!((plan.start_turn, plan.end_turn), (2, 5));
    assert_eq!(plan.covered_messages, 4 + 6);

    let nothing = super::plan(&conversation, 1_000);
    assert_eq!(nothing, None, "everything left is recent");
}

#[test]
fn plan_does_not_split_a_tool_call_from_its_result() {
    let mut turns: Vec<Turn> = (0..4).map(|i| turn(i, 10)).collect();
    turns[2].messages.push(Message {
        role: Role::Assistant,
        parts: vec![Part::ToolCall {
            id: "call_1".to_owned(),
            name: "lookup".to_owned(),
            arguments: "{}".to_owned(),
        }],
    });
    let plan = plan(&conversation(turns), 10).expect("turns to summarize");
    assert_eq!(
        plan.end_turn, 2,
        "turn 2 ends with a call answered in turn 3, so both stay verbatim"
    );
}

#[test]
fn plan_skips_system_messages() {
    let mut turns = vec![turn(0, 10), turn(1, 10)];
    turns[0]
        .messages
        .insert(0, text(Role::System, "You are a support agent."));
    let plan = plan(&conversation(turns), 0).expect("turns to summarize");
    assert!(plan.messages.iter().all(|m| m.role != Role::System));
    assert_eq!(plan.covered_messages, 4);
}

/// Fails `failures` times, then returns a summary; waits for a permit per call when
/// `gate` is set.
#[derive(Debug)]
struct FakeSummarizer {
    failures: u32,
    calls: AtomicU32,
    gate: Option<Arc<Semaphore>>,
}

#[async_trait]
impl Summarizer for FakeSummarizer {
    async fn summarize(&self, request: SummaryRequest) -> Result<String, SummarizeError> {
        if let Some(gate) = &self.gate {
            let permit = gate.acquire().await.expect("semaphore open");
            permit.forget();
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.failures {
            return Err(SummarizeError("upstream returned 503".to_owned()));
        }
        Ok(format!("{} messages summarized", request.messages.len()))
    }
}

async fn stored_conversation(store: &MemoryStore, turns: usize) -> Conversation {
    for i in 0..turns {
        store
            .append(
                "c1",
                Append {
                    turn: turn(i, 10),
                    vault: Vec::new(),
                    expected_version: None,
                    ttl: HOUR,
                },
            )
            .await
            .expect("append");
    }
    store.load("c1").await.expect("load").expect("exists")
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition not reached within a second");
}

#[tokio::test]
async fn summary_is_stored_with_its_range() {
    let store = Arc::new(MemoryStore::with_defaults());
    let conversation = stored_conversation(&store, 5).await;
    let summarizer = Arc::new(FakeSummarizer {
        failures: 0,
        calls: AtomicU32::new(0),
        gate: None,
    });
    let scheduler = SummaryScheduler::new(summarizer, store.clone(), quick_retry(3));
    assert_eq!(
        scheduler.schedule(&conversation, settings()),
        Scheduled::Started
    );
    wait_until(|| scheduler.stats().succeeded.load(Ordering::SeqCst) == 1).await;
    let summary = store
        .load("c1")
        .await
        .expect("load")
        .and_then(|c| c.summary)
        .expect("summary stored");
    assert_eq!(summary.text, "6 messages summarized");
    assert_eq!((summary.first_turn, summary.end_turn), (0, 3));
    assert_eq!(summary.covered_messages, 6);
    assert_eq!(summary.model, "gpt-4o-mini");
    assert!(summary.tokens > 0);
}

#[tokio::test]
async fn one_summarization_per_conversation_at_a_time() {
    let store = Arc::new(MemoryStore::with_defaults());
    let conversation = stored_conversation(&store, 5).await;
    let gate = Arc::new(Semaphore::new(0));
    let summarizer = Arc::new(FakeSummarizer {
        failures: 0,
        calls: AtomicU32::new(0),
        gate: Some(gate.clone()),
    });
    let scheduler = SummaryScheduler::new(summarizer.clone(), store, quick_retry(3));
    assert_eq!(
        scheduler.schedule(&conversation, settings()),
        Scheduled::Started
    );
    assert_eq!(
        scheduler.schedule(&conversation, settings()),
        Scheduled::AlreadyRunning
    );
    assert!(scheduler.is_running("c1"));
    gate.add_permits(1);
    wait_until(|| !scheduler.is_running("c1")).await;
    assert_eq!(summarizer.calls.load(Ordering::SeqCst), 1);
    gate.add_permits(1);
    assert_eq!(
        scheduler.schedule(&conversation, settings()),
        Scheduled::Started,
        "a new one may start after the first finished"
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_and_counted() {
    let store = Arc::new(MemoryStore::with_defaults());
    let conversation = stored_conversation(&store, 5).await;
    let summarizer = Arc::new(FakeSummarizer {
        failures: 2,
        calls: AtomicU32::new(0),
        gate: None,
    });
    let scheduler = SummaryScheduler::new(summarizer.clone(), store.clone(), quick_retry(3));
    scheduler.schedule(&conversation, settings());
    wait_until(|| !scheduler.is_running("c1")).await;
    let stats = scheduler.stats();
    assert_eq!(stats.failed_attempts.load(Ordering::SeqCst), 2);
    assert_eq!(stats.succeeded.load(Ordering::SeqCst), 1);
    assert_eq!(stats.abandoned.load(Ordering::SeqCst), 0);
    assert_eq!(summarizer.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn summarization_gives_up_after_its_attempts() {
    let store = Arc::new(MemoryStore::with_defaults());
    let conversation = stored_conversation(&store, 5).await;
    let summarizer = Arc::new(FakeSummarizer {
        failures: u32::MAX,
        calls: AtomicU32::new(0),
        gate: None,
    });
    let scheduler = SummaryScheduler::new(summarizer.clone(), store.clone(), quick_retry(2));
    scheduler.schedule(&conversation, settings());
    wait_until(|| !scheduler.is_running("c1")).await;
    assert_eq!(scheduler.stats().abandoned.load(Ordering::SeqCst), 1);
    assert_eq!(summarizer.calls.load(Ordering::SeqCst), 2);
    let stored = store.load("c1").await.expect("load").expect("exists");
    assert!(stored.summary.is_none());
}
