//! Who may call what: management and inference keys, the Host check, CORS, body limits.

use super::*;

#[tokio::test]
async fn management_routes_need_a_management_key_from_any_of_three_places() {
    let dir = data_dir();
    let mut config = with_auth(test_config(dir.path()));
    config.server.allowed_origins = vec!["http://app.example".into()];
    let engine = Engine::start(config).await;
    let url = engine.url("/api/v1/instances");

    let missing = engine.client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["content-type"], "application/json");
    assert_eq!(
        missing.text().await.unwrap(),
        r#"{"error": {"message": "Missing API key", "type": "authentication_error"}}"#
    );
    let wrong = engine
        .client
        .get(&url)
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.text().await.unwrap(),
        r#"{"error": {"message": "Invalid API key", "type": "authentication_error"}}"#
    );
    let inference = engine
        .client
        .get(&url)
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        inference.status(),
        401,
        "inference keys do not open the management API"
    );

    let bearer = engine
        .client
        .get(&url)
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let header = engine
        .client
        .get(&url)
        .header("X-API-Key", MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 200);
    let query = engine
        .client
        .get(format!("{url}?api_key={MANAGEMENT_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);
    // Bearer wins over the others.
    let bearer_first = engine
        .client
        .get(&url)
        .bearer_auth("sk-wrong")
        .header("X-API-Key", MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer_first.status(), 401);
    // Unknown routes under /api/v1 are behind auth too.
    let unknown = engine.get("/api/v1/nothing-here").await;
    assert_eq!(unknown.status(), 401);

    // CORS preflights pass without a key.
    let preflight = engine
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "http://app.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    engine.stop().await;
}

#[tokio::test]
async fn inference_routes_take_inference_or_management_keys() {
    use axum::middleware::from_fn_with_state;
    let dir = data_dir();
    let config = std::sync::Arc::new(with_auth(test_config(dir.path())));
    let keys = corral::access::KeyStore::open(dir.path(), |_| true).unwrap();
    let auth = corral::api::auth::InferenceAuth { config, keys };
    let app = axum::Router::new()
        .route("/v1/models", axum::routing::get(|| async { "models" }))
        .layer(from_fn_with_state(
            auth,
            corral::api::auth::require_inference,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/models", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();

    for key in [INFERENCE_KEY, MANAGEMENT_KEY] {
        let ok = client.get(&url).bearer_auth(key).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{key}");
    }
    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.text().await.unwrap().contains("Missing API key"));
    let wrong = client
        .get(&url)
        .header("X-API-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("Invalid API key"));
}

#[tokio::test]
async fn unknown_host_names_are_refused_while_listening_on_loopback() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.server.allowed_hosts = vec!["corral.lan".into()];
    let engine = Engine::start(config).await;
    let url = engine.url("/api/v1/version");
    let port = engine.addr.port();

    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "corral.lan:80".into(),
        "LOCALHOST".into(),
    ] {
        let ok = engine
            .client
            .get(&url)
            .header("Host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{host}");
    }
    for host in [
        format!("evil.example:{port}"),
        "attacker.localhost.example".into(),
    ] {
        let refused = engine
            .client
            .get(&url)
            .header("Host", &host)
            .send()
            .await
            .unwrap();
        assert_error(refused, 403, "host_not_allowed").await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let limit = engine.config.server.max_body_bytes;
    let big = json!({"backend_type": "llama_cpp", "backend_options": {"model": "x".repeat(limit)}});
    let response = engine.post_json("/api/v1/instances/big", &big).await;
    assert_error(response, 413, "payload_too_large").await;

    // Also without a Content-Length, as a stream.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; limit]), Ok(b"{}".to_vec())];
    let streamed = engine
        .client
        .post(engine.url("/api/v1/backends/llama-cpp/parse-command"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(streamed, 413, "payload_too_large").await;
    assert_eq!(engine.get("/api/v1/instances/big").await.status(), 404);
    engine.stop().await;
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.server.allowed_origins = vec!["http://ui.example".into()];
    let engine = Engine::start(config).await;
    let url = engine.url("/api/v1/instances");

    let allowed = engine
        .client
        .get(&url)
        .header("Origin", "http://ui.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://ui.example"
    );
    let other = engine
        .client
        .get(&url)
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let preflight = engine
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "http://ui.example")
        .header("Access-Control-Request-Method", "DELETE")
        .header("Access-Control-Request-Headers", "x-api-key")
        .send()
        .await
        .unwrap();
    let methods = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        methods.contains("DELETE") && methods.contains("PUT"),
        "{methods}"
    );
    let headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("x-api-key") && headers.contains("authorization"),
        "{headers}"
    );
    engine.stop().await;
}
