//! The request log: one line per inference request when its answer has ended, and the token
//! counts read from the answer on its way to the client (a whole JSON answer, or a stream's
//! events), for the log and the instance's counters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::instances::{InFlight, TokenUsage};
use crate::relay::{ExchangeObserver, RelayError};
use crate::sse::SseParser;

/// Largest JSON answer kept to read its `usage`; bigger ones (embeddings of long inputs) are
/// passed on without counting tokens.
pub(super) const MAX_JSON_TAP: usize = 4 * 1024 * 1024;

/// Largest SSE event kept while looking for the final chunk's usage; a larger one is skipped.
pub(super) const MAX_SSE_EVENT: usize = 1024 * 1024;

/// How much of each body an instance with `capture_bodies` keeps in the activity log.
pub(crate) const MAX_CAPTURED_BODY: usize = 64 * 1024;

/// The request's log line and the instance's counters, written when the exchange ends (body
/// sent or client gone). Holds the in-flight guard, so the instance counts as busy until then.
pub(crate) struct RequestLog {
    guard: InFlight,
    path: String,
    started: Instant,
    status: Option<StatusCode>,
    body: TappedBody,
    tokens: TokenUsage,
    client: Option<SocketAddr>,
    /// The name of the stored key the client used.
    key: Option<String>,
    /// When the answer's first body bytes arrived, from `started`.
    first_byte: Option<Duration>,
    /// Corral's reason for refusing or cutting the request.
    error: Option<String>,
    /// The bodies, for an instance that captures them: the request's, and the answer's so far.
    captured: Option<(String, Vec<u8>)>,
}

/// What of the response body is kept to find the token counts: never the stream itself.
pub(super) enum TappedBody {
    /// A JSON answer, whole (bounded by `MAX_JSON_TAP`).
    Json(Vec<u8>),
    /// An SSE stream: only the event being received.
    Sse(SseParser),
    Ignored,
}

impl RequestLog {
    pub(crate) fn new(
        guard: InFlight,
        path: &str,
        started: Instant,
        client: Option<SocketAddr>,
        key: Option<String>,
    ) -> Self {
        Self {
            guard,
            path: crate::logging::redact_query(path).into_owned(),
            started,
            status: None,
            body: TappedBody::Ignored,
            tokens: TokenUsage::default(),
            client,
            key,
            first_byte: None,
            error: None,
            captured: None,
        }
    }

    /// Keeps `request` (and, as it passes, the answer), each up to `MAX_CAPTURED_BODY`.
    pub(crate) fn capture(&mut self, request: &[u8]) {
        self.captured = Some((captured_text(request), Vec::new()));
    }
}

/// At most `MAX_CAPTURED_BODY` bytes of `body` as text (invalid UTF-8 replaced), with a note
/// when it was cut.
fn captured_text(body: &[u8]) -> String {
    let kept = &body[..body.len().min(MAX_CAPTURED_BODY)];
    let mut text = String::from_utf8_lossy(kept).into_owned();
    if body.len() > MAX_CAPTURED_BODY {
        text.push_str(&format!(
            "\n[… {} more bytes not kept]",
            body.len() - MAX_CAPTURED_BODY
        ));
    }
    text
}

impl RequestLog {
    /// The request ended with Corral's own `status` instead of the backend's answer, for `why`.
    pub(crate) fn refused(&mut self, status: StatusCode, why: &str) {
        self.status = Some(status);
        self.error = Some(why.to_owned());
    }
}

impl ExchangeObserver for RequestLog {
    /// The backend answered with `status`; its body is kept for the token counts if
    /// `content_type` says it has them.
    fn response(&mut self, status: StatusCode, content_type: &str) {
        self.status = Some(status);
        self.body = if content_type.starts_with("text/event-stream") {
            TappedBody::Sse(SseParser::new(MAX_SSE_EVENT))
        } else if content_type.starts_with("application/json") {
            TappedBody::Json(Vec::new())
        } else {
            TappedBody::Ignored
        };
    }

    fn data(&mut self, chunk: &[u8]) {
        if self.first_byte.is_none() && !chunk.is_empty() {
            self.first_byte = Some(self.started.elapsed());
        }
        if let Some((_, answer)) = &mut self.captured {
            // One byte past the limit says the answer was longer.
            let room = (MAX_CAPTURED_BODY + 1).saturating_sub(answer.len());
            answer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        tap_chunk(&mut self.body, &mut self.tokens, chunk);
    }

    fn failed(&mut self, error: &RelayError) {
        self.refused(error.status(), &error.to_string());
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let backend_error = match (&self.body, self.status) {
            (TappedBody::Json(kept), Some(status)) if status.as_u16() >= 400 => error_message(kept),
            _ => None,
        };
        finish_tap(&mut self.body, &mut self.tokens);
        let elapsed = self.started.elapsed();
        if self.tokens.per_second.is_none() {
            self.tokens.per_second = self
                .tokens
                .completion
                .filter(|&tokens| tokens > 0 && !elapsed.is_zero())
                .map(|tokens| tokens as f64 / elapsed.as_secs_f64());
        }
        if self.tokens != TokenUsage::default() {
            self.guard.record_tokens(self.tokens);
        }
        // A response whose status never arrived was cut off by the client.
        let status = self.status.map_or(499, |status| status.as_u16());
        tracing::info!(
            instance = self.guard.instance(),
            path = %self.path,
            status,
            duration_ms = elapsed.as_millis() as u64,
            queued_ms = self.guard.queued().as_millis() as u64,
            prompt_tokens = self.tokens.prompt,
            completion_tokens = self.tokens.completion,
            tokens_per_second = self.tokens.per_second,
            "inference request"
        );
        self.guard.finished(crate::telemetry::Finished {
            instance: self.guard.instance().to_owned(),
            path: std::mem::take(&mut self.path),
            client: self.client,
            key: self.key.take(),
            status,
            queued: self.guard.queued(),
            first_byte: self.first_byte,
            duration: elapsed,
            prompt_tokens: self.tokens.prompt,
            completion_tokens: self.tokens.completion,
            tokens_per_second: self.tokens.per_second,
            error: self.error.take().or(backend_error),
            bodies: self.captured.take().map(|(request, answer)| {
                let mut answer_text = captured_text(&answer[..answer.len().min(MAX_CAPTURED_BODY)]);
                if answer.len() > MAX_CAPTURED_BODY {
                    answer_text.push_str("\n[… the rest not kept]");
                }
                crate::telemetry::Bodies {
                    request,
                    answer: answer_text,
                }
            }),
        });
    }
}

/// Longest error text kept from a backend's answer.
const MAX_ERROR_TEXT: usize = 500;

/// The message of a backend's JSON error answer: OpenAI's and Anthropic's `error.message`,
/// llama-server's and vLLM's `error` string or `detail`/`message`.
fn error_message(json: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    let text = value
        .pointer("/error/message")
        .or_else(|| value.get("error"))
        .or_else(|| value.get("detail"))
        .or_else(|| value.get("message"))?;
    let text = match text {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut end = text.len().min(MAX_ERROR_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned())
}

/// Keeps what `body` needs of one response chunk; reads the usage of each complete SSE event.
pub(super) fn tap_chunk(body: &mut TappedBody, tokens: &mut TokenUsage, chunk: &[u8]) {
    match body {
        TappedBody::Json(kept) if kept.len() + chunk.len() <= MAX_JSON_TAP => {
            kept.extend_from_slice(chunk)
        }
        TappedBody::Json(_) => *body = TappedBody::Ignored,
        // An event too large to keep holds no usage worth counting: skip it, read on.
        TappedBody::Sse(events) => {
            let _too_large = events.push(chunk, |data| sse_usage(tokens, data));
        }
        TappedBody::Ignored => {}
    }
}

/// Reads the usage of what `body` kept once the answer has ended: a whole JSON answer, or a
/// stream's last event that no blank line closed.
pub(super) fn finish_tap(body: &mut TappedBody, tokens: &mut TokenUsage) {
    match body {
        TappedBody::Json(kept) => read_usage(tokens, kept),
        TappedBody::Sse(events) => events.finish(|data| sse_usage(tokens, data)),
        TappedBody::Ignored => {}
    }
}

/// The usage in one SSE event's data, if it mentions one.
fn sse_usage(tokens: &mut TokenUsage, data: &[u8]) {
    let mentions = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    if !mentions(b"usage") && !mentions(b"timings") {
        return;
    }
    read_usage(tokens, data.trim_ascii());
}

/// The parts of an answer or stream event that carry token counts: OpenAI's `usage`,
/// Anthropic's `usage` (also inside `message`), llama-server's `timings`. The rest is skipped
/// while parsing (an answer may hold a long text or an embedding), not built into a tree; a field
/// of another type than expected reads as absent and hides nothing else.
#[derive(serde::Deserialize)]
struct UsageEvent {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<Usage>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<UsageMessage>,
    #[serde(default, deserialize_with = "lenient")]
    timings: Option<Timings>,
}

#[derive(serde::Deserialize)]
struct UsageMessage {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<Usage>,
}

#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    output_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Timings {
    #[serde(default, deserialize_with = "lenient")]
    prompt_n: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    predicted_n: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    predicted_per_second: Option<f64>,
}

/// `T` when the value is one, else `None` (null, or a backend's own idea of the field's type).
/// Read in one pass, without buffering the value to try it as `T` first: this runs on every
/// answer that passes the router.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Lenient<'de>,
{
    deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData::<T>))
}

/// What `lenient` can read: a number, or an object (whose own fields are lenient).
trait Lenient<'de>: Sized {
    fn from_u64(_value: u64) -> Option<Self> {
        None
    }
    fn from_f64(_value: f64) -> Option<Self> {
        None
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        drain_map(map).map(|()| None)
    }
}

impl Lenient<'_> for u64 {
    fn from_u64(value: u64) -> Option<Self> {
        Some(value)
    }
}

impl Lenient<'_> for f64 {
    fn from_u64(value: u64) -> Option<Self> {
        Some(value as f64)
    }
    fn from_f64(value: f64) -> Option<Self> {
        Some(value)
    }
}

/// Objects read with `Deserialize`; every field of theirs is lenient, so they cannot fail on a
/// field's type.
macro_rules! lenient_object {
    ($($object:ty),*) => {$(
        impl<'de> Lenient<'de> for $object {
            fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Some)
            }
        }
    )*};
}
lenient_object!(Usage, UsageMessage, Timings);

fn drain_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Lenient<'de>> serde::de::Visitor<'de> for LenientVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(T::from_u64(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(value).ok().and_then(T::from_u64))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(T::from_f64(value))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_map(map)
    }
}

/// Takes the token counts from one JSON answer or stream event. Later events win.
pub(super) fn read_usage(tokens: &mut TokenUsage, json: &[u8]) {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return;
    }
    let Ok(event) = serde_json::from_slice::<UsageEvent>(json) else {
        return;
    };
    let message_usage = event.message.and_then(|message| message.usage);
    for usage in [event.usage, message_usage].into_iter().flatten() {
        if let Some(prompt) = usage.prompt_tokens.or(usage.input_tokens) {
            tokens.prompt = Some(prompt);
        }
        if let Some(completion) = usage.completion_tokens.or(usage.output_tokens) {
            tokens.completion = Some(completion);
        }
    }
    if let Some(timings) = event.timings {
        if tokens.prompt.is_none() {
            tokens.prompt = timings.prompt_n;
        }
        if tokens.completion.is_none() {
            tokens.completion = timings.predicted_n;
        }
        if let Some(speed) = timings.predicted_per_second {
            tokens.per_second = Some(speed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tap_tests {
    use super::*;

    #[test]
    fn sse_lines_split_across_chunks_are_read() {
        let mut body = TappedBody::Sse(SseParser::new(MAX_SSE_EVENT));
        let mut tokens = TokenUsage::default();
        for chunk in [
            &b"data: {\"choices\":[]}\n\ndata: {\"usage\": {\"prompt_"[..],
            &b"tokens\": 5, \"completion_tokens\": 7}}\n\ndata: [DONE]\n\n"[..],
        ] {
            tap_chunk(&mut body, &mut tokens, chunk);
        }
        assert_eq!((tokens.prompt, tokens.completion), (Some(5), Some(7)));
    }
}
