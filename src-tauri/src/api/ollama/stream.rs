//! OpenAI answers -> Ollama answers. An SSE stream is parsed as its bytes arrive (events may be
//! split across reads anywhere) and each chunk becomes Ollama NDJSON objects at once; the final
//! object carries `done_reason` and the counts and durations Ollama reports.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::sse::SseParser;

/// What the Ollama answer looks like: `/api/chat` puts text in `message`, `/api/generate` in
/// `response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Generate,
}

/// The largest stream event (all its `data:` lines) kept while it arrives. A chat chunk is a
/// few hundred bytes and a tool call's arguments a few KiB; this leaves room for a backend that
/// sends a whole long answer as one event, and stops one that never ends a line from growing
/// Corral's memory without bound.
pub const MAX_SSE_EVENT: usize = 16 * 1024 * 1024;

/// One thing to tell the Ollama client.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Generated text (and reasoning, kept apart as Ollama's `thinking`).
    Delta { content: String, thinking: String },
    /// Complete tool calls, Ollama-shaped (`arguments` is an object).
    ToolCalls(Vec<Value>),
    /// The backend failed mid-answer.
    Error(String),
    /// The end, with the final statistics.
    Done(Value),
}

/// Tool calls one answer may make; models make a handful at most.
const MAX_TOOL_CALLS: usize = 128;

/// A tool call whose pieces are still arriving.
#[derive(Debug, Default)]
struct PartialCall {
    name: String,
    arguments: String,
}

/// Turns one OpenAI answer (streamed or whole) into Ollama events.
#[derive(Debug)]
pub struct Translator {
    shape: Shape,
    /// The model as the client named it; every answer object echoes it.
    model: String,
    /// When the Ollama request arrived: the start of `total_duration`.
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    sse: SseParser,
    finish_reason: Option<String>,
    usage: Option<Value>,
    /// llama-server's own `timings` (milliseconds), better than what Corral can measure.
    timings: Option<Value>,
    /// Text chunks seen: the token count of last resort.
    chunks: u64,
    calls: Vec<PartialCall>,
    finished: bool,
}

impl Translator {
    pub fn new(shape: Shape, model: &str, started: Instant) -> Self {
        Self {
            shape,
            model: model.to_owned(),
            started,
            first_token: None,
            last_token: None,
            sse: SseParser::new(MAX_SSE_EVENT),
            finish_reason: None,
            usage: None,
            timings: None,
            chunks: 0,
            calls: Vec::new(),
            finished: false,
        }
    }

    /// Whether the answer is complete (done or failed): nothing more will be produced.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Events for the next bytes of an SSE stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        let mut data = Vec::new();
        let pushed = self.sse.push(bytes, |event| {
            data.push(String::from_utf8_lossy(event).into_owned())
        });
        for data in data {
            self.data(&data, &mut events);
        }
        if let Err(too_large) = pushed {
            events.push(Event::Error(too_large.to_string()));
            self.finished = true;
        }
        events
    }

    /// The events left when the stream has ended: the final one at least, once.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut last = None;
        self.sse
            .finish(|event| last = Some(String::from_utf8_lossy(event).into_owned()));
        if let Some(data) = last {
            self.data(&data, &mut events);
        }
        self.done(&mut events);
        events
    }

    /// Events for a whole (non-streamed) OpenAI answer.
    pub fn whole(&mut self, answer: &Value) -> Vec<Event> {
        let mut events = Vec::new();
        self.chunk(answer, &mut events);
        self.done(&mut events);
        events
    }

    /// The Ollama object of one streamed event.
    pub fn line(&self, event: &Event) -> Value {
        match event {
            Event::Delta { content, thinking } => {
                let mut line = self.head(false);
                self.put_text(&mut line, content, thinking, None);
                Value::Object(line)
            }
            Event::ToolCalls(calls) => {
                let mut line = self.head(false);
                self.put_text(&mut line, "", "", Some(calls));
                Value::Object(line)
            }
            Event::Error(message) => json!({ "error": message }),
            Event::Done(stats) => stats.clone(),
        }
    }

    /// `events` as NDJSON: one object per line.
    pub fn ndjson(&self, events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in events {
            // Serializing a Value cannot fail: its keys are strings.
            if let Ok(bytes) = serde_json::to_vec(&self.line(event)) {
                out.extend_from_slice(&bytes);
                out.push(b'\n');
            }
        }
        out
    }

    fn data(&mut self, data: &str, events: &mut Vec<Event>) {
        if self.finished {
            return;
        }
        if data.trim() == "[DONE]" {
            self.done(events);
            return;
        }
        match serde_json::from_str::<Value>(data) {
            Ok(chunk) => self.chunk(&chunk, events),
            Err(e) => {
                events.push(Event::Error(format!(
                    "the backend sent an unreadable stream event: {e}"
                )));
                self.finished = true;
            }
        }
    }

    fn chunk(&mut self, chunk: &Value, events: &mut Vec<Event>) {
        if let Some(error) = chunk.get("error") {
            events.push(Event::Error(error_message(error)));
            self.finished = true;
            return;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        if let Some(timings) = chunk.get("timings").filter(|t| t.is_object()) {
            self.timings = Some(timings.clone());
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return;
        };
        // Streamed chat chunks carry `delta`, whole chat answers `message`, completions `text`.
        let message = choice.get("delta").or_else(|| choice.get("message"));
        let content = message
            .and_then(|m| m.get("content"))
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let thinking = message
            .and_then(|m| m.get("reasoning_content").or_else(|| m.get("reasoning")))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !content.is_empty() || !thinking.is_empty() {
            let now = Instant::now();
            self.first_token.get_or_insert(now);
            self.last_token = Some(now);
            self.chunks += 1;
            events.push(Event::Delta {
                content: content.to_owned(),
                thinking: thinking.to_owned(),
            });
        }
        if let Some(calls) = message
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array)
        {
            self.absorb_calls(calls);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
            self.flush_calls(events);
        }
    }

    /// Streamed tool calls arrive as fragments keyed by `index`; whole answers list them. The
    /// index is the backend's word, so it only ever picks one of `MAX_TOOL_CALLS` slots: a
    /// fragment for another is dropped rather than sizing a list from it.
    fn absorb_calls(&mut self, calls: &[Value]) {
        for (position, call) in calls.iter().enumerate() {
            let index = call
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(position);
            if index >= MAX_TOOL_CALLS {
                tracing::debug!("dropping a tool call fragment with index {index}");
                continue;
            }
            if self.calls.len() <= index {
                self.calls.resize_with(index + 1, PartialCall::default);
            }
            let partial = &mut self.calls[index];
            let function = &call["function"];
            if let Some(name) = function.get("name").and_then(Value::as_str) {
                partial.name.push_str(name);
            }
            match function.get("arguments") {
                Some(Value::String(fragment)) => partial.arguments.push_str(fragment),
                Some(object @ Value::Object(_)) => partial.arguments = object.to_string(),
                _ => {}
            }
        }
    }

    fn flush_calls(&mut self, events: &mut Vec<Event>) {
        if self.calls.is_empty() {
            return;
        }
        let calls = std::mem::take(&mut self.calls)
            .into_iter()
            .filter(|call| !call.name.is_empty())
            .map(|call| {
                let arguments = if call.arguments.trim().is_empty() {
                    json!({})
                } else {
                    // A model that wrote invalid JSON still gets its text back.
                    serde_json::from_str(&call.arguments).unwrap_or(Value::String(call.arguments))
                };
                json!({"function": {"name": call.name, "arguments": arguments}})
            })
            .collect::<Vec<_>>();
        if !calls.is_empty() {
            events.push(Event::ToolCalls(calls));
        }
    }

    fn done(&mut self, events: &mut Vec<Event>) {
        if self.finished {
            return;
        }
        self.flush_calls(events);
        self.finished = true;
        let mut line = self.head(true);
        self.put_text(&mut line, "", "", None);
        // Tool calls end a turn normally: Ollama says `stop`.
        let reason = match self.finish_reason.as_deref() {
            None | Some("tool_calls") | Some("function_call") => "stop",
            Some(reason) => reason,
        };
        line.insert("done_reason".into(), Value::String(reason.to_owned()));
        for (key, value) in self.stats(Instant::now()) {
            line.insert(key.into(), Value::from(value));
        }
        events.push(Event::Done(Value::Object(line)));
    }

    /// Ollama's counts and durations (nanoseconds). Durations come from llama-server's
    /// `timings` when present, otherwise from what Corral saw: prompt = until the first token,
    /// eval = first to last token. `load_duration` is what is left of the total (starting the
    /// backend, queueing, transfer).
    fn stats(&self, now: Instant) -> [(&'static str, u64); 6] {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let total = nanos(now.duration_since(self.started));
        let ms = |key: &str| {
            self.timings
                .as_ref()
                .and_then(|t| t.get(key))
                .and_then(Value::as_f64)
                .map(|ms| (ms * 1e6).max(0.0) as u64)
        };
        let (prompt_eval, eval, load) = match (ms("prompt_ms"), ms("predicted_ms")) {
            (Some(prompt), Some(eval)) => (
                prompt,
                eval,
                total.saturating_sub(prompt).saturating_sub(eval),
            ),
            _ => {
                let first = self.first_token.unwrap_or(now);
                let last = self.last_token.unwrap_or(first);
                (
                    nanos(first.duration_since(self.started)),
                    nanos(last.duration_since(first)),
                    0,
                )
            }
        };
        let count = |usage_key: &str, timings_key: &str| {
            self.usage
                .as_ref()
                .and_then(|u| u.get(usage_key))
                .or_else(|| self.timings.as_ref().and_then(|t| t.get(timings_key)))
                .and_then(Value::as_u64)
        };
        [
            ("total_duration", total),
            ("load_duration", load),
            (
                "prompt_eval_count",
                count("prompt_tokens", "prompt_n").unwrap_or(0),
            ),
            ("prompt_eval_duration", prompt_eval),
            (
                "eval_count",
                count("completion_tokens", "predicted_n").unwrap_or(self.chunks),
            ),
            ("eval_duration", eval),
        ]
    }

    fn head(&self, done: bool) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("model".into(), Value::String(self.model.clone()));
        line.insert("created_at".into(), Value::String(now_rfc3339()));
        line.insert("done".into(), Value::Bool(done));
        line
    }

    fn put_text(
        &self,
        line: &mut Map<String, Value>,
        content: &str,
        thinking: &str,
        calls: Option<&Vec<Value>>,
    ) {
        match self.shape {
            Shape::Chat => {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                message.insert("content".into(), json!(content));
                if !thinking.is_empty() {
                    message.insert("thinking".into(), json!(thinking));
                }
                if let Some(calls) = calls {
                    message.insert("tool_calls".into(), Value::Array(calls.clone()));
                }
                line.insert("message".into(), Value::Object(message));
            }
            Shape::Generate => {
                line.insert("response".into(), json!(content));
                if !thinking.is_empty() {
                    line.insert("thinking".into(), json!(thinking));
                }
            }
        }
    }
}

/// Folds a non-streamed answer's events into Ollama's one object.
#[derive(Debug, Default)]
pub struct Aggregate {
    content: String,
    thinking: String,
    calls: Vec<Value>,
    done: Option<Value>,
    error: Option<String>,
}

impl Aggregate {
    pub fn push(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::Delta { content, thinking } => {
                    self.content.push_str(&content);
                    self.thinking.push_str(&thinking);
                }
                Event::ToolCalls(calls) => self.calls.extend(calls),
                Event::Error(message) => self.error = Some(message),
                Event::Done(done) => self.done = Some(done),
            }
        }
    }

    /// The whole answer, or the backend's error.
    pub fn finish(self, shape: Shape) -> Result<Value, String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut answer = self
            .done
            .ok_or_else(|| "the backend's answer ended early".to_owned())?;
        match shape {
            Shape::Chat => {
                let message = &mut answer["message"];
                message["content"] = Value::String(self.content);
                if !self.thinking.is_empty() {
                    message["thinking"] = Value::String(self.thinking);
                }
                if !self.calls.is_empty() {
                    message["tool_calls"] = Value::Array(self.calls);
                }
            }
            Shape::Generate => {
                answer["response"] = Value::String(self.content);
                if !self.thinking.is_empty() {
                    answer["thinking"] = Value::String(self.thinking);
                }
            }
        }
        Ok(answer)
    }
}

/// The message of an OpenAI (`{"message": ...}`), llama-server or management error value.
pub fn error_message(error: &Value) -> String {
    match error {
        Value::String(message) => message.clone(),
        Value::Object(object) => object
            .get("message")
            .or_else(|| object.get("details"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| error.to_string()),
        other => other.to_string(),
    }
}

/// Ollama's timestamps: RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
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
}
