//! `/v1`: routing by `model`, aliases and the model rewrite, OpenAI-shaped errors, on-demand
//! start, idle stop, LRU eviction, counters and auth — against the fake backend — and, at the
//! end, the same paths against a real llama-server (`CORRAL_LLAMA_SERVER`, `CORRAL_TEST_MODEL`;
//! missing, those tests fail: run them through scripts/test.sh).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Asserts an OpenAI-shaped error and returns its message.
async fn assert_openai_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(actual, status, "status of {body}");
    assert_eq!(body["error"]["code"], code, "code of {body}");
    assert!(body["error"]["type"].is_string(), "type of {body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// A short chat: `max_tokens` bounds it even where context shift lets a generation run on.
async fn chat(engine: &Engine, model: &str) -> reqwest::Response {
    engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": model, "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
}

/// What the fake backend received, from its echo.
async fn echoed_body(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    serde_json::from_str(echo["body"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn models_lists_instances_and_aliases_and_each_backend_gets_the_model_name_it_expects() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.server.allowed_origins = vec!["*".into()];
    let engine = Engine::start(config).await;
    engine
        .create("b-llama", llama(json!({"aliases": ["gpt-x", "default"]})))
        .await;
    engine
        .create(
            "a-vllm",
            json!({"backend_type": "vllm",
                   "backend_options": {"model": "org/model", "served_model_name": "served"}}),
        )
        .await;
    engine
        .create(
            "c-mlx",
            json!({"backend_type": "mlx_lm", "backend_options": {"model": "mlx-community/m"}}),
        )
        .await;

    let list: Value = engine.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-vllm", "b-llama", "c-mlx", "default", "gpt-x"]);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "corral");
    assert!(list["data"][0]["created"].as_i64().unwrap() > 0);

    for name in ["a-vllm", "b-llama", "c-mlx"] {
        engine.wait_ready(name).await;
    }
    let by_alias = chat(&engine, "gpt-x").await;
    assert_eq!(echoed_body(by_alias).await["model"], "gpt-x");
    assert_eq!(
        echoed_body(chat(&engine, "a-vllm").await).await["model"],
        "served"
    );
    assert_eq!(
        echoed_body(chat(&engine, "c-mlx").await).await["model"],
        "mlx-community/m"
    );

    // The path is kept, and the backend's CORS headers are replaced by Corral's.
    let response = engine
        .client
        .post(engine.url("/v1/messages/count_tokens"))
        .header("Origin", "https://app.example")
        .json(&json!({"model": "default", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(response
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/v1/messages/count_tokens");

    // Aliases are part of the definition, and unique.
    assert_eq!(
        engine.instance("b-llama").await["options"]["aliases"],
        json!(["gpt-x", "default"])
    );
    let saved = std::fs::read_to_string(engine.definition_file("b-llama")).unwrap();
    assert!(saved.contains("gpt-x"), "{saved}");
    let taken = engine
        .post_json("/api/v1/instances/d", &llama(json!({"aliases": ["gpt-x"]})))
        .await;
    assert_error(taken, 409, "alias_taken").await;
    let name_as_alias = engine
        .post_json("/api/v1/instances/e", &llama(json!({"aliases": ["c-mlx"]})))
        .await;
    assert_error(name_as_alias, 409, "alias_taken").await;
    engine.stop().await;
}

#[tokio::test]
async fn bad_requests_and_unknown_or_stopped_models_answer_openai_errors() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let unknown = chat(&engine, "nope").await;
    let message = assert_openai_error(unknown, 404, "model_not_found").await;
    assert!(message.contains("nope"), "{message}");

    let no_model = engine
        .post_json("/v1/chat/completions", &json!({"messages": []}))
        .await;
    assert_openai_error(no_model, 400, "model_required").await;
    let not_json = engine
        .client
        .post(engine.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_openai_error(not_json, 400, "invalid_request_body").await;
    let too_large = engine
        .client
        .post(engine.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_openai_error(too_large, 413, "request_too_large").await;

    engine
        .create("manual", llama(json!({"on_demand_start": false})))
        .await;
    engine.post("/api/v1/instances/manual/stop").await;
    let stopped = chat(&engine, "manual").await;
    let message = assert_openai_error(stopped, 503, "instance_not_running").await;
    assert_eq!(message, "Instance is not running");
    engine.stop().await;
}

#[tokio::test]
async fn a_backend_that_fails_to_start_answers_503_with_its_output_at_once() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("broken", llama(json!({}))).await;
    engine.post("/api/v1/instances/broken/stop").await;
    let update = engine
        .put_json(
            "/api/v1/instances/broken",
            &json!({"backend_type": "llama_cpp", "auto_restart": false,
                    "backend_options": {"model": fake_model("exit-at-start.gguf")}}),
        )
        .await;
    assert_eq!(update.status(), 200);

    let asked = Instant::now();
    let answers = futures_util::future::join_all((0..5).map(|_| chat(&engine, "broken"))).await;
    for answer in answers {
        let message = assert_openai_error(answer, 503, "instance_start_failed").await;
        assert!(message.contains("failed to load model"), "{message}");
    }
    // Well under the 60 s start timeout: the exit ends the wait.
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    let log = engine
        .get("/api/v1/instances/broken/logs")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(log.matches("failed to load model").count(), 1, "{log}");

    // A failed instance says why without being started again.
    let failed = engine
        .wait_for("broken", "failed", |i| i["status"] == "failed")
        .await;
    assert!(failed["error"].is_string(), "{failed}");
    assert_openai_error(chat(&engine, "broken").await, 503, "instance_failed").await;
    engine.stop().await;
}

#[tokio::test]
async fn requests_for_an_instance_still_starting_wait_until_it_is_ready() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let created = engine
        .create(
            "slow",
            json!({"backend_type": "llama_cpp",
                   "backend_options": {"model": fake_model("slow-start.gguf")}}),
        )
        .await;
    assert_eq!(created["health"], "starting");
    let answers = futures_util::future::join_all((0..10).map(|_| chat(&engine, "slow"))).await;
    for answer in answers {
        assert_eq!(answer.status(), 200);
    }
    engine.stop().await;
}

#[tokio::test]
async fn counters_track_requests_and_the_tokens_answers_and_streams_report() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("counted", llama(json!({}))).await;
    engine.wait_ready("counted").await;
    let fresh = engine.instance("counted").await;
    assert_eq!(fresh["requests"], 0);
    assert_eq!(fresh["tokens_prompt"], 0);

    let answer: Value = chat(&engine, "counted").await.json().await.unwrap();
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
    let stream = engine
        .post_json(
            "/v1/slow_stream",
            &json!({"model": "counted", "chunks": 3, "interval": 0.05}),
        )
        .await;
    let text = stream.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");

    let counted = engine
        .wait_for("counted", "counted", |i| {
            i["in_flight"] == 0 && i["requests"] == 2
        })
        .await;
    assert_eq!(counted["tokens_prompt"], 10, "{counted}");
    assert_eq!(counted["tokens_completion"], 14, "{counted}");
    assert!(counted["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(counted["last_request_at"].as_i64().unwrap() > 0);
    engine.stop().await;
}

/// One idle-timeout unit is a second here.
fn fast_idle_config(dir: &std::path::Path) -> corral::config::Config {
    let mut config = test_config(dir);
    config.instances.idle_timeout_unit = Duration::from_secs(1);
    config
}

#[tokio::test]
async fn an_idle_instance_stops_but_never_during_a_stream_and_starts_again_on_demand() {
    let dir = data_dir();
    let engine = Engine::start(fast_idle_config(dir.path())).await;
    engine
        .create("idle", llama(json!({"idle_timeout": 2})))
        .await;
    engine.wait_ready("idle").await;

    // A stream twice as long as the idle timeout keeps it running.
    let stream = engine
        .post_json(
            "/v1/slow_stream",
            &json!({"model": "idle", "chunks": 8, "interval": 0.5}),
        )
        .await;
    let mut body = stream.bytes_stream();
    let mut chunks = 0;
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
        chunks += 1;
        assert_eq!(engine.instance("idle").await["status"], "running");
    }
    assert!(chunks > 1);

    let started = Instant::now();
    engine
        .wait_for("idle", "stopped", |i| i["status"] == "stopped")
        .await;
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Stopped for idleness, it starts again for the next request.
    assert_eq!(chat(&engine, "idle").await.status(), 200);
    assert_eq!(engine.instance("idle").await["status"], "running");
    engine.stop().await;
}

#[tokio::test]
async fn health_probes_through_the_proxy_do_not_keep_an_instance_awake() {
    let dir = data_dir();
    let engine = Engine::start(fast_idle_config(dir.path())).await;
    engine
        .create("probed", llama(json!({"idle_timeout": 2})))
        .await;
    engine.wait_ready("probed").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        engine.get("/api/v1/instances/probed/proxy/health").await;
        if engine.instance("probed").await["status"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "health probes kept it running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn at_the_running_limit_the_least_recently_used_idle_instance_makes_room() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    let engine = Engine::start(config).await;
    // A long idle timeout that never fires here: eviction alone makes the room.
    engine
        .create("first", llama(json!({"idle_timeout": 60})))
        .await;
    engine.post("/api/v1/instances/first/stop").await;
    engine
        .create("second", llama(json!({"idle_timeout": 60})))
        .await;
    engine.wait_ready("second").await;

    assert_eq!(chat(&engine, "first").await.status(), 200);
    assert_eq!(engine.instance("first").await["status"], "running");
    assert_eq!(engine.instance("second").await["status"], "stopped");

    // A manual start evicts too.
    let start = engine.post("/api/v1/instances/second/start").await;
    assert_eq!(start.status(), 200);
    assert_eq!(engine.instance("first").await["status"], "stopped");

    // An instance without an idle timeout is evicted too (llamactl would not, so its running
    // limit with on-demand start fails under the defaults).
    engine.create("pinned", llama(json!({}))).await;
    assert_eq!(engine.instance("second").await["status"], "stopped");
    assert_eq!(chat(&engine, "second").await.status(), 200);
    assert_eq!(engine.instance("pinned").await["status"], "stopped");

    // An instance with a request in flight is never evicted: the request for another model
    // waits for the stream to end (tests/scheduler.rs has the refusal when it cannot wait).
    let stream = engine
        .post_json(
            "/v1/slow_stream",
            &json!({"model": "second", "chunks": 100, "interval": 0.1}),
        )
        .await;
    assert_eq!(stream.status(), 200);
    let waiting = engine.spawn_post_json(
        "/v1/chat/completions",
        json!({"model": "first", "messages": []}),
    );
    // Time for the request to reach its wait; the stream lasts 10 s, so it is still in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.instance("second").await["status"], "running");
    assert!(!waiting.is_finished(), "the request waits for the stream");
    // The client leaving ends the stream's request: room for `first`.
    drop(stream);
    assert_eq!(waiting.await.unwrap().status(), 200);
    assert_eq!(engine.instance("second").await["status"], "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn inference_routes_need_an_inference_or_management_key_when_auth_is_on() {
    let dir = data_dir();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    let missing = engine.get("/v1/models").await;
    assert_eq!(missing.status(), 401);
    let chat_without_key = engine
        .post_json("/v1/chat/completions", &json!({"model": "x"}))
        .await;
    assert_eq!(chat_without_key.status(), 401);
    for key in [INFERENCE_KEY, MANAGEMENT_KEY] {
        let ok = engine
            .client
            .get(engine.url("/v1/models"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{key}");
    }
    // The inference key does not open the management API.
    let management = engine
        .client
        .get(engine.url("/api/v1/instances"))
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(management.status(), 401);
    engine.stop().await;
}

// ---- Against the real llama-server ------------------------------------------------------------

/// A path `scripts/test.sh` provides, as a string for configs and JSON.
fn required_path(var: &str) -> String {
    common::binary::required_file(var).display().to_string()
}

async fn llama_engine(dir: &std::path::Path) -> Engine {
    let mut config = test_config(dir);
    config.backends.llama_cpp = corral::config::BackendCommand {
        command: required_path("CORRAL_LLAMA_SERVER"),
        args: Vec::new(),
        environment: Default::default(),
    };
    config.instances.stop_grace = Duration::from_secs(5);
    Engine::start(config).await
}

fn real_model(extra: Value) -> Value {
    let mut options = json!({"model": required_path("CORRAL_TEST_MODEL"), "ctx_size": 2048,
                             "gpu_layers": 0});
    for (key, value) in extra.as_object().unwrap() {
        options[key] = value.clone();
    }
    json!({"backend_type": "llama_cpp", "backend_options": options})
}

#[tokio::test]
async fn real_llama_server_chats_streams_and_frees_its_slot_when_the_client_leaves() {
    let dir = data_dir();
    let engine = llama_engine(dir.path()).await;
    engine
        // Context shift: a generation may outlast the model's 512-token context, so the long
        // one below runs for seconds instead of ending (in ~0.3 s) before the slot is looked at.
        .create(
            "tiny",
            real_model(json!({"slots": true, "context_shift": true})),
        )
        .await;
    engine.wait_ready("tiny").await;

    let answer: Value = chat(&engine, "tiny").await.json().await.unwrap();
    assert!(answer["choices"][0]["message"].is_object(), "{answer}");

    let stream = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "tiny", "stream": true, "max_tokens": 16,
                    "messages": [{"role": "user", "content": "count"}]}),
        )
        .await;
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    let mut chunks = 0;
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        chunks += 1;
    }
    assert!(chunks > 1, "one chunk: {text}");
    assert!(text.contains("[DONE]"), "{text}");
    let counted = engine
        .wait_for("tiny", "counted", |i| {
            i["requests"] == 2 && i["in_flight"] == 0
        })
        .await;
    assert!(
        counted["tokens_completion"].as_u64().unwrap() > 0,
        "{counted}"
    );

    // A generation that would run for a minute; the client leaves after the first tokens.
    let slots = || async {
        let slots: Value = engine
            .get("/api/v1/instances/tiny/proxy/slots")
            .await
            .json()
            .await
            .unwrap();
        slots
            .as_array()
            .unwrap()
            .iter()
            .any(|slot| slot["is_processing"] == true)
    };
    let long = engine
        .post_json(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "once upon a time", "stream": true,
                    "max_tokens": 100000, "ignore_eos": true}),
        )
        .await;
    let mut body = long.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert!(slots().await, "the slot is not busy while streaming");
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while slots().await {
        assert!(
            Instant::now() < deadline,
            "the slot stayed busy after the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine
        .wait_for("tiny", "idle", |i| i["in_flight"] == 0)
        .await;
    engine.stop().await;
}

#[tokio::test]
async fn real_llama_server_embeds_with_an_embedding_instance() {
    let dir = data_dir();
    let engine = llama_engine(dir.path()).await;
    engine
        .create(
            "embed",
            real_model(json!({"embeddings": true, "pooling": "mean"})),
        )
        .await;
    let answer = engine
        .post_json(
            "/v1/embeddings",
            &json!({"model": "embed", "input": ["hello", "world"]}),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{answer}");
    assert!(!data[0]["embedding"].as_array().unwrap().is_empty());
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_llama_server_starts_once_for_200_concurrent_requests() {
    let dir = data_dir();
    let engine = llama_engine(dir.path()).await;
    engine.create("cold", real_model(json!({}))).await;
    engine.post("/api/v1/instances/cold/stop").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let url = engine.url("/v1/chat/completions");
    let requests = (0..200).map(|_| {
        client
            .post(&url)
            .json(&json!({"model": "cold", "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    });
    let answers = futures_util::future::join_all(requests).await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200);
    }
    let log = engine
        .get("/api/v1/instances/cold/logs")
        .await
        .text()
        .await
        .unwrap();
    // One process since the stop: the create's start, then the on-demand one.
    let starts = log.matches("Instance cold started").count();
    assert_eq!(starts, 2, "{log}");
    let instance = engine.instance("cold").await;
    assert_eq!(instance["requests"], 200);
    engine.stop().await;
}
