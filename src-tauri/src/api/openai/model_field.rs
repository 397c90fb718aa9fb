//! The request body's `model`: read without building the rest of the body into a tree, and
//! replaced in place when the backend expects another name.

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::Value;

use super::OpenAiError;

/// The `model` a JSON object names (`Some(None)` when it names none or not as a string);
/// `None` when `raw` is not a JSON object, or nests too deeply.
pub(crate) fn requested_model(raw: &[u8]) -> Option<Option<String>> {
    model_in(raw)
        .ok()
        .map(|named| named.map(|named| named.model))
}

/// The `model` string of a request body, and where its JSON value lies in the body's bytes.
#[derive(Debug, PartialEq)]
pub(crate) struct NamedModel {
    pub model: String,
    pub at: std::ops::Range<usize>,
}

/// Reads the `model` of a JSON object without building the rest into a tree: the body (long
/// prompts, base64 images) is checked and skipped, since it goes on as it came. `Ok(None)` when
/// there is no `model` or it is not a string; an error (why) when `raw` is not a JSON object.
///
/// Nesting is bounded by serde_json's recursion limit (128 arrays or objects deep), which it
/// keeps for the values it builds but not for those it skips: every value is skipped here
/// through `deserialize_any`, where the limit holds. Real requests nest a few levels
/// (messages, content parts, tool schemas); a deeper body is refused before a backend's own
/// recursive parser meets it.
pub(crate) fn model_in(raw: &[u8]) -> Result<Option<NamedModel>, String> {
    // serde also reads a struct from an array; only an object is a request.
    if raw.trim_ascii_start().first() != Some(&b'{') {
        return Err("expected a JSON object".to_owned());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let found = serde::Deserializer::deserialize_map(&mut deserializer, ModelVisitor)
        .and_then(|found| deserializer.end().map(|()| found))
        .map_err(|e| format!("expected a JSON object ({e})"))?;
    let Some(value) = found else {
        return Ok(None);
    };
    let text = value.get();
    let start = text.as_ptr() as usize - raw.as_ptr() as usize;
    Ok(serde_json::from_str::<String>(text)
        .ok()
        .map(|model| NamedModel {
            model,
            at: start..start + text.len(),
        }))
}

/// The top-level object: its `model` as written, every other value skipped with its depth
/// counted.
struct ModelVisitor;

impl<'de> serde::de::Visitor<'de> for ModelVisitor {
    type Value = Option<&'de serde_json::value::RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "model" {
                map.next_value::<Skipped>()?;
                continue;
            }
            if model.is_some() {
                return Err(serde::de::Error::duplicate_field("model"));
            }
            let value: &'de serde_json::value::RawValue = map.next_value()?;
            // A raw value is skipped without a depth count: count it now.
            serde_json::from_str::<Skipped>(value.get()).map_err(serde::de::Error::custom)?;
            model = Some(value);
        }
        Ok(model)
    }
}

/// Any JSON value, read and dropped. Unlike `IgnoredAny` (which serde_json skips without
/// counting depth) it goes through `deserialize_any`, where the parser's recursion limit holds.
struct Skipped;

impl<'de> serde::Deserialize<'de> for Skipped {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> serde::de::Visitor<'de> for SkipVisitor {
    type Value = Skipped;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_unit<E>(self) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
        while seq.next_element::<Skipped>()?.is_some() {}
        Ok(Skipped)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, Skipped>()?
            .is_some()
        {}
        Ok(Skipped)
    }
}

/// `raw` with `model` set to what the backend expects (the fast path's small bodies).
pub(crate) fn with_backend_model(raw: &[u8], backend_model: &str) -> Result<Bytes, OpenAiError> {
    let Some(named) = model_in(raw).map_err(|reason| {
        OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request_body", reason)
    })?
    else {
        return Ok(Bytes::copy_from_slice(raw));
    };
    let raw = Bytes::copy_from_slice(raw);
    Ok(spliced(&raw, named.at, backend_model).concat().into())
}

/// The body in three pieces, the `model` value at `at` replaced by `backend_model`: the client's
/// bytes are shared, not copied, however large the body.
pub(super) fn spliced(raw: &Bytes, at: std::ops::Range<usize>, backend_model: &str) -> [Bytes; 3] {
    // A string serializes to JSON whatever it holds.
    let model = serde_json::to_vec(backend_model).unwrap_or_default();
    [
        raw.slice(..at.start),
        Bytes::from(model),
        raw.slice(at.end..),
    ]
}

/// A request body sent as pieces, with its exact length (so that backends which read only a
/// `Content-Length` body, like mlx_lm.server, get one).
pub(super) struct Spliced {
    pieces: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl Spliced {
    pub(super) fn new(pieces: [Bytes; 3]) -> Self {
        let left = pieces.iter().map(|piece| piece.len() as u64).sum();
        Self {
            pieces: pieces
                .into_iter()
                .filter(|piece| !piece.is_empty())
                .collect(),
            left,
        }
    }
}

impl hyper::body::Body for Spliced {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let piece = this.pieces.pop_front();
        if let Some(piece) = &piece {
            this.left -= piece.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|piece| Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A translated request's JSON, with `model` set to `backend_model` when there is one.
pub(super) fn encoded(mut value: Value, backend_model: Option<&str>) -> Result<Bytes, OpenAiError> {
    if let (Some(object), Some(backend_model)) = (value.as_object_mut(), backend_model) {
        object.insert("model".into(), Value::String(backend_model.to_owned()));
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(encode_error)
}

fn encode_error(e: serde_json::Error) -> OpenAiError {
    OpenAiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        format!("cannot encode the request: {e}"),
    )
}
