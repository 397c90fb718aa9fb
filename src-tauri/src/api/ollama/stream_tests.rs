//! Tests of the OpenAI -> Ollama translation (`stream.rs`).

use super::*;
use crate::sse::EventTooLarge;

/// A llama-server chat stream, as captured from the real server.
const CHAT_STREAM: &str = concat!(
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Héllo\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" world\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\"}\n\n",
    "data: {\"choices\":[],\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":29,\"total_tokens\":31},",
    "\"timings\":{\"prompt_n\":29,\"prompt_ms\":14.5,\"predicted_n\":2,\"predicted_ms\":2.25}}\n\n",
    "data: [DONE]\n\n",
);

fn lines(translator: &Translator, events: &[Event]) -> Vec<Value> {
    events.iter().map(|e| translator.line(e)).collect()
}

fn feed_in_pieces(stream: &[u8], piece: usize) -> (Translator, Vec<Value>) {
    let mut translator = Translator::new(Shape::Chat, "tiny:latest", Instant::now());
    let mut out = Vec::new();
    for bytes in stream.chunks(piece) {
        let events = translator.feed(bytes);
        out.extend(lines(&translator, &events));
    }
    let events = translator.finish();
    out.extend(lines(&translator, &events));
    (translator, out)
}

#[test]
fn chat_stream_becomes_one_line_per_token_and_a_final_line_with_stats() {
    let (translator, out) = feed_in_pieces(CHAT_STREAM.as_bytes(), CHAT_STREAM.len());
    assert!(translator.finished());
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0]["model"], "tiny:latest");
    assert_eq!(out[0]["done"], false);
    assert_eq!(
        out[0]["message"],
        json!({"role": "assistant", "content": "Héllo"})
    );
    assert_eq!(out[1]["message"]["content"], " world");
    let last = &out[2];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["message"]["content"], "");
    assert_eq!(last["prompt_eval_count"], 29);
    assert_eq!(last["eval_count"], 2);
    assert_eq!(last["prompt_eval_duration"], 14_500_000);
    assert_eq!(last["eval_duration"], 2_250_000);
    let total = last["total_duration"].as_u64().unwrap();
    let load = last["load_duration"].as_u64().unwrap();
    assert_eq!(load, total.saturating_sub(14_500_000 + 2_250_000));
    assert!(chrono::DateTime::parse_from_rfc3339(last["created_at"].as_str().unwrap()).is_ok());
}

#[test]
fn events_split_anywhere_across_reads_give_the_same_lines() {
    let (_, whole) = feed_in_pieces(CHAT_STREAM.as_bytes(), CHAT_STREAM.len());
    // 1-byte reads cut every line and the two-byte "é" in half.
    for piece in [1, 2, 3, 7, 64] {
        let (_, split) = feed_in_pieces(CHAT_STREAM.as_bytes(), piece);
        let strip = |v: &[Value]| {
            v.iter()
                .map(|l| {
                    let mut l = l.clone();
                    for key in ["created_at", "total_duration", "load_duration"] {
                        l.as_object_mut().unwrap().remove(key);
                    }
                    l
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&split), strip(&whole), "piece size {piece}");
    }
}

#[test]
fn crlf_events_and_a_stream_cut_before_done_still_end_with_a_final_line() {
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}]}";
    let (_, out) = feed_in_pieces(stream.as_bytes(), 5);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[1]["message"]["content"], "b");
    assert_eq!(out[2]["done_reason"], "stop");
    // No usage and no timings: the count is the chunks seen.
    assert_eq!(out[2]["eval_count"], 2);
}

#[test]
fn streamed_tool_call_fragments_become_one_ollama_tool_call() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"ci\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\": \\\"Paris\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let (_, out) = feed_in_pieces(stream.as_bytes(), 11);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0]["message"]["tool_calls"],
        json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])
    );
    assert_eq!(out[1]["done"], true);
    assert_eq!(out[1]["done_reason"], "stop");
}

#[test]
fn a_tool_call_index_from_the_backend_never_sizes_a_list() {
    let stream = format!(
        concat!(
            "data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":{},\"function\":{{\"name\":\"huge\"}}}}]}}}}]}}\n\n",
            "data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":1,\"function\":{{\"name\":\"f\",\"arguments\":\"{{}}\"}}}}]}}}}]}}\n\n",
            "data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\n",
        ),
        u64::MAX
    );
    let (_, out) = feed_in_pieces(stream.as_bytes(), stream.len());
    assert_eq!(
        out[0]["message"]["tool_calls"],
        json!([{"function": {"name": "f", "arguments": {}}}])
    );
    assert_eq!(out.last().unwrap()["done"], true);
}

#[test]
fn a_stream_line_that_never_ends_is_refused_before_it_grows_past_the_cap() {
    let mut translator = Translator::new(Shape::Chat, "m", Instant::now());
    let piece = vec![b'x'; 1024 * 1024];
    let mut errors = Vec::new();
    for _ in 0..MAX_SSE_EVENT / piece.len() + 2 {
        errors.extend(
            translator
                .feed(&piece)
                .into_iter()
                .filter(|e| matches!(e, Event::Error(_))),
        );
        assert!(translator.sse.buffered() <= MAX_SSE_EVENT + piece.len());
    }
    assert_eq!(
        errors,
        vec![Event::Error(
            EventTooLarge {
                limit: MAX_SSE_EVENT
            }
            .to_string()
        )]
    );
    assert!(translator.finished());
    // One long event of many `data:` lines counts whole.
    let mut parser = SseParser::new(MAX_SSE_EVENT);
    let line = format!("data: {}\n", "y".repeat(1024 * 1024));
    let mut refused = false;
    for _ in 0..MAX_SSE_EVENT / line.len() + 2 {
        refused |= parser.push(line.as_bytes(), |_| {}).is_err();
    }
    assert!(refused);
}

#[test]
fn reasoning_is_thinking_and_generate_puts_text_in_response() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n",
        "data: {\"choices\":[{\"text\":\"42\",\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let mut translator = Translator::new(Shape::Generate, "m", Instant::now());
    let mut events = translator.feed(stream.as_bytes());
    events.extend(translator.finish());
    let out = lines(&translator, &events);
    assert_eq!(out[0]["thinking"], "hmm");
    assert_eq!(out[0]["response"], "");
    assert_eq!(out[1]["response"], "42");
    assert!(out[1].get("message").is_none());
    assert_eq!(out[2]["response"], "");
    assert_eq!(out[2]["done"], true);
}

#[test]
fn error_event_ends_the_stream_with_an_ollama_error() {
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"code\":500,\"message\":\"context full\"}}\n\n";
    let (translator, out) = feed_in_pieces(stream.as_bytes(), 4);
    assert!(translator.finished());
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1], json!({"error": "context full"}));
}

#[test]
fn ndjson_writes_one_object_per_line() {
    let (translator, _) = feed_in_pieces(CHAT_STREAM.as_bytes(), 9);
    let events = vec![
        Event::Delta {
            content: "a\nb".into(),
            thinking: String::new(),
        },
        Event::Error("x".into()),
    ];
    let text = String::from_utf8(translator.ndjson(&events)).unwrap();
    let parsed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0]["message"]["content"], "a\nb");
    assert!(text.ends_with('\n'));
}

#[test]
fn aggregate_folds_the_stream_into_one_answer() {
    let mut translator = Translator::new(Shape::Chat, "m", Instant::now());
    let mut aggregate = Aggregate::default();
    for piece in CHAT_STREAM.as_bytes().chunks(13) {
        aggregate.push(translator.feed(piece));
    }
    aggregate.push(translator.finish());
    let answer = aggregate.finish(Shape::Chat).unwrap();
    assert_eq!(answer["message"]["content"], "Héllo world");
    assert_eq!(answer["done"], true);
    assert_eq!(answer["eval_count"], 2);
}

#[test]
fn whole_openai_answer_is_translated_too() {
    let answer = json!({"choices": [{"message": {"role": "assistant", "content": "hi",
        "tool_calls": [{"id": "x", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
    let mut translator = Translator::new(Shape::Chat, "m", Instant::now());
    let mut aggregate = Aggregate::default();
    aggregate.push(translator.whole(&answer));
    let answer = aggregate.finish(Shape::Chat).unwrap();
    assert_eq!(answer["message"]["content"], "hi");
    assert_eq!(
        answer["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"a": 1})
    );
    assert_eq!(answer["prompt_eval_count"], 3);
    assert_eq!(answer["done_reason"], "stop");
}
