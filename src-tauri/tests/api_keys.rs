//! Inference keys with a scope (`/api/v1/auth/keys`) over a real listener: every inference
//! route (OpenAI, Anthropic, Ollama, the per-instance proxy) holds a stored key to its
//! instances, on the fast path and the router alike; the keys survive a restart, expire and
//! are revoked; bad requests change nothing. With the fake backend here, and once against the
//! real llama-server (`a_scoped_key_chats_with_its_real_llama_server_only`).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::binary::required_file;
use common::*;
use corral::config::Config;
use serde_json::{json, Value};

/// A client that sends `key` with every request.
fn client_with(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An engine with auth on, whose own client carries the management key.
async fn engine(config: Config) -> Engine {
    let mut engine = Engine::start(with_auth(config)).await;
    engine.client = client_with(MANAGEMENT_KEY);
    engine
}

/// Makes a key and returns (its JSON, the plaintext key).
async fn make_key(engine: &Engine, body: &Value) -> (Value, String) {
    let response = engine.post_json("/api/v1/auth/keys", body).await;
    let status = response.status();
    let json: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{json}");
    let key = json["key"].as_str().unwrap().to_owned();
    (json, key)
}

/// `GET url` with `client`, as JSON.
async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn chat(client: &reqwest::Client, engine: &Engine, model: &str) -> reqwest::Response {
    client
        .post(engine.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_stored_key_reaches_only_its_instances_on_every_inference_route() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(test_config(dir.path())).await;
    engine
        .create(
            "a",
            llama(json!({"on_demand_start": true, "aliases": ["alias-a"]})),
        )
        .await;
    engine
        .create("b", llama(json!({"on_demand_start": true})))
        .await;
    // Created means started: stopped, both wait for a request to start them.
    for name in ["a", "b"] {
        engine.wait_ready(name).await;
        let stopped = engine.post(&format!("/api/v1/instances/{name}/stop")).await;
        assert_eq!(stopped.status(), 200);
    }
    let (made, key) = make_key(
        &engine,
        &json!({"name": "editor", "permission_mode": "per_instance", "instance_ids": ["a"]}),
    )
    .await;
    assert_eq!(made["permission_mode"], "per_instance");
    assert_eq!(made["instance_ids"], json!(["a"]));
    assert!(key.starts_with("sk-inference-") && key.len() == 77, "{key}");
    // The plaintext is shown once: the listing has its prefix only.
    let listed = engine.get("/api/v1/auth/keys").await.text().await.unwrap();
    assert!(!listed.contains(&key), "{listed}");
    assert!(listed.contains(&key[..29]), "{listed}");
    let keyed = client_with(&key);

    // The model list shows what the key may use; a model outside it is not found.
    let models: Value = get_json(&keyed, engine.url("/v1/models")).await;
    assert_eq!(model_ids(&models), ["a", "alias-a"]);
    let hidden = keyed.get(engine.url("/v1/models/b")).send().await.unwrap();
    assert_eq!(hidden.status(), 404);
    let all: Value = get_json(&client_with(INFERENCE_KEY), engine.url("/v1/models")).await;
    assert_eq!(model_ids(&all), ["a", "alias-a", "b"]);

    // OpenAI: refused before anything starts `b`.
    let denied = chat(&keyed, &engine, "b").await;
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["code"], "permission_denied", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("'b'"));
    assert_eq!(engine.instance("b").await["status"], "stopped");

    // Allowed: started on demand, then served again once ready (the fast path's turn).
    for round in 0..3 {
        let allowed = chat(&keyed, &engine, "alias-a").await;
        assert_eq!(allowed.status(), 200, "round {round}");
    }
    assert_eq!(engine.instance("a").await["status"], "running");
    // With `a` running, `b` is still refused (the fast path hands it to the router).
    engine.post("/api/v1/instances/b/start").await;
    engine.wait_ready("b").await;
    for _ in 0..2 {
        assert_eq!(chat(&keyed, &engine, "b").await.status(), 403);
    }

    // Anthropic's error object on /v1/messages.
    let messages = keyed
        .post(engine.url("/v1/messages"))
        .json(&json!({"model": "b", "max_tokens": 1, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(messages.status(), 403);
    let body: Value = messages.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");

    // Ollama: its listings are filtered, its requests refused in its shape.
    let tags: Value = get_json(&keyed, engine.url("/api/tags")).await;
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["name"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|name| name.starts_with("a")), "{tags}");
    assert!(!names.is_empty(), "{tags}");
    let ps: Value = get_json(&keyed, engine.url("/api/ps")).await;
    assert_eq!(ps["models"].as_array().unwrap().len(), 1, "{ps}");
    for (path, body) in [
        (
            "/api/chat",
            json!({"model": "b", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/api/show", json!({"model": "b"})),
        ("/api/generate", json!({"model": "b", "prompt": ""})),
    ] {
        let response = keyed
            .post(engine.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("'b'"), "{body}");
    }

    // The per-instance proxy: its own instance's, not another's.
    let own = keyed
        .get(engine.url("/api/v1/instances/a/proxy/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    let other = keyed
        .get(engine.url("/api/v1/instances/b/proxy/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"],
        "permission_denied"
    );

    // Never the management API: not the instances, not the keys themselves.
    for path in ["/api/v1/instances", "/api/v1/auth/keys", "/api/v1/config"] {
        let response = keyed.get(engine.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let widened = keyed
        .post(engine.url("/api/v1/auth/keys"))
        .json(&json!({"name": "mine", "permission_mode": "allow_all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(widened.status(), 401);

    // The activity log names the key.
    let activity: Value = engine
        .get("/api/v1/activity?instance=a")
        .await
        .json()
        .await
        .unwrap();
    let entries = activity["entries"].as_array().unwrap();
    assert!(entries.len() >= 3, "{activity}");
    assert!(
        entries.iter().all(|entry| entry["key"] == "editor"),
        "{activity}"
    );

    // Last use is noted.
    let id = made["id"].as_u64().unwrap();
    let shown: Value = engine
        .get(&format!("/api/v1/auth/keys/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(shown["last_used_at"].as_i64().unwrap() > 0, "{shown}");

    // Revoked: refused at once, on the fast path too.
    let revoked = engine.delete(&format!("/api/v1/auth/keys/{id}")).await;
    assert_eq!(revoked.status(), 204);
    assert_eq!(chat(&keyed, &engine, "a").await.status(), 401);
    let gone = engine.delete(&format!("/api/v1/auth/keys/{id}")).await;
    assert_error(gone, 404, "key_not_found").await;
    engine.stop().await;
}

#[tokio::test]
async fn keys_survive_a_restart_and_expire_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let first = engine(test_config(dir.path())).await;
    first.create("a", llama(json!({}))).await;
    let (made, key) = make_key(
        &first,
        &json!({"name": "ci", "permission_mode": "allow_all", "expires_at": 4_000_000_000i64}),
    )
    .await;
    let id = made["id"].as_u64().unwrap();
    first.stop().await;

    let engine = engine(test_config(dir.path())).await;
    let keyed = client_with(&key);
    // Checked against its stored hash on first use after the restart.
    let models = keyed.get(engine.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    let listed: Value = engine.get("/api/v1/auth/keys").await.json().await.unwrap();
    assert_eq!(listed[0]["name"], "ci");
    assert_eq!(listed[0]["expires_at"], 4_000_000_000i64);
    let permissions: Value = engine
        .get(&format!("/api/v1/auth/keys/{id}/permissions"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(permissions, json!([]));

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = engine
        .client
        .patch(engine.url(&format!("/api/v1/auth/keys/{id}")))
        .json(&json!({"expires_at": now}))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 200);
    assert_eq!(expired.json::<Value>().await.unwrap()["expired"], true);
    let refused = keyed.get(engine.url("/v1/models")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let renewed = engine
        .client
        .patch(engine.url(&format!("/api/v1/auth/keys/{id}")))
        .json(&json!({"expires_at": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let models = keyed.get(engine.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    engine.stop().await;
}

#[tokio::test]
async fn a_deleted_instance_leaves_the_scope_so_a_new_one_of_its_name_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(test_config(dir.path())).await;
    engine.create("a", llama(json!({}))).await;
    let (made, key) = make_key(
        &engine,
        &json!({"name": "k", "permission_mode": "per_instance", "instance_ids": ["a"]}),
    )
    .await;
    assert_eq!(engine.delete("/api/v1/instances/a").await.status(), 204);
    engine.create("a", llama(json!({}))).await;
    let keyed = client_with(&key);
    let models: Value = get_json(&keyed, engine.url("/v1/models")).await;
    assert_eq!(models["data"], json!([]));
    assert_eq!(chat(&keyed, &engine, "a").await.status(), 403);
    let id = made["id"].as_u64().unwrap();
    let permissions: Value = engine
        .get(&format!("/api/v1/auth/keys/{id}/permissions"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(permissions, json!([]));
    engine.stop().await;
}

#[tokio::test]
async fn bad_key_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(test_config(dir.path())).await;
    engine.create("a", llama(json!({}))).await;
    for (body, field) in [
        (json!({"name": "", "permission_mode": "allow_all"}), "name"),
        (
            json!({"name": "x".repeat(101), "permission_mode": "allow_all"}),
            "name",
        ),
        (
            json!({"name": "a\u{7}b", "permission_mode": "allow_all"}),
            "name",
        ),
        (
            json!({"name": "k", "permission_mode": "allow_all", "expires_at": -1}),
            "expires_at",
        ),
        (
            json!({"name": "k", "permission_mode": "allow_all", "expires_at": 1e15}),
            "expires_at",
        ),
        (
            json!({"name": "k", "permission_mode": "allow_all", "instance_ids": ["a"]}),
            "instance_ids",
        ),
        (
            json!({"name": "k", "permission_mode": "per_instance"}),
            "instance_ids",
        ),
    ] {
        let response = engine.post_json("/api/v1/auth/keys", &body).await;
        let error = assert_error(response, 400, "invalid_key_request").await;
        assert_eq!(error["field"], field, "{body}");
    }
    let unknown = engine
        .post_json(
            "/api/v1/auth/keys",
            &json!({"name": "k", "permission_mode": "per_instance", "instance_ids": ["nope"]}),
        )
        .await;
    let error = assert_error(unknown, 404, "instance_not_found").await;
    assert_eq!(error["field"], "instance_ids");
    for body in [
        json!({"name": "k"}),
        json!({"name": "k", "permission_mode": "everything"}),
        json!({"name": "k", "permission_mode": "allow_all", "admin": true}),
        json!({"name": "k", "permission_mode": "per_instance", "instance_ids": [1]}),
        json!({"name": "k", "permission_mode": "allow_all", "expires_at": 1.5}),
        json!(["k"]),
    ] {
        let response = engine.post_json("/api/v1/auth/keys", &body).await;
        assert_error(response, 400, "invalid_body").await;
    }
    assert_error(
        engine.get("/api/v1/auth/keys/abc").await,
        400,
        "invalid_key_id",
    )
    .await;
    assert_error(
        engine.get("/api/v1/auth/keys/7").await,
        404,
        "key_not_found",
    )
    .await;
    let listed: Value = engine.get("/api/v1/auth/keys").await.json().await.unwrap();
    assert_eq!(listed, json!([]));
    // An expiry already past makes a key expired from the start; a whole number written as a
    // float is a whole number.
    let (made, key) = make_key(
        &engine,
        &json!({"name": "late", "permission_mode": "allow_all", "expires_at": 1.0}),
    )
    .await;
    assert_eq!(made["expired"], true);
    let refused = client_with(&key)
        .get(engine.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        engine
            .delete(&format!("/api/v1/auth/keys/{}", made["id"]))
            .await
            .status(),
        204
    );
    // Without the management key, no route of the key API answers.
    let anonymous = reqwest::Client::new();
    let response = anonymous
        .post(engine.url("/api/v1/auth/keys"))
        .json(&json!({"name": "k", "permission_mode": "allow_all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let inference = client_with(INFERENCE_KEY)
        .get(engine.url("/api/v1/auth/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(inference.status(), 401);
    // A made-up key of the stored keys' shape is refused like any other.
    let made_up = format!("sk-inference-{}", "0".repeat(64));
    let response = client_with(&made_up)
        .get(engine.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    engine.stop().await;
}

/// The real llama-server: a key scoped to one of two instances chats with it and is refused
/// the other, and the answer's tokens and the key's name reach the activity log.
#[tokio::test]
async fn a_scoped_key_chats_with_its_real_llama_server_only() {
    let server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.backends.llama_cpp.command = server.display().to_string();
    config.backends.llama_cpp.args = Vec::new();
    let engine = engine(config).await;
    for name in ["allowed", "other"] {
        engine
            .create(
                name,
                json!({
                    "backend_type": "llama_cpp",
                    "on_demand_start": true,
                    // Its bodies are kept in the activity log, to check the answer reached it.
                    "capture_bodies": name == "allowed",
                    "backend_options": {"model": model.display().to_string(), "ctx_size": 256},
                }),
            )
            .await;
    }
    let (_, key) = make_key(
        &engine,
        &json!({"name": "real", "permission_mode": "per_instance", "instance_ids": ["allowed"]}),
    )
    .await;
    engine.wait_ready("other").await;
    assert_eq!(
        engine.post("/api/v1/instances/other/stop").await.status(),
        200
    );
    let keyed = client_with(&key);
    let answer = keyed
        .post(engine.url("/v1/chat/completions"))
        .json(&json!({
            "model": "allowed",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "hello"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert!(answer["choices"][0]["message"].is_object(), "{answer}");
    assert_eq!(chat(&keyed, &engine, "other").await.status(), 403);
    assert_eq!(engine.instance("other").await["status"], "stopped");
    let activity: Value = engine
        .get("/api/v1/activity?instance=allowed")
        .await
        .json()
        .await
        .unwrap();
    let entry = &activity["entries"][0];
    assert_eq!(entry["key"], "real", "{activity}");
    assert_eq!(entry["status"], 200, "{activity}");
    assert!(
        entry["completion_tokens"].as_u64().unwrap() > 0,
        "{activity}"
    );
    engine.stop().await;
}
