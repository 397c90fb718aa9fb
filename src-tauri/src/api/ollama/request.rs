//! Ollama request bodies -> OpenAI request bodies: messages, images, tools, `options`, `format`
//! and `think`. Pure functions, so the mapping is tested without a backend.

use serde_json::{json, Map, Value};

/// The OpenAI endpoints the Ollama routes are translated to.
pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const COMPLETIONS_PATH: &str = "/v1/completions";
pub const EMBEDDINGS_PATH: &str = "/v1/embeddings";

/// A request Corral cannot translate; answered with 400.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("model is required")]
    MissingModel,
    #[error("invalid format: expected \"json\" or a JSON schema object")]
    InvalidFormat,
    #[error("invalid message {index}: {reason}")]
    InvalidMessage { index: usize, reason: &'static str },
    #[error("{field} must be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
}

/// The `model` of a request, as the client wrote it (answers echo it back).
pub fn model(request: &Value) -> Result<&str, RequestError> {
    request
        .get("model")
        .and_then(Value::as_str)
        .filter(|model| !model.is_empty())
        .ok_or(RequestError::MissingModel)
}

/// The instance an Ollama model name means: Ollama clients add the default tag `:latest` to
/// names without one, and instance names never contain a colon, so that tag is dropped.
pub fn instance_name(model: &str) -> &str {
    match model.strip_suffix(":latest") {
        Some(name) if !name.contains(':') => name,
        _ => model,
    }
}

/// Ollama streams unless told otherwise.
pub fn wants_stream(request: &Value) -> bool {
    request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// `keep_alive: 0` (or `"0"`, `"0s"`, ...) asks Ollama to unload the model.
pub fn wants_unload(request: &Value) -> bool {
    match request.get("keep_alive") {
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => {
            let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            digits.parse::<f64>().is_ok_and(|n| n == 0.0)
        }
        _ => false,
    }
}

/// `/api/chat` -> `/v1/chat/completions`. The upstream request always streams (with usage), so
/// one code path serves both Ollama modes and the final counts are known.
///
/// `messages` and `tools` are moved out of `request`, not copied: a prompt with images is large.
pub fn chat(request: &mut Value, instance: &str) -> Result<Value, RequestError> {
    let messages = match request.get_mut("messages").map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(messages)) => messages,
        Some(_) => {
            return Err(RequestError::InvalidField {
                field: "messages",
                expected: "an array",
            })
        }
    };
    let mut body = base(instance);
    body.insert(
        "messages".into(),
        Value::Array(messages_to_openai(messages)?),
    );
    if let Some(tools) = request
        .get_mut("tools")
        .map(Value::take)
        .filter(|tools| !tools.is_null())
    {
        body.insert("tools".into(), tools);
    }
    apply_common(request, &mut body, true)?;
    Ok(Value::Object(body))
}

/// `/api/generate` -> an OpenAI request: the path and the body.
///
/// Ollama formats `prompt` with the model's chat template unless `raw`; the backend's chat
/// endpoint applies the model's own template, so a templated generate is a one-turn chat
/// (`system` + `prompt`, with the images). `raw` prompts (and fill-in-the-middle with a `suffix`)
/// must reach the model untouched: they go to `/v1/completions`. Ollama's Go `template` cannot
/// be honoured by any backend and is ignored; so is the deprecated `context`.
pub fn generate(
    request: &mut Value,
    instance: &str,
) -> Result<(&'static str, Value), RequestError> {
    let prompt = optional_str(request, "prompt")?.unwrap_or_default();
    let raw = request.get("raw").and_then(Value::as_bool).unwrap_or(false);
    let suffix = optional_str(request, "suffix")?.filter(|suffix| !suffix.is_empty());
    let mut body = base(instance);
    if raw || suffix.is_some() {
        body.insert("prompt".into(), Value::String(prompt.to_owned()));
        if let Some(suffix) = suffix {
            body.insert("suffix".into(), Value::String(suffix.to_owned()));
        }
        apply_common(request, &mut body, false)?;
        return Ok((COMPLETIONS_PATH, Value::Object(body)));
    }
    let mut messages = Vec::new();
    if let Some(system) = optional_str(request, "system")?.filter(|system| !system.is_empty()) {
        messages.push(json!({"role": "system", "content": system}));
    }
    let mut user = json!({"role": "user", "content": prompt});
    if let Some(images) = request
        .get_mut("images")
        .map(Value::take)
        .filter(|images| !images.is_null())
    {
        user["images"] = images;
    }
    messages.push(user);
    body.insert(
        "messages".into(),
        Value::Array(messages_to_openai(messages)?),
    );
    apply_common(request, &mut body, true)?;
    Ok((CHAT_PATH, Value::Object(body)))
}

/// `/api/embed` -> `/v1/embeddings`: `input` is a string or a list of strings in both.
pub fn embed(request: &mut Value, instance: &str) -> Result<Value, RequestError> {
    let input = match request.get_mut("input").map(Value::take) {
        Some(input @ (Value::String(_) | Value::Array(_))) => input,
        _ => {
            return Err(RequestError::InvalidField {
                field: "input",
                expected: "a string or an array of strings",
            })
        }
    };
    let mut body = json!({"model": instance, "input": input});
    if let Some(dimensions) = request.get("dimensions").filter(|d| d.is_u64()) {
        body["dimensions"] = dimensions.clone();
    }
    Ok(body)
}

/// The older `/api/embeddings` (`prompt` -> one `embedding`) -> `/v1/embeddings`.
pub fn embeddings(request: &Value, instance: &str) -> Result<Value, RequestError> {
    let prompt = optional_str(request, "prompt")?.unwrap_or_default();
    Ok(json!({"model": instance, "input": prompt}))
}

fn base(instance: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(instance.to_owned()));
    body.insert("stream".into(), Value::Bool(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    body
}

fn optional_str<'a>(
    request: &'a Value,
    field: &'static str,
) -> Result<Option<&'a str>, RequestError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RequestError::InvalidField {
            field,
            expected: "a string",
        }),
    }
}

/// `options`, `format` and (for chat) `think`.
fn apply_common(
    request: &Value,
    body: &mut Map<String, Value>,
    chat: bool,
) -> Result<(), RequestError> {
    match request.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(options)) => apply_options(options, body),
        Some(_) => {
            return Err(RequestError::InvalidField {
                field: "options",
                expected: "an object",
            })
        }
    }
    if let Some(format) = response_format(request.get("format"))? {
        body.insert("response_format".into(), format);
    }
    if chat {
        apply_think(request.get("think"), body);
    }
    Ok(())
}

/// Sampling options whose OpenAI (or llama-server extension) name is Ollama's own.
const SAME_NAME_OPTIONS: [&str; 13] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
];

/// Maps Ollama's per-request model options. Load-time options (`num_ctx`, `num_gpu`,
/// `num_thread`, ...) are the instance's configuration in Corral and are not per request.
fn apply_options(options: &Map<String, Value>, body: &mut Map<String, Value>) {
    for name in SAME_NAME_OPTIONS {
        if let Some(value) = options.get(name).filter(|value| !value.is_null()) {
            body.insert(name.into(), value.clone());
        }
    }
    // Ollama's -1 (infinite) and -2 (fill the context) have no OpenAI spelling: leave the limit
    // to the backend.
    if let Some(limit) = options
        .get("num_predict")
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
    {
        body.insert("max_tokens".into(), Value::from(limit));
    }
    match options.get("stop") {
        Some(Value::String(stop)) => {
            body.insert("stop".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            body.insert("stop".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
}

/// `format: "json"` -> JSON mode; a schema object -> structured output.
fn response_format(format: Option<&Value>) -> Result<Option<Value>, RequestError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(json!({"type": "json_object"}))),
        Some(schema @ Value::Object(_)) => Ok(Some(json!({
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema, "strict": true},
        }))),
        Some(_) => Err(RequestError::InvalidFormat),
    }
}

/// `think: bool` switches the chat template's thinking (llama-server and vLLM read
/// `chat_template_kwargs.enable_thinking`); `think: "high"|"medium"|"low"` is a reasoning effort.
fn apply_think(think: Option<&Value>, body: &mut Map<String, Value>) {
    match think {
        Some(Value::Bool(enabled)) => {
            body.insert(
                "chat_template_kwargs".into(),
                json!({"enable_thinking": enabled}),
            );
        }
        Some(Value::String(effort)) => {
            body.insert(
                "chat_template_kwargs".into(),
                json!({"enable_thinking": true}),
            );
            body.insert("reasoning_effort".into(), Value::String(effort.clone()));
        }
        _ => {}
    }
}

/// Ollama messages -> OpenAI messages. Tool calls get ids (Ollama has none) and a `tool` reply
/// is linked to the latest call of the function it names. Texts and images move from `messages`
/// into the result rather than being copied.
fn messages_to_openai(messages: Vec<Value>) -> Result<Vec<Value>, RequestError> {
    let mut call_ids: Vec<(String, String)> = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (index, mut message) in messages.into_iter().enumerate() {
        let invalid = |reason| RequestError::InvalidMessage { index, reason };
        let role = match message.get_mut("role").map(Value::take) {
            Some(Value::String(role)) => role,
            _ => return Err(invalid("role is required")),
        };
        let content = match message.get_mut("content").map(Value::take) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(content)) => content,
            Some(_) => return Err(invalid("content must be a string")),
        };
        let images: Vec<String> = match message.get_mut("images").map(Value::take) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(images)) => images
                .into_iter()
                .map(|image| match image {
                    Value::String(image) => Ok(image),
                    _ => Err(invalid("images must be strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("images must be an array")),
        };
        let is_tool = role == "tool";
        let mut converted = Map::new();
        converted.insert("role".into(), Value::String(role));
        if images.is_empty() {
            converted.insert("content".into(), Value::String(content));
        } else {
            let mut parts = Vec::with_capacity(images.len() + 1);
            if !content.is_empty() {
                parts.push(json!({"type": "text", "text": content}));
            }
            for image in images {
                parts.push(json!({"type": "image_url", "image_url": {"url": image_url(image)}}));
            }
            converted.insert("content".into(), Value::Array(parts));
        }
        if let Some(Value::String(thinking)) = message.get_mut("thinking").map(Value::take) {
            if !thinking.is_empty() {
                converted.insert("reasoning_content".into(), Value::String(thinking));
            }
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            let calls = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let function = &call["function"];
                    let name = function["name"].as_str().unwrap_or_default().to_owned();
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("call_{index}_{i}"));
                    call_ids.push((name.clone(), id.clone()));
                    let arguments = match &function["arguments"] {
                        Value::String(s) => s.clone(),
                        Value::Null => "{}".to_owned(),
                        other => other.to_string(),
                    };
                    json!({"id": id, "type": "function",
                           "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            converted.insert("tool_calls".into(), Value::Array(calls));
        }
        if is_tool {
            let id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| {
                    let name = message.get("tool_name").and_then(Value::as_str)?;
                    call_ids
                        .iter()
                        .rev()
                        .find(|(called, _)| called == name)
                        .map(|(_, id)| id.clone())
                });
            if let Some(id) = id {
                converted.insert("tool_call_id".into(), Value::String(id));
            }
        }
        out.push(Value::Object(converted));
    }
    Ok(out)
}

/// Ollama sends bare base64; OpenAI wants a data URL with the image's type, read from the
/// first bytes' base64 signature.
fn image_url(image: String) -> String {
    if image.starts_with("data:") {
        return image;
    }
    let mime = if image.starts_with("iVBOR") {
        "image/png"
    } else if image.starts_with("R0lGOD") {
        "image/gif"
    } else if image.starts_with("UklGR") {
        "image/webp"
    } else {
        "image/jpeg"
    };
    format!("data:{mime};base64,{image}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_tag_is_dropped_but_other_tags_are_kept() {
        assert_eq!(instance_name("qwen:latest"), "qwen");
        assert_eq!(instance_name("qwen"), "qwen");
        assert_eq!(instance_name("qwen:7b"), "qwen:7b");
        assert_eq!(instance_name("a:b:latest"), "a:b:latest");
    }

    #[test]
    fn stream_is_the_default_and_keep_alive_zero_unloads() {
        assert!(wants_stream(&json!({})));
        assert!(!wants_stream(&json!({"stream": false})));
        for unload in [json!(0), json!("0"), json!("0s"), json!("0m")] {
            assert!(wants_unload(&json!({ "keep_alive": unload })), "{unload}");
        }
        for keep in [json!(-1), json!("5m"), json!(null)] {
            assert!(!wants_unload(&json!({ "keep_alive": keep })), "{keep}");
        }
    }

    #[test]
    fn chat_maps_options_format_and_think_and_always_streams_with_usage() {
        let request = json!({
            "model": "tiny:latest",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": false,
            "format": "json",
            "think": true,
            "options": {
                "temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7,
                "num_predict": 12, "stop": ["\n\n"], "repeat_penalty": 1.1,
                "presence_penalty": 0.5, "frequency_penalty": 0.25, "num_ctx": 4096
            }
        });
        let body = chat(&mut request.clone(), "tiny").unwrap();
        assert_eq!(body["model"], "tiny");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["top_k"], 40);
        assert_eq!(body["seed"], 7);
        assert_eq!(body["max_tokens"], 12);
        assert_eq!(body["stop"], json!(["\n\n"]));
        assert_eq!(body["repeat_penalty"], 1.1);
        assert_eq!(body["presence_penalty"], 0.5);
        assert_eq!(body["frequency_penalty"], 0.25);
        assert!(
            body.get("num_ctx").is_none(),
            "load-time option leaked: {body}"
        );
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        assert_eq!(body["chat_template_kwargs"]["enable_thinking"], true);
    }

    #[test]
    fn schema_format_becomes_structured_output_and_bad_format_is_refused() {
        let schema = json!({"type": "object", "properties": {"age": {"type": "integer"}}});
        let body = chat(&mut json!({"messages": [], "format": schema}), "m").unwrap();
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["schema"], schema);
        assert_eq!(
            chat(&mut json!({"messages": [], "format": "yaml"}), "m"),
            Err(RequestError::InvalidFormat)
        );
    }

    #[test]
    fn unlimited_num_predict_leaves_max_tokens_to_the_backend() {
        let body = chat(
            &mut json!({"messages": [], "options": {"num_predict": -1}}),
            "m",
        )
        .unwrap();
        assert!(body.get("max_tokens").is_none());
    }

    #[test]
    fn images_become_data_url_parts_after_the_text() {
        let request = json!({"messages": [
            {"role": "user", "content": "what is this?", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]}
        ]});
        let body = chat(&mut request.clone(), "m").unwrap();
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            ])
        );
    }

    #[test]
    fn tool_calls_get_ids_string_arguments_and_tool_replies_are_linked() {
        let request = json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ]},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
        ], "tools": [{"type": "function", "function": {"name": "get_weather"}}]});
        let body = chat(&mut request.clone(), "m").unwrap();
        let call = &body["messages"][1]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Paris"}));
        assert_eq!(body["messages"][2]["tool_call_id"], call["id"]);
        assert_eq!(body["tools"], request["tools"]);
    }

    #[test]
    fn message_without_role_is_refused_with_its_index() {
        let error = chat(
            &mut json!({"messages": [{"role": "user"}, {"content": "x"}]}),
            "m",
        );
        assert_eq!(
            error,
            Err(RequestError::InvalidMessage {
                index: 1,
                reason: "role is required"
            })
        );
    }

    #[test]
    fn templated_generate_is_a_one_turn_chat_with_the_system_prompt() {
        let request = json!({"prompt": "why?", "system": "be brief", "images": ["R0lGODlh"],
                             "options": {"temperature": 0}});
        let (path, body) = generate(&mut request.clone(), "m").unwrap();
        assert_eq!(path, CHAT_PATH);
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(body["messages"][1]["role"], "user");
        assert_eq!(body["messages"][1]["content"][0]["text"], "why?");
        assert_eq!(
            body["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/gif;base64,R0lGODlh"
        );
        assert_eq!(body["temperature"], 0);
    }

    #[test]
    fn raw_and_suffix_generate_go_to_completions_untouched() {
        let (path, body) = generate(
            &mut json!({"prompt": "[INST] hi [/INST]", "raw": true}),
            "m",
        )
        .unwrap();
        assert_eq!(path, COMPLETIONS_PATH);
        assert_eq!(body["prompt"], "[INST] hi [/INST]");
        assert!(body.get("messages").is_none());
        let (path, body) =
            generate(&mut json!({"prompt": "def f(", "suffix": "return x"}), "m").unwrap();
        assert_eq!(path, COMPLETIONS_PATH);
        assert_eq!(body["suffix"], "return x");
    }

    #[test]
    fn embed_keeps_input_lists_and_legacy_embeddings_uses_the_prompt() {
        let body = embed(&mut json!({"input": ["a", "b"], "dimensions": 8}), "e").unwrap();
        assert_eq!(
            body,
            json!({"model": "e", "input": ["a", "b"], "dimensions": 8})
        );
        assert!(embed(&mut json!({"input": 3}), "e").is_err());
        let body = embeddings(&json!({"prompt": "a"}), "e").unwrap();
        assert_eq!(body, json!({"model": "e", "input": "a"}));
    }
}
