//! The Ollama API over a real listener: with `tests/fixtures/fake_openai_backend.py` standing in
//! for the backend's OpenAI endpoints, and once against the real llama-server with a tiny model.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::binary::required_file;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use corral::config::{BackendCommand, Config};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn fake_openai_config(dir: &Path) -> Config {
    let mut config = test_config(dir);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_openai_backend.py");
    config.backends.llama_cpp = BackendCommand {
        command: "python3".into(),
        args: vec![script.display().to_string()],
        environment: BTreeMap::new(),
    };
    config
}

/// An engine with one ready instance `fake` served by the fake OpenAI backend.
async fn engine_with_fake(config: Config) -> Engine {
    let engine = Engine::start(config).await;
    let management = engine
        .client
        .post(engine.url("/api/v1/instances/fake"))
        .bearer_auth(MANAGEMENT_KEY)
        .json(&llama(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(
        management.status(),
        201,
        "{}",
        management.text().await.unwrap()
    );
    wait_ready_without_key(&engine, "fake").await;
    engine
}

/// Waits through the registry, so that it works with management auth on too.
async fn wait_ready_without_key(engine: &Engine, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = serde_json::to_value(engine.registry.get(name).unwrap()).unwrap();
        if view["health"] == "ready" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became ready: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the backend last received: (path, body).
async fn last_request(engine: &Engine) -> (String, Value) {
    let last: Value = engine
        .get("/api/v1/instances/fake/proxy/last-request")
        .await
        .json()
        .await
        .unwrap();
    (
        last["path"].as_str().unwrap().to_owned(),
        last["body"].clone(),
    )
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

async fn assert_ollama_error(response: reqwest::Response, status: u16) -> String {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(actual, status, "{body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error shape: {body}"));
    assert!(!message.is_empty());
    message.to_owned()
}

#[tokio::test]
async fn chat_streams_ndjson_by_default_line_by_line_as_the_backend_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    let response = engine
        .post_json(
            "/api/chat",
            &json!({"model": "fake:latest", "messages": [{"role": "user", "content": "WAIT please"}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    // The backend holds the rest of its answer until released: the first token must get
    // through on its own.
    let first_line = tokio::time::timeout(Duration::from_secs(30), async {
        while !text.contains('\n') {
            let chunk = body.next().await.expect("stream ended early").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text.clone()
    })
    .await
    .expect("the first token was held back");
    let first = &parse_lines(&first_line)[0];
    assert_eq!(first["model"], "fake:latest");
    assert_eq!(first["done"], false);
    assert_eq!(
        first["message"],
        json!({"role": "assistant", "content": "Hello"})
    );

    let released = engine.post("/api/v1/instances/fake/proxy/release").await;
    assert_eq!(released.status(), 200);
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let lines = parse_lines(&text);
    let content: String = lines
        .iter()
        .map(|line| line["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, "Hello from fake");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 7);
    assert_eq!(last["eval_count"], 3);
    assert_eq!(last["prompt_eval_duration"], 1_500_000);
    assert_eq!(last["eval_duration"], 2_500_000);
    assert!(last["total_duration"].as_u64().unwrap() >= 4_000_000);
    assert_eq!(lines.iter().filter(|l| l["done"] == true).count(), 1);

    // What reached the backend: the instance's name, streaming with usage.
    let (path, sent) = last_request(&engine).await;
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(sent["model"], "fake");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    engine.stop().await;
}

#[tokio::test]
async fn chat_with_stream_false_answers_one_object_and_maps_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    let response = engine
        .post_json(
            "/api/chat",
            &json!({
                "model": "fake",
                "stream": false,
                "format": "json",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi", "images": ["iVBORw0KGgo="]}
                ],
                "options": {"temperature": 0.5, "num_predict": 9, "seed": 3, "stop": ["END"]}
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["model"], "fake");
    assert_eq!(answer["done"], true);
    assert_eq!(answer["done_reason"], "stop");
    assert_eq!(
        answer["message"],
        json!({"role": "assistant", "content": "Hello from fake"})
    );
    assert_eq!(answer["eval_count"], 3);

    let (_, sent) = last_request(&engine).await;
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["max_tokens"], 9);
    assert_eq!(sent["seed"], 3);
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        sent["messages"][1]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    engine.stop().await;
}

#[tokio::test]
async fn generate_is_a_chat_unless_raw_which_goes_to_completions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;

    let answer: Value = engine
        .post_json(
            "/api/generate",
            &json!({"model": "fake", "prompt": "why?", "system": "be brief", "stream": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"], "Hello from fake");
    assert_eq!(answer["done"], true);
    let (path, sent) = last_request(&engine).await;
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}])
    );

    let streamed = engine
        .post_json(
            "/api/generate",
            &json!({"model": "fake", "prompt": "[INST] why? [/INST]", "raw": true}),
        )
        .await
        .text()
        .await
        .unwrap();
    let lines = parse_lines(&streamed);
    let response: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(response, "Hello from fake");
    assert_eq!(lines.last().unwrap()["done"], true);
    let (path, sent) = last_request(&engine).await;
    assert_eq!(path, "/v1/completions");
    assert_eq!(sent["prompt"], "[INST] why? [/INST]");
    engine.stop().await;
}

#[tokio::test]
async fn embed_returns_vectors_in_input_order_and_legacy_embeddings_one_vector() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    let answer: Value = engine
        .post_json(
            "/api/embed",
            &json!({"model": "fake:latest", "input": ["a", "bbb"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["model"], "fake:latest");
    // The backend listed them in reverse: the answer is in input order.
    assert_eq!(answer["embeddings"], json!([[1, 0, 0.5], [3, 1, 0.5]]));
    assert_eq!(answer["prompt_eval_count"], 4);
    assert!(answer["total_duration"].as_u64().is_some());

    let legacy: Value = engine
        .post_json(
            "/api/embeddings",
            &json!({"model": "fake", "prompt": "abcd"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(legacy, json!({"embedding": [4, 0, 0.5]}));
    engine.stop().await;
}

#[tokio::test]
async fn tags_list_every_instance_ps_only_running_ones_and_show_describes_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf");
    std::fs::write(&model, vec![0u8; 1234]).unwrap();
    let engine = Engine::start(fake_openai_config(dir.path())).await;
    engine
        .create(
            "chat",
            json!({"backend_type": "llama_cpp",
                   "backend_options": {"model": model.display().to_string(), "ctx_size": 2048}}),
        )
        .await;
    engine
        .create(
            "sleepy",
            // Relative: a path the backend resolves, so the create does not check it.
            llama(json!({"on_demand_start": false,
                         "backend_options": {"model": "missing/sleepy.gguf"}})),
        )
        .await;
    assert_eq!(
        engine.post("/api/v1/instances/sleepy/stop").await.status(),
        200
    );

    let version: Value = engine.get("/api/version").await.json().await.unwrap();
    assert!(version["version"].as_str().is_some_and(|v| !v.is_empty()));

    let tags: Value = engine.get("/api/tags").await.json().await.unwrap();
    let models = tags["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat", "sleepy"]);
    let chat = &models[0];
    assert_eq!(chat["model"], "chat");
    assert_eq!(chat["size"], 1234);
    assert_eq!(chat["digest"].as_str().unwrap().len(), 64);
    assert!(chrono::DateTime::parse_from_rfc3339(chat["modified_at"].as_str().unwrap()).is_ok());
    assert_eq!(chat["details"]["format"], "gguf");
    assert_eq!(chat["details"]["parameter_size"], "0.5B");
    assert_eq!(chat["details"]["quantization_level"], "Q4_K_M");
    assert_eq!(models[1]["size"], 0, "the model file does not exist");

    let ps: Value = engine.get("/api/ps").await.json().await.unwrap();
    let running = ps["models"].as_array().unwrap();
    assert_eq!(running.len(), 1, "{ps}");
    assert_eq!(running[0]["name"], "chat");
    assert_eq!(running[0]["context_length"], 2048);
    assert!(
        chrono::DateTime::parse_from_rfc3339(running[0]["expires_at"].as_str().unwrap()).is_ok()
    );
    assert!(running[0]["size_vram"].is_u64());

    let show: Value = engine
        .post_json("/api/show", &json!({"model": "chat:latest"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(show["details"], chat["details"]);
    assert!(show["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("completion")));
    assert!(show["modelfile"]
        .as_str()
        .unwrap()
        .contains(&model.display().to_string()));

    let missing = engine
        .post_json("/api/show", &json!({"model": "nope"}))
        .await;
    let message = assert_ollama_error(missing, 404).await;
    assert!(message.contains("nope"), "{message}");
    engine.stop().await;
}

#[tokio::test]
async fn errors_come_back_in_ollamas_shape_with_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    let chat = |model: &str, content: &str| json!({"model": model, "messages": [{"role": "user", "content": content}]});
    let unknown = engine.post_json("/api/chat", &chat("ghost", "hi")).await;
    assert_ollama_error(unknown, 404).await;

    let failed = engine
        .post_json("/api/chat", &chat("fake", "FAIL now"))
        .await;
    let message = assert_ollama_error(failed, 500).await;
    assert_eq!(message, "backend exploded");

    let no_model = engine
        .post_json("/api/generate", &json!({"prompt": "x"}))
        .await;
    assert_ollama_error(no_model, 400).await;
    let bad_format = engine
        .post_json(
            "/api/chat",
            &json!({"model": "fake", "format": 3, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_ollama_error(bad_format, 400).await;
    let not_json = engine
        .client
        .post(engine.url("/api/chat"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_ollama_error(not_json, 400).await;

    engine
        .create("off", llama(json!({"on_demand_start": false})))
        .await;
    assert_eq!(
        engine.post("/api/v1/instances/off/stop").await.status(),
        200
    );
    let stopped = engine.post_json("/api/chat", &chat("off", "hi")).await;
    assert_ollama_error(stopped, 503).await;
    engine.stop().await;
}

#[tokio::test]
async fn empty_chat_loads_the_instance_and_keep_alive_zero_unloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    let unloaded: Value = engine
        .post_json(
            "/api/chat",
            &json!({"model": "fake", "messages": [], "keep_alive": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unloaded["done_reason"], "unload");
    assert_eq!(engine.instance("fake").await["status"], "stopped");

    let loaded: Value = engine
        .post_json("/api/generate", &json!({"model": "fake"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(loaded["done_reason"], "load");
    assert_eq!(loaded["response"], "");
    assert_eq!(engine.instance("fake").await["status"], "running");
    engine.stop().await;
}

#[tokio::test]
async fn an_empty_prompt_does_not_start_an_instance_that_does_not_start_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    engine
        .create("off", llama(json!({"on_demand_start": false})))
        .await;
    assert_eq!(
        engine.post("/api/v1/instances/off/stop").await.status(),
        200
    );
    for (path, body) in [
        ("/api/generate", json!({"model": "off"})),
        ("/api/chat", json!({"model": "off", "messages": []})),
    ] {
        let refused = engine.post_json(path, &body).await;
        let message = assert_ollama_error(refused, 503).await;
        assert!(message.contains("on_demand_start"), "{path}: {message}");
    }
    assert_eq!(engine.instance("off").await["status"], "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn keep_alive_zero_unloads_without_changing_what_the_definition_says() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    let unload = json!({"model": "fake", "messages": [], "keep_alive": 0});
    let answer = engine.post_json("/api/chat", &unload).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(engine.instance("fake").await["status"], "stopped");
    let definition: Value =
        serde_json::from_slice(&std::fs::read(engine.definition_file("fake")).unwrap()).unwrap();
    assert_eq!(
        definition["status"], "running",
        "an unload is no stop by the owner"
    );

    // The next engine on the same data brings the instance back as its definition says.
    let config = (*engine.config).clone();
    engine.stop().await;
    let engine = Engine::start(config).await;
    wait_ready_without_key(&engine, "fake").await;

    // A stop through the API is the owner's: the definition says stopped from then on.
    assert_eq!(
        engine.post("/api/v1/instances/fake/stop").await.status(),
        200
    );
    let definition: Value =
        serde_json::from_slice(&std::fs::read(engine.definition_file("fake")).unwrap()).unwrap();
    assert_eq!(definition["status"], "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn a_client_cannot_unload_an_instance_that_does_not_start_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(fake_openai_config(dir.path())).await;
    engine
        .create("pinned", llama(json!({"on_demand_start": false})))
        .await;
    wait_ready_without_key(&engine, "pinned").await;
    let unload = json!({"model": "pinned", "prompt": "", "keep_alive": 0});
    let refused = engine.post_json("/api/generate", &unload).await;
    let message = assert_ollama_error(refused, 403).await;
    assert!(message.contains("on_demand_start"), "{message}");
    assert_eq!(engine.instance("pinned").await["status"], "running");
    engine.stop().await;
}

#[tokio::test]
async fn ollama_routes_take_inference_or_management_keys_and_api_v1_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_fake(with_auth(fake_openai_config(dir.path()))).await;
    let tags = |key: Option<&str>| {
        let mut request = engine.client.get(engine.url("/api/tags"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(tags(None).await.unwrap().status(), 401);
    assert_eq!(tags(Some("sk-wrong")).await.unwrap().status(), 401);
    assert_eq!(tags(Some(INFERENCE_KEY)).await.unwrap().status(), 200);
    assert_eq!(tags(Some(MANAGEMENT_KEY)).await.unwrap().status(), 200);
    let chat = engine
        .client
        .post(engine.url("/api/chat"))
        .bearer_auth(INFERENCE_KEY)
        .json(&json!({"model": "fake", "stream": false,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let management_with_inference_key = engine
        .client
        .get(engine.url("/api/v1/instances"))
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(management_with_inference_key.status(), 401);
    engine.stop().await;
}

/// Chat (streamed and whole), generate, tags and embed against a real llama-server.
#[tokio::test]
async fn real_llama_server_answers_ollama_chat_generate_tags_and_embed() {
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.backends.llama_cpp = BackendCommand {
        command: llama_server.display().to_string(),
        args: Vec::new(),
        environment: BTreeMap::new(),
    };
    let engine = Engine::start(config).await;
    let model = model.display().to_string();
    engine
        .create(
            "tiny",
            json!({"backend_type": "llama_cpp",
                   "backend_options": {"model": model, "ctx_size": 512}}),
        )
        .await;
    engine
        .create(
            "tiny-embed",
            json!({"backend_type": "llama_cpp",
                   "backend_options": {"model": model, "ctx_size": 512,
                                       "embeddings": true, "pooling": "mean"}}),
        )
        .await;
    engine.wait_ready("tiny").await;
    engine.wait_ready("tiny-embed").await;

    let tags: Value = engine.get("/api/tags").await.json().await.unwrap();
    let tiny = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tiny")
        .unwrap_or_else(|| panic!("{tags}"));
    assert_eq!(
        tiny["size"].as_u64().unwrap(),
        std::fs::metadata(&model).unwrap().len()
    );

    let started = Instant::now();
    let streamed = engine
        .post_json(
            "/api/chat",
            &json!({"model": "tiny:latest", "messages": [{"role": "user", "content": "Hello"}],
                    "options": {"num_predict": 8, "temperature": 0, "seed": 1}}),
        )
        .await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()["content-type"], "application/x-ndjson");
    let lines = parse_lines(&streamed.text().await.unwrap());
    assert!(lines.len() >= 2, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 8);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    assert!(last["eval_duration"].as_u64().unwrap() > 0);
    assert!(
        last["total_duration"].as_u64().unwrap() <= started.elapsed().as_nanos() as u64,
        "{last}"
    );
    let streamed_text: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert!(!streamed_text.is_empty());

    let whole: Value = engine
        .post_json(
            "/api/chat",
            &json!({"model": "tiny", "stream": false,
                    "messages": [{"role": "user", "content": "Hello"}],
                    "options": {"num_predict": 8, "temperature": 0, "seed": 1}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whole["done"], true, "{whole}");
    // Greedy decoding: the same answer, streamed or not.
    assert_eq!(whole["message"]["content"], streamed_text.as_str());
    assert_eq!(whole["eval_count"], 8);

    let generated: Value = engine
        .post_json(
            "/api/generate",
            &json!({"model": "tiny", "prompt": "Once upon a time", "stream": false,
                    "options": {"num_predict": 5, "temperature": 0}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(generated["done"], true, "{generated}");
    assert!(!generated["response"].as_str().unwrap().is_empty());
    assert_eq!(generated["eval_count"], 5);

    let embedded: Value = engine
        .post_json(
            "/api/embed",
            &json!({"model": "tiny-embed", "input": ["hello", "a longer sentence"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let vectors = embedded["embeddings"]
        .as_array()
        .unwrap_or_else(|| panic!("{embedded}"));
    assert_eq!(vectors.len(), 2);
    let first = vectors[0].as_array().unwrap();
    assert!(!first.is_empty());
    assert_eq!(first.len(), vectors[1].as_array().unwrap().len());
    assert_ne!(vectors[0], vectors[1]);
    assert!(embedded["prompt_eval_count"].as_u64().unwrap() > 0);
    engine.stop().await;
}
