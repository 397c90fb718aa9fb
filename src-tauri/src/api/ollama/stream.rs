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
#[path = "stream_tests.rs"]
mod tests;
