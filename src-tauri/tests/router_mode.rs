//! llama.cpp's router mode against the real llama-server: one instance serving the models of a
//! folder lists them, loads and unloads one through `/api/v1/llama-cpp/{name}/models...`,
//! starting itself when needed; `/v1/models` lists `instance/model` entries, `/v1` routes
//! `"model": "instance/model"` to that model, and a scoped key is held to the instance.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::binary::required_file;
use common::*;
use serde_json::{json, Value};

async fn status_of(engine: &Engine, model: &str) -> String {
    let list: Value = engine
        .get("/api/v1/llama-cpp/multi/models")
        .await
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["id"] == model)
        .map(|entry| entry["status"]["value"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{model} not in {list}"))
}

#[tokio::test]
async fn a_router_instance_serves_its_folder_by_instance_slash_model() {
    let server = required_file("CORRAL_LLAMA_SERVER").display().to_string();
    let model = required_file("CORRAL_TEST_MODEL");
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for name in ["alpha", "beta"] {
        std::fs::copy(&model, models.join(format!("{name}.gguf"))).unwrap();
    }
    let mut config = test_config(dir.path());
    config.backends.llama_cpp.command = server;
    config.backends.llama_cpp.args = Vec::new();
    let engine = Engine::start(config).await;
    engine
        .create(
            "multi",
            json!({"backend_type": "llama_cpp", "on_demand_start": true,
                   "backend_options": {"models_dir": models.display().to_string(), "ctx_size": 256}}),
        )
        .await;
    engine
        .create(
            "single",
            json!({"backend_type": "llama_cpp",
                   "backend_options": {"model": model.display().to_string(), "ctx_size": 256}}),
        )
        .await;
    engine.wait_ready("multi").await;
    // Stopped, the model routes start it again.
    assert_eq!(
        engine.post("/api/v1/instances/multi/stop").await.status(),
        200
    );

    assert_eq!(status_of(&engine, "alpha").await, "unloaded");
    assert_eq!(engine.instance("multi").await["status"], "running");
    let loaded = engine
        .post("/api/v1/llama-cpp/multi/models/alpha/load")
        .await;
    assert_eq!(loaded.status(), 200);
    assert_eq!(loaded.json::<Value>().await.unwrap()["success"], true);
    let mut waited = 0;
    while status_of(&engine, "alpha").await != "loaded" {
        waited += 1;
        assert!(waited < 600, "alpha never loaded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let listed: Value = engine.get("/v1/models").await.json().await.unwrap();
    let listed = model_ids(&listed);
    for id in ["multi", "multi/alpha", "multi/beta", "single"] {
        assert!(listed.contains(&id.to_owned()), "{id} in {listed:?}");
    }
    let answer = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "multi/beta", "max_tokens": 3,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["model"], "beta", "{answer}");
    assert_eq!(status_of(&engine, "beta").await, "loaded");

    let unloaded = engine
        .post("/api/v1/llama-cpp/multi/models/alpha/unload")
        .await;
    assert_eq!(unloaded.status(), 200);

    // Only router instances have these routes; `x/y` names no model elsewhere.
    assert_error(
        engine.get("/api/v1/llama-cpp/single/models").await,
        409,
        "not_router_mode",
    )
    .await;
    assert_error(
        engine.get("/api/v1/llama-cpp/nope/models").await,
        404,
        "instance_not_found",
    )
    .await;
    let elsewhere = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "single/beta", "messages": []}),
        )
        .await;
    assert_eq!(elsewhere.status(), 404);
    engine.stop().await;
}
