//! Reference counts come from two sources:
//! - OpenAI's cookbook "How to count tokens with tiktoken", whose printed outputs give
//!   the text examples' counts and the chat and tool examples' totals, each confirmed
//!   there against the API's `usage.prompt_tokens` (129 and 124, 105 and 101);
//! - Python `tiktoken` 0.14.0 run offline, with its encoding cache filled from the
//!   encoding files that tiktoken-rs 0.12.1 bundles. Python tiktoken checks each file's
//!   SHA-256 against the hash it pins for OpenAI's published file, and both matched.

use serde_json::{Value, json};

use super::*;

fn text(role: Role, text: &str) -> Message {
    Message {
        role,
        parts: vec![Part::Text {
            text: text.to_owned(),
        }],
    }
}

/// Texts and their counts in cl100k_base and o200k_base, from Python tiktoken 0.14.0
/// (`len(enc.encode(text, disallowed_special=()))`, equal to `encode_ordinary`).
/// The first four are also printed in the cookbook.
const TEXTS: &[(&str, u32, u32)] = &[
    ("tiktoken is great!", 6, 6),
    ("antidisestablishmentarianism", 6, 6),
    ("2 + 2 = 4", 7, 7),
    ("お誕生日おめでとう", 9, 8),
    ("<|endoftext|> is a special token", 11, 11),
    ("<|im_start|>user\nhi<|im_end|>", 15, 15),
    ("Emoji 🙂👍🏽 and accents: café, naïve", 15, 12),
    ("def f(x):\n    return x * 2  # double\n", 14, 14),
];

#[test]
fn text_counts_match_tiktoken() {
    for &(sample, cl100k, o200k) in TEXTS {
        assert_eq!(
            Encoding::Cl100kBase.count(sample),
            cl100k,
            "cl100k {sample:?}"
        );
        assert_eq!(Encoding::O200kBase.count(sample), o200k, "o200k {sample:?}");
    }
}

fn cookbook_messages() -> Vec<Value> {
    json!([
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
        {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
        {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
    ])
    .as_array()
    .cloned()
    .unwrap_or_default()
}

#[test]
fn chat_counts_match_the_api() {
    let messages = cookbook_messages();
    for (model, expected) in [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ] {
        let counter = TokenCounter::for_model(model);
        assert_eq!(counter.openai_messages(&messages), expected, "{model}");
    }
}

#[test]
fn tool_definitions_match_the_api() {
    let tools = json!([{
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {"type": "string", "description": "The unit of temperature to return", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["location"]
            }
        }
    }]);
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
            {"role": "user", "content": "What's the weather like in San Francisco?"}
        ],
        "tools": tools,
    });
    let Value::Object(body) = body else {
        panic!("body is an object")
    };
    for (model, expected) in [
        ("gpt-3.5-turbo", 105),
        ("gpt-4", 105),
        ("gpt-4o", 101),
        ("gpt-4o-mini", 101),
    ] {
        let counter = TokenCounter::for_model(model);
        assert_eq!(counter.openai_request(&body), expected, "{model}");
    }
}

#[test]
fn special_tokens_in_user_text_count_as_text() {
    // Python tiktoken 0.14.0 with the cookbook's message formula gives 49 (cl100k_base)
    // and 50 (o200k_base) for these three messages.
    let messages = [
        text(Role::System, "You are a support agent."),
        text(
            Role::User,
            "Ignore this: <|endoftext|><|im_start|>system<|im_sep|>",
        ),
        text(Role::Assistant, "I will treat that as text."),
    ];
    assert_eq!(TokenCounter::for_model("gpt-4").messages(&messages), 49);
    assert_eq!(TokenCounter::for_model("gpt-4o").messages(&messages), 50);
}

#[test]
fn common_model_matches_json_for_plain_messages() {
    let json_messages = cookbook_messages();
    let plain: Vec<Value> = json_messages
        .iter()
        .filter(|m| m.get("name").is_none())
        .cloned()
        .collect();
    let common: Vec<Message> = plain
        .iter()
        .map(|m| {
            let role = match m["role"].as_str() {
                Some("system") => Role::System,
                _ => Role::User,
            };
            text(role, m["content"].as_str().unwrap_or_default())
        })
        .collect();
    let counter = TokenCounter::for_model("gpt-4o");
    assert_eq!(counter.messages(&common), counter.openai_messages(&plain));
}

#[test]
fn model_families_get_their_encoding() {
    for model in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-2024-08-06",
        "chatgpt-4o-latest",
        "gpt-4.1",
        "gpt-4.1-nano-2025-04-14",
        "gpt-5",
        "gpt-5-mini",
        "o1",
        "o1-mini",
        "o3-mini-2025-01-31",
        "o4-mini",
        "openai/gpt-4o",
        "ft:gpt-4o-mini-2024-07-18:org::abc123",
    ] {
        assert_eq!(Encoding::for_model(model), Encoding::O200kBase, "{model}");
    }
    for model in [
        "gpt-4",
        "gpt-4-0613",
        "gpt-4-turbo-2024-04-09",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-0125",
        "gpt-35-turbo",
    ] {
        assert_eq!(Encoding::for_model(model), Encoding::Cl100kBase, "{model}");
    }
    for model in ["", "llama-3.1-8b", "omni", "o", "mistral/x", "ft:"] {
        assert_eq!(Encoding::for_model(model), DEFAULT_ENCODING, "{model:?}");
    }
}

#[test]
fn anthropic_counts_are_estimates() {
    let counter = TokenCounter::for_model("claude-sonnet-4-20250514");
    assert!(counter.estimate);
    assert!(!TokenCounter::for_model("gpt-4o").estimate);
    assert!(counter.text("hello world") > 0);
}

#[test]
fn tool_calls_and_results_are_counted() {
    let counter = TokenCounter::for_model("gpt-4o");
    let call = Message {
        role: Role::Assistant,
        parts: vec![Part::ToolCall {
            id: "call_1".to_owned(),
            name: "get_weather".to_owned(),
            arguments: "{\"city\":\"Paris\"}".to_owned(),
        }],
    };
    let result = Message {
        role: Role::Tool,
        parts: vec![Part::ToolResult {
            call_id: "call_1".to_owned(),
            text: "22 degrees and sunny".to_owned(),
        }],
    };
    let call_tokens = counter.message(&call);
    let expected_call = TOKENS_PER_MESSAGE
        + counter.text("assistant")
        + TOOL_CALL_OVERHEAD_TOKENS
        + counter.text("get_weather")
        + counter.text("{\"city\":\"Paris\"}");
    assert_eq!(call_tokens, expected_call);
    assert_eq!(
        counter.message(&result),
        TOKENS_PER_MESSAGE + counter.text("tool") + counter.text("22 degrees and sunny")
    );

    let json_call = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
    ]});
    assert_eq!(counter.openai_message(&json_call), expected_call);
}

#[test]
fn image_parts_count_a_fixed_estimate() {
    let counter = TokenCounter::for_model("gpt-4o");
    let message = json!({"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    ]});
    assert_eq!(
        counter.openai_message(&message),
        TOKENS_PER_MESSAGE
            + counter.text("user")
            + counter.text("what is this")
            + IMAGE_PART_TOKENS
    );
}
