//! Property tests of the Ollama translation: no JSON value in the shape of an Ollama request
//! makes the request mapping panic, and no backend stream or answer, however its bytes are
//! split, makes the answer mapping panic or produce anything but one final object.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed case, with the value in the message

use std::time::Instant;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::request;
use super::stream::{Aggregate, Event, Shape, Translator};

/// Keys the Ollama and OpenAI shapes use, so generated objects reach the code that reads them.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "system",
    "template",
    "suffix",
    "images",
    "tools",
    "format",
    "options",
    "think",
    "stream",
    "keep_alive",
    "raw",
    "input",
    "truncate",
    "dimensions",
    "role",
    "content",
    "thinking",
    "tool_calls",
    "tool_name",
    "tool_call_id",
    "function",
    "name",
    "arguments",
    "id",
    "type",
    "num_ctx",
    "num_predict",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed",
    "stop",
    "repeat_penalty",
    "mirostat",
    "typical_p",
    "schema",
    "properties",
    "choices",
    "delta",
    "message",
    "text",
    "reasoning_content",
    "reasoning",
    "finish_reason",
    "usage",
    "timings",
    "prompt_tokens",
    "completion_tokens",
    "prompt_n",
    "predicted_n",
    "prompt_ms",
    "predicted_ms",
    "error",
    "embedding",
    "data",
    "object",
];

/// Leaves of every JSON type, with the edge values a peer can send.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(vec![
            "",
            "0",
            "0s",
            "json",
            "low",
            "high",
            "true",
            "user",
            "assistant",
            "system",
            "tool",
            "stop",
            "length",
            "tool_calls",
            "[DONE]",
            "{",
            "{\"a\":1}",
            "data:image/png;base64,AA",
            "iVBORw0KGgo=",
            "é\u{0}",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        ".{0,12}".prop_map(Value::String),
    ]
}

/// Any JSON value, its object keys mostly from `KEYS`. Streamed tool calls' `index` is kept
/// small: a huge one is a known fault that is handled apart from these properties.
fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            4 => proptest::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
            1 => "[a-z_]{1,8}".prop_filter("index is set apart", |key| key != "index"),
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key, inner.clone()), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            (0u64..4, inner).prop_map(|(index, call)| {
                let mut object = Map::new();
                object.insert("index".into(), Value::from(index));
                object.insert("function".into(), call);
                Value::Object(object)
            }),
        ]
    })
}

/// An object in the shape of a request or an answer: some of `KEYS`, each with any value.
fn object() -> impl Strategy<Value = Value> {
    proptest::collection::vec(
        (
            proptest::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
            json(),
        ),
        0..8,
    )
    .prop_map(|entries| Value::Object(entries.into_iter().collect()))
}

/// A backend's SSE stream: events of generated chunks, `[DONE]`, comments and junk.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let event = prop_oneof![
        4 => object().prop_map(|chunk| format!("data: {chunk}\n\n").into_bytes()),
        1 => Just(b"data: [DONE]\n\n".to_vec()),
        1 => Just(b": keep-alive\r\n\r\n".to_vec()),
        1 => Just(b"event: x\nid: 1\n".to_vec()),
        1 => "data:[ -~]{0,16}\r?\n\r?\n?".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..16),
    ];
    proptest::collection::vec(event, 0..8).prop_map(|events| events.concat())
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![Just(Shape::Chat), Just(Shape::Generate)]
}

fn pieces(wire: &[u8], splits: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = splits.iter().map(|at| at % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut from = 0;
    cuts.into_iter()
        .map(|to| {
            let piece = wire[from..to].to_vec();
            from = to;
            piece
        })
        .collect()
}

/// The answer has exactly one end: a `Done` or an `Error`, last, and nothing after it.
fn ends_once(events: &[Event]) -> bool {
    let ends = events
        .iter()
        .filter(|event| matches!(event, Event::Done(_) | Event::Error(_)))
        .count();
    ends == 1 && matches!(events.last(), Some(Event::Done(_) | Event::Error(_)))
}

proptest! {
    #![proptest_config(crate::fuzz::config(512))]

    #[test]
    fn no_request_value_makes_the_ollama_request_mapping_panic(
        body in prop_oneof![4 => object(), 1 => json()],
        model in ".{0,12}",
    ) {
        let _ = request::model(&body);
        let _ = request::instance_name(&model);
        let _ = request::wants_stream(&body);
        let _ = request::wants_unload(&body);
        for translated in [
            request::chat(&mut body.clone(), &model),
            request::generate(&mut body.clone(), &model).map(|(_, body)| body),
            request::embed(&mut body.clone(), &model),
            request::embeddings(&body, &model),
        ]
        .into_iter()
        .flatten()
        {
            // What goes to the backend is an object naming the instance.
            prop_assert_eq!(translated.get("model"), Some(&Value::String(model.clone())));
        }
    }

    #[test]
    fn no_backend_stream_in_any_split_makes_the_ollama_answer_mapping_panic(
        shape in shape(),
        wire in sse_stream(),
        splits in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut translator = Translator::new(shape, "m", Instant::now());
        let mut events = Vec::new();
        for piece in pieces(&wire, &splits) {
            events.extend(translator.feed(&piece));
        }
        events.extend(translator.finish());
        prop_assert!(ends_once(&events), "{:?}", events);
        prop_assert!(translator.finished());
        let lines = translator.ndjson(&events);
        for line in lines.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            prop_assert!(serde_json::from_slice::<Value>(line).is_ok());
        }
        let mut aggregate = Aggregate::default();
        aggregate.push(events);
        let _ = aggregate.finish(shape);
    }

    #[test]
    fn no_whole_backend_answer_makes_the_ollama_answer_mapping_panic(
        shape in shape(),
        answer in prop_oneof![4 => object(), 1 => json()],
    ) {
        let mut translator = Translator::new(shape, "m", Instant::now());
        let events = translator.whole(&answer);
        prop_assert!(ends_once(&events), "{:?}", events);
        let mut aggregate = Aggregate::default();
        aggregate.push(events);
        let _ = aggregate.finish(shape);
    }
}
