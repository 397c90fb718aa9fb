//! A web page must not reach Corral or its backends: what a browser page on this machine can
//! make Corral do, tried for real against an engine with the fake backend.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A client whose every request opens a new connection: the fast path only takes the first
/// requests of a connection (one it hands to hyper stays with hyper), so a reused connection
/// would test the router alone.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A raw POST with `content_type` (none when `None`), as a page's form or `fetch` sends it, on
/// a new connection.
async fn post_as(
    engine: &Engine,
    path: &str,
    content_type: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = fresh_connections()
        .post(engine.url(path))
        .body(body.to_string());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

/// The backend's key for `name`'s current start, as Corral wrote it for llama-server.
fn key_file_secret(engine: &Engine, name: &str) -> String {
    let path = engine.config.instances.run_dir.join(format!("{name}.key"));
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

fn port_of(view: &Value) -> u64 {
    view["options"]["backend_options"]["port"].as_u64().unwrap()
}

#[tokio::test]
async fn a_body_not_declared_as_json_is_refused_with_415_in_each_routes_own_shape() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let create = llama(json!({}));
    // A page's `text/plain` POST (no preflight) does not create anything ...
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let refused = post_as(&engine, "/api/v1/instances/csrf", content_type, &create).await;
        assert_error(refused, 415, "unsupported_media_type").await;
    }
    assert_eq!(engine.get("/api/v1/instances/csrf").await.status(), 404);
    let parse = json!({"command": "llama-server -m x.gguf"});
    let refused = post_as(
        &engine,
        "/api/v1/backends/llama-cpp/parse-command",
        Some("text/plain"),
        &parse,
    )
    .await;
    assert_error(refused, 415, "unsupported_media_type").await;
    // ... while JSON, with parameters or as a `+json` type, does.
    let created = post_as(
        &engine,
        "/api/v1/instances/ok",
        Some("application/json; charset=utf-8"),
        &create,
    )
    .await;
    assert_eq!(created.status(), 201);
    let updated = engine
        .client
        .put(engine.url("/api/v1/instances/ok"))
        .header("content-type", "text/plain")
        .body(create.to_string())
        .send()
        .await
        .unwrap();
    assert_error(updated, 415, "unsupported_media_type").await;
    let parsed = post_as(
        &engine,
        "/api/v1/backends/llama-cpp/parse-command",
        Some("application/vnd.corral+json"),
        &parse,
    )
    .await;
    assert_eq!(parsed.status(), 200);
    engine.wait_ready("ok").await;

    // The instance is ready, so the fast path would relay a chat: it hands this one to the
    // router, which refuses it in OpenAI's shape.
    let chat = json!({"model": "ok", "messages": [{"role": "user", "content": "hi"}]});
    let refused = post_as(&engine, "/v1/chat/completions", Some("text/plain"), &chat).await;
    assert_eq!(refused.status(), 415);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let answered = post_as(
        &engine,
        "/v1/chat/completions",
        Some("application/json"),
        &chat,
    )
    .await;
    assert_eq!(answered.status(), 200);
    // Anthropic's shape on /v1/messages.
    let refused = post_as(&engine, "/v1/messages", Some("text/plain"), &chat).await;
    assert_eq!(refused.status(), 415);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    // Ollama's shape on /api/*.
    for path in ["/api/chat", "/api/generate", "/api/embed", "/api/show"] {
        let refused = post_as(&engine, path, Some("text/plain"), &chat).await;
        assert_eq!(refused.status(), 415, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("JSON")),
            "{path}: {body}"
        );
    }
    engine.stop().await;
}

#[tokio::test]
async fn no_other_origin_may_read_answers_or_preflight_unless_listed() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let url = engine.url("/api/v1/instances");
    let read = engine
        .client
        .get(&url)
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(read.headers().get("access-control-allow-origin").is_none());
    let preflight = engine
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "http://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 403);
    assert!(
        preflight
            .headers()
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "{:?}",
        preflight.headers()
    );
    engine.stop().await;

    // `*` is the user's explicit choice.
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.server.allowed_origins = vec!["*".into()];
    let engine = Engine::start(config).await;
    let read = engine.get("/api/v1/instances").await;
    assert!(
        read.headers().get("access-control-allow-origin").is_none(),
        "no Origin, no CORS"
    );
    let read = engine
        .client
        .get(engine.url("/api/v1/instances"))
        .header("Origin", "http://any.example")
        .send()
        .await
        .unwrap();
    assert_eq!(read.headers()["access-control-allow-origin"], "*");
    engine.stop().await;
}

#[tokio::test]
async fn a_page_of_another_origin_cannot_change_anything_even_without_a_body() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine
        .create("held", llama(json!({"on_demand_start": false})))
        .await;
    engine.wait_ready("held").await;
    // A form's POST from another site (or a sandboxed frame, whose origin is `null`): refused
    // before it stops anything, though it needs no body and auth is off.
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let stop = engine
            .client
            .post(engine.url("/api/v1/instances/held/stop"))
            .header("Origin", origin)
            .send()
            .await
            .unwrap();
        assert_error(stop, 403, "origin_not_allowed").await;
    }
    assert_eq!(engine.instance("held").await["status"], "running");
    // Corral's own pages send their own origin.
    let own = engine
        .client
        .post(engine.url("/api/v1/instances/held/stop"))
        .header("Origin", engine.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(engine.instance("held").await["status"], "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn only_a_real_cors_preflight_passes_without_a_key() {
    let dir = data_dir();
    let mut config = with_auth(test_config(dir.path()));
    config.server.allowed_origins = vec!["http://ui.example".into()];
    let engine = Engine::start(config).await;
    let created = engine
        .client
        .post(engine.url("/api/v1/instances/opt"))
        .bearer_auth(MANAGEMENT_KEY)
        .json(&llama(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while engine.registry.get("opt").unwrap().health != Some(corral::supervisor::Health::Ready) {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // An OPTIONS that is no preflight is a request like any: through the proxy it would reach
    // the backend.
    for path in [
        "/api/v1/instances/opt/proxy/v1/chat/completions",
        "/api/v1/instances",
        "/v1/chat/completions",
    ] {
        let options = engine
            .client
            .request(reqwest::Method::OPTIONS, engine.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(options.status(), 401, "{path}");
    }
    let preflight = engine
        .client
        .request(
            reqwest::Method::OPTIONS,
            engine.url("/api/v1/instances/opt/proxy/v1/chat/completions"),
        )
        .header("Origin", "http://ui.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://ui.example"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_backend_gets_corrals_secret_and_never_the_clients_credentials() {
    let dir = data_dir();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    let created = engine
        .client
        .post(engine.url("/api/v1/instances/sec"))
        .bearer_auth(MANAGEMENT_KEY)
        .json(&llama(
            json!({"backend_options": {"model": fake_model("m.gguf"), "api_key": "users-own"}}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let view: Value = created.json().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while engine.registry.get("sec").unwrap().health != Some(corral::supervisor::Health::Ready) {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let secret = key_file_secret(&engine, "sec");
    assert_eq!(secret.len(), 64);
    assert!(
        !view.to_string().contains(&secret),
        "the view never shows it"
    );
    let expected = format!("Bearer {secret}");

    // Through the proxy: the management key, in any of its places, stays with Corral.
    let proxied: Value = engine
        .client
        .get(engine.url(&format!(
            "/api/v1/instances/sec/proxy/echo?api_key={MANAGEMENT_KEY}&x=1"
        )))
        .header("x-api-key", MANAGEMENT_KEY)
        .header("cookie", "theme=dark; corral_proxy_session=whatever")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(proxied["path"], "/echo?x=1");
    assert_eq!(proxied["headers"]["authorization"], expected.as_str());
    assert!(proxied["headers"].get("x-api-key").is_none(), "{proxied}");
    assert_eq!(proxied["headers"]["cookie"], "theme=dark");
    assert!(!proxied.to_string().contains(MANAGEMENT_KEY), "{proxied}");

    // Through /v1: the fast path (a ready instance, a plain request) and the router (a key in
    // the query keeps it off the fast path) both swap the client's key for the secret.
    let chat = json!({"model": "sec", "messages": []});
    for (path, bearer) in [
        ("/v1/chat/completions".to_owned(), Some(INFERENCE_KEY)),
        (
            format!("/v1/chat/completions?api_key={INFERENCE_KEY}"),
            None,
        ),
    ] {
        let mut request = fresh_connections().post(engine.url(&path)).json(&chat);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer).header("x-api-key", bearer);
        }
        let echo: Value = request.send().await.unwrap().json().await.unwrap();
        assert_eq!(
            echo["headers"]["authorization"],
            expected.as_str(),
            "{path}: {echo}"
        );
        assert_eq!(echo["path"], "/v1/chat/completions", "{echo}");
        assert!(echo["headers"].get("x-api-key").is_none(), "{path}: {echo}");
    }

    // Straight at the backend's port, only its keys open it: Corral's or the user's own.
    let direct = format!("http://127.0.0.1:{}/v1/chat/completions", port_of(&view));
    let bare = engine
        .client
        .post(&direct)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    let own = engine
        .client
        .post(&direct)
        .bearer_auth("users-own")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);

    // Deleted, the instance leaves no key behind.
    let key_file = engine.config.instances.run_dir.join("sec.key");
    assert!(key_file.exists());
    let deleted = engine
        .client
        .delete(engine.url("/api/v1/instances/sec"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(!key_file.exists());
    engine.stop().await;
}

#[tokio::test]
async fn a_vllm_backend_gets_its_secret_in_its_environment_and_mlx_none() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let vllm = engine
        .create(
            "v",
            json!({"backend_type": "vllm", "backend_options": {"model": "org/m"}}),
        )
        .await;
    engine
        .create(
            "m",
            json!({"backend_type": "mlx_lm", "backend_options": {"model": "org/m"}}),
        )
        .await;
    engine.wait_ready("v").await;
    engine.wait_ready("m").await;
    let pid = engine.instance("v").await["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let secret = environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"VLLM_API_KEY="))
        .map(|value| String::from_utf8(value.to_vec()).unwrap())
        .expect("VLLM_API_KEY is set");
    assert_eq!(secret.len(), 64);
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&argv).contains(&secret));

    let chat = |model: &str| json!({"model": model, "messages": []});
    let echo: Value = engine
        .post_json("/v1/chat/completions", &chat("v"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {secret}"));
    let direct = format!("http://127.0.0.1:{}/v1/chat/completions", port_of(&vllm));
    let bare = engine
        .client
        .post(&direct)
        .json(&chat("v"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    // mlx_lm.server takes no key: Corral sends none, and says so in its API's schema.
    let echo: Value = engine
        .post_json("/v1/chat/completions", &chat("m"))
        .await
        .json()
        .await
        .unwrap();
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert!(!engine.config.instances.run_dir.join("v.key").exists());
    let doc: Value = engine
        .get("/api/v1/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let described = doc["components"]["schemas"]["MlxLmOptions"]["description"]
        .as_str()
        .unwrap();
    assert!(described.contains("no API key"), "{described}");
    engine.stop().await;
}
