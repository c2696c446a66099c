use super::*;

fn counter() -> TokenCounter {
    TokenCounter::for_model("gpt-4o")
}

fn text(role: Role, text: &str) -> Message {
    Message {
        role,
        parts: vec![Part::Text {
            text: text.to_owned(),
        }],
    }
}

fn call(id: &str) -> Message {
    Message {
        role: Role::Assistant,
        parts: vec![Part::ToolCall {
            id: id.to_owned(),
            name: "lookup".to_owned(),
            arguments: "{\"order\":42}".to_owned(),
        }],
    }
}

fn result(id: &str) -> Message {
    Message {
        role: Role::Tool,
        parts: vec![Part::ToolResult {
            call_id: id.to_owned(),
            text: "shipped yesterday".to_owned(),
        }],
    }
}

/// Builds a system prompt, then `turns` user/assistant pairs of similar size.
fn conversation(turns: usize) -> Vec<Message> {
    let mut messages = vec![text(Role::System, "You are a support agent.")];
    for i in 0..turns {
        messages.push(text(
            Role::User,
            &format!("question number {i} about my order"),
        ));
        messages.push(text(
            Role::Assistant,
            &format!("answer number {i} about the order"),
        ));
    }
    messages
}

fn total(messages: &[Message]) -> u32 {
    counter().messages(messages)
}

fn summary(covered_messages: u64) -> Summary {
    Summary {
        text: "The customer asked about order 42.".to_owned(),
        first_turn: 0,
        end_turn: 3,
        covered_messages,
        tokens: 9,
        model: "gpt-4o-mini".to_owned(),
        created_at_ms: 0,
    }
}

#[test]
fn request_within_budget_is_unchanged() {
    let messages = conversation(3);
    let budget = total(&messages);
    for strategy in [Strategy::Summarize, Strategy::Truncate, Strategy::Reject] {
        let plan = fit(&messages, &counter(), budget, 0, strategy, None).expect("fits");
        assert!(plan.is_unchanged(), "{strategy:?}");
        assert_eq!(plan.tokens, budget);
    }
}

#[test]
fn reject_reports_how_far_over() {
    let messages = conversation(3);
    let needed = total(&messages);
    let error =
        fit(&messages, &counter(), needed - 5, 0, Strategy::Reject, None).expect_err("over budget");
    assert_eq!(error.over, 5);
    assert_eq!(error.tokens, needed);
    assert_eq!(error.budget, needed - 5);
}

#[test]
fn truncate_keeps_system_and_newest_turns() {
    let messages = conversation(6);
    let keep_from = messages.len() - 4;
    let budget = total(&[&messages[..1], &messages[keep_from..]].concat());
    let plan = fit(&messages, &counter(), budget, 0, Strategy::Truncate, None).expect("fits");
    let expected: Vec<usize> = std::iter::once(0)
        .chain(keep_from..messages.len())
        .collect();
    assert_eq!(plan.kept, expected);
    assert_eq!(plan.dropped, messages.len() - expected.len());
    assert!(plan.tokens <= budget);
    assert_eq!(plan.summary_at, None);
}

#[test]
fn tool_call_and_result_stay_together() {
    let mut messages = conversation(2);
    messages.push(call("call_1"));
    messages.push(result("call_1"));
    messages.push(text(Role::User, "and when does it arrive?"));
    let last = messages.len() - 1;
    // Room for the last message and the result, but not for the call as well.
    let without_call = total(&[&messages[..1], &messages[last - 1..]].concat());
    let plan = fit(
        &messages,
        &counter(),
        without_call,
        0,
        Strategy::Truncate,
        None,
    )
    .expect("the last message fits");
    assert_eq!(plan.kept, vec![0, last], "the orphaned result must go too");

    let with_pair = total(&[&messages[..1], &messages[last - 2..]].concat());
    let plan = fit(
        &messages,
        &counter(),
        with_pair,
        0,
        Strategy::Truncate,
        None,
    )
    .expect("fits");
    assert_eq!(plan.kept, vec![0, last - 2, last - 1, last]);
}

#[test]
fn parallel_tool_calls_form_one_unit() {
    let mut messages = vec![text(Role::User, "check both orders")];
    messages.push(Message {
        role: Role::Assistant,
        parts: vec![
            Part::ToolCall {
                id: "a".to_owned(),
                name: "lookup".to_owned(),
                arguments: "{}".to_owned(),
            },
            Part::ToolCall {
                id: "b".to_owned(),
                name: "lookup".to_owned(),
                arguments: "{}".to_owned(),
            },
        ],
    });
    messages.push(result("a"));
    messages.push(result("b"));
    messages.push(text(Role::User, "thanks"));
    let units = units(&messages, 0);
    assert_eq!(units, vec![0..1, 1..4, 4..5]);
}

#[test]
fn summarize_replaces_covered_messages() {
    let messages = conversation(6);
    // The summary covers the first four non-system messages (two turns).
    let stored = summary(4);
    let summary_tokens = counter().message(&summary_message(&stored));
    let budget = total(&messages) - 1;
    let plan = fit(
        &messages,
        &counter(),
        budget,
        0,
        Strategy::Summarize,
        Some(&stored),
    )
    .expect("fits");
    assert_eq!(plan.summary_at, Some(1));
    let expected: Vec<usize> = std::iter::once(0).chain(5..messages.len()).collect();
    assert_eq!(plan.kept, expected);
    let output = plan.apply(&messages, || summary_message(&stored));
    assert_eq!(output.len(), expected.len() + 1);
    assert_eq!(output[1], summary_message(&stored));
    assert_eq!(
        plan.tokens,
        total(&[&messages[..1], &messages[5..]].concat()) + summary_tokens
    );
}

#[test]
fn summarize_without_summary_truncates() {
    let messages = conversation(6);
    let budget = total(&messages) - 1;
    let summarized = fit(&messages, &counter(), budget, 0, Strategy::Summarize, None);
    let truncated = fit(&messages, &counter(), budget, 0, Strategy::Truncate, None);
    assert_eq!(summarized, truncated);
}

#[test]
fn summary_covering_newest_input_is_ignored() {
    let messages = conversation(2);
    let budget = total(&messages) - 1;
    let plan = fit(
        &messages,
        &counter(),
        budget,
        0,
        Strategy::Summarize,
        Some(&summary(40)),
    )
    .expect("fits after truncation");
    assert_eq!(plan.summary_at, None);
}

#[test]
fn newest_input_alone_over_budget_is_an_error() {
    let messages = vec![
        text(Role::System, "short"),
        text(Role::User, &"very long question ".repeat(50)),
    ];
    let error =
        fit(&messages, &counter(), 20, 0, Strategy::Truncate, None).expect_err("cannot fit");
    assert_eq!(error.tokens, total(&messages));
    assert_eq!(error.over, total(&messages) - 20);
}

#[test]
fn extra_tokens_count_against_the_budget() {
    let messages = conversation(1);
    let budget = total(&messages);
    assert!(fit(&messages, &counter(), budget, 0, Strategy::Reject, None).is_ok());
    let error = fit(&messages, &counter(), budget, 7, Strategy::Reject, None)
        .expect_err("tools push it over");
    assert_eq!(error.over, 7);
}

#[test]
fn budget_subtracts_reserved_output() {
    let limits = ModelLimits {
        context_window: 128_000,
        max_output_tokens: 16_384,
    };
    assert_eq!(budget_tokens(limits, Budget::Tokens(50_000), 8_000), 50_000);
    assert_eq!(
        budget_tokens(limits, Budget::Tokens(500_000), 8_000),
        120_000
    );
    assert_eq!(budget_tokens(limits, Budget::Fraction(0.5), 8_000), 60_000);
    assert_eq!(budget_tokens(limits, Budget::Fraction(2.0), 0), 128_000);
    assert_eq!(budget_tokens(limits, Budget::Fraction(0.5), 200_000), 0);
}

#[test]
fn trigger_is_a_fraction_of_the_budget() {
    assert!(!reached_trigger(74, 100, 0.75));
    assert!(reached_trigger(75, 100, 0.75));
    assert!(reached_trigger(0, 100, 0.0));
}

#[test]
fn user_tool_result_stays_with_call() {
    // The Messages API sends tool results in a `user` message.
    let mut messages = conversation(2);
    messages.push(call("toolu_1"));
    messages.push(Message {
        role: Role::User,
        ..result("toolu_1")
    });
    messages.push(text(Role::Assistant, "it shipped yesterday"));
    messages.push(text(Role::User, "and when does it arrive?"));
    let last = messages.len() - 1;
    // Room for the result and what follows it, but not for the call as well.
    let without_call = total(&[&messages[..1], &messages[last - 2..]].concat());
    let plan = fit(
        &messages,
        &counter(),
        without_call,
        0,
        Strategy::Truncate,
        None,
    )
    .expect("the last message fits");
    assert_eq!(
        plan.kept,
        vec![0, last - 1, last],
        "the orphaned result must go too"
    );
}

#[test]
fn first_role_drops_leading_assistant() {
    let mut messages = conversation(2);
    messages.push(text(Role::User, "and when does it arrive?"));
    let last = messages.len() - 1;
    // Room for the newest assistant reply before the last message, not for its question.
    let budget = total(&[&messages[..1], &messages[last - 1..]].concat());
    let plan = fit(&messages, &counter(), budget, 0, Strategy::Truncate, None).expect("fits");
    assert_eq!(plan.kept, vec![0, last - 1, last]);

    let plan = fit_starting_with(
        &messages,
        &counter(),
        budget,
        0,
        Strategy::Truncate,
        None,
        Some(Role::User),
    )
    .expect("fits");
    assert_eq!(plan.kept, vec![0, last]);
    assert_eq!(
        plan.tokens,
        total(&[&messages[..1], &messages[last..]].concat())
    );
}
