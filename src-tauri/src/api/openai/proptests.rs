//! Property tests of what the inference routes read from OpenAI and Anthropic bodies on their way
//! through (Corral relays both as they are and only reads and rewrites a few fields): no request
//! makes the model lookup or rewrite panic, a rewrite changes `model` and nothing else, and no
//! answer or stream, however it is split, makes the token tap panic or read other counts.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed case, with the value in the message

use proptest::prelude::*;
use serde_json::Value;

use super::request_log::{finish_tap, tap_chunk, TappedBody, MAX_SSE_EVENT};
use super::*;
use crate::instances::TokenUsage;
use crate::sse::SseParser;

/// Keys of OpenAI and Anthropic requests, answers and stream events.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image",
    "source",
    "system",
    "max_tokens",
    "stream",
    "tools",
    "tool_choice",
    "input_schema",
    "tool_use",
    "tool_result",
    "thinking",
    "budget_tokens",
    "stop_sequences",
    "metadata",
    "message",
    "usage",
    "input_tokens",
    "output_tokens",
    "prompt_tokens",
    "completion_tokens",
    "timings",
    "prompt_n",
    "predicted_n",
    "predicted_per_second",
    "delta",
    "index",
    "content_block",
    "choices",
    "stop_reason",
    "error",
];

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(vec![
            "message_start",
            "content_block_delta",
            "message_delta",
            "message_stop",
            "text_delta",
            "user",
            "assistant",
            "usage",
            "[DONE]",
            "",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop_oneof![
            4 => proptest::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
            1 => ".{0,6}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// A request body: mostly an object of `KEYS`, sometimes any JSON, sometimes not JSON at all.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = proptest::collection::vec(
        (
            proptest::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
            json(),
        ),
        0..8,
    )
    .prop_map(|entries| Value::Object(entries.into_iter().collect()));
    prop_oneof![
        4 => object.prop_map(|value| serde_json::to_vec(&value).unwrap()),
        1 => json().prop_map(|value| serde_json::to_vec_pretty(&value).unwrap()),
        1 => any::<Vec<u8>>(),
        1 => "[ {}\\[\\]\":,a-z0-9\\\\]{0,32}".prop_map(String::into_bytes),
    ]
}

/// An answer's body: an SSE stream of events (OpenAI or Anthropic) or one JSON answer.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    let event = prop_oneof![
        4 => json().prop_map(|value| format!("data: {value}\n\n").into_bytes()),
        1 => json().prop_map(|value| format!("event: message_delta\r\ndata:{value}\r\n\r\n").into_bytes()),
        1 => Just(b"data: [DONE]\n\n".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ];
    prop_oneof![
        3 => proptest::collection::vec(event, 0..8).prop_map(|events| events.concat()),
        1 => json().prop_map(|value| serde_json::to_vec(&value).unwrap()),
    ]
}

fn tapped(sse: bool, wire: &[u8], splits: &[usize]) -> TokenUsage {
    let mut cuts: Vec<usize> = splits.iter().map(|at| at % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut body = if sse {
        TappedBody::Sse(SseParser::new(MAX_SSE_EVENT))
    } else {
        TappedBody::Json(Vec::new())
    };
    let mut tokens = TokenUsage::default();
    let mut from = 0;
    for to in cuts {
        tap_chunk(&mut body, &mut tokens, &wire[from..to]);
        from = to;
    }
    finish_tap(&mut body, &mut tokens);
    tokens
}

proptest! {
    #![proptest_config(crate::fuzz::config(512))]

    #[test]
    fn no_request_body_makes_the_model_lookup_or_rewrite_panic_and_a_rewrite_changes_only_the_model(
        raw in body(),
        backend_model in ".{0,12}",
    ) {
        let parsed = serde_json::from_slice::<Value>(&raw).ok();
        match requested_model(&raw) {
            None => prop_assert!(!parsed.as_ref().is_some_and(Value::is_object)),
            Some(model) => {
                let parsed = parsed.unwrap();
                prop_assert_eq!(model.as_deref(), parsed.get("model").and_then(Value::as_str));
                let rewritten: Value =
                    serde_json::from_slice(&with_backend_model(&raw, &backend_model).unwrap())
                        .unwrap();
                let mut expected = parsed;
                // A body that names no model (none, or not a string) is passed on as it is:
                // the backend serves its own.
                if expected.get("model").is_some_and(Value::is_string) {
                    expected["model"] = Value::String(backend_model);
                }
                // Through the same text as the rewrite, so float digits compare alike.
                let expected: Value =
                    serde_json::from_slice(&serde_json::to_vec(&expected).unwrap()).unwrap();
                prop_assert_eq!(rewritten, expected);
            }
        }
    }

    #[test]
    fn no_answer_in_any_split_makes_the_token_tap_panic_or_read_other_counts(
        sse in any::<bool>(),
        wire in answer(),
        splits in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        prop_assert_eq!(tapped(sse, &wire, &splits), tapped(sse, &wire, &[]));
    }
}
