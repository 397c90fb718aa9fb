//! The per-instance proxy: forwarding, methods, streaming, 502, and a backend's own page
//! opened with a one-time ticket.

use super::*;

#[tokio::test]
async fn proxy_forwards_to_the_backend_with_path_query_and_body() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("px", llama(json!({}))).await;
    engine.wait_ready("px").await;

    let health = engine.get("/api/v1/instances/px/proxy/health").await;
    assert_eq!(health.status(), 200);
    // The backend's CORS headers are dropped; Corral's own CORS layer decides.
    assert!(health
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    assert!(health
        .headers()
        .get("access-control-allow-origin")
        .is_none_or(|v| v != "https://backend.example"));
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let echo: Value = engine
        .client
        .post(engine.url("/api/v1/instances/px/proxy/v1/chat/completions?stream=false&x=1"))
        .body("{\"hello\": 1}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v1/chat/completions?stream=false&x=1");
    assert_eq!(echo["body"], "{\"hello\": 1}");

    let root: Value = engine
        .get("/api/v1/instances/px/proxy")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(root["path"], "/");
    let put: Value = engine
        .client
        .put(engine.url("/api/v1/instances/px/proxy/slots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(put["method"], "PUT");

    engine.post("/api/v1/instances/px/stop").await;
    let stopped = engine.get("/api/v1/instances/px/proxy/health").await;
    let body = assert_error(stopped, 503, "instance_not_running").await;
    assert!(body["details"]
        .as_str()
        .unwrap()
        .contains("Instance is not running"));
    engine.stop().await;
}

/// Found by schema fuzzing: the proxy forwarded TRACE (an echo of the request, credentials
/// included, is what cross-site tracing abuses) and any other method, where the document lists
/// the methods it takes.
#[tokio::test]
async fn proxy_refuses_methods_it_does_not_list_with_405_and_the_ones_it_takes() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("tr", llama(json!({}))).await;
    engine.wait_ready("tr").await;
    for method in ["TRACE", "QUERY"] {
        let response = engine
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                engine.url("/api/v1/instances/tr/proxy/health"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["allow"],
            "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
            "{method}"
        );
        assert_error(response, 405, "method_not_allowed").await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn proxy_streams_the_response_as_the_backend_writes_it() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("sse", llama(json!({}))).await;
    engine.wait_ready("sse").await;

    let mut stream = engine.get("/api/v1/instances/sse/proxy/stream").await;
    assert_eq!(stream.status(), 200);
    // The backend holds the rest back until /release: the first event can only arrive now if
    // the proxy does not buffer.
    let first = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
        .await
        .expect("the first event arrives before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    engine.get("/api/v1/instances/sse/proxy/release").await;
    let mut rest = Vec::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: last\n\n");
    engine.stop().await;
}

#[tokio::test]
async fn proxy_answers_502_when_the_backend_does_not_listen() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config
        .backends
        .llama_cpp
        .environment
        .insert("FAKE_BACKEND_NO_LISTEN".into(), "1".into());
    let engine = Engine::start(config).await;
    let created = engine.create("deaf", llama(json!({}))).await;
    assert_eq!(created["status"], "running");
    let response = engine.get("/api/v1/instances/deaf/proxy/health").await;
    assert_error(response, 502, "upstream_unreachable").await;
    engine.stop().await;
}

/// A client that shows redirects instead of following them, as the page tests need.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn create_ready_with_auth(engine: &Engine, name: &str) {
    let created = engine
        .client
        .post(engine.url(&format!("/api/v1/instances/{name}")))
        .bearer_auth(MANAGEMENT_KEY)
        .json(&llama(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.registry.get(name).unwrap().health != Some(corral::supervisor::Health::Ready) {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `name=value` of the page cookie a response sets, checking its attributes.
fn page_cookie(response: &reqwest::Response, instance: &str) -> String {
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        cookie.contains(&format!("Path=/api/v1/instances/{instance}/proxy/;")),
        "{cookie}"
    );
    assert!(
        !cookie.contains(MANAGEMENT_KEY),
        "the key is never the cookie"
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_backend_page_opens_with_a_one_time_ticket_and_keeps_working_through_a_cookie() {
    let dir = data_dir();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    create_ready_with_auth(&engine, "page").await;
    create_ready_with_auth(&engine, "other").await;
    let browser = no_redirects();

    // The UI asks for a ticket with its key; no key, no ticket.
    let refused = engine.post("/api/v1/instances/page/proxy-token").await;
    assert_eq!(refused.status(), 401);
    let ticket = |name: &'static str| {
        let engine = &engine;
        async move {
            let answer: Value = engine
                .client
                .post(engine.url(&format!("/api/v1/instances/{name}/proxy-token")))
                .bearer_auth(MANAGEMENT_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(answer["expires_in"], 60);
            answer["url"].as_str().unwrap().to_owned()
        }
    };
    let missing = engine
        .client
        .post(engine.url("/api/v1/instances/nobody/proxy-token"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The tab opens the ticket's address: it gets the cookie and the page without the ticket.
    let url = ticket("page").await;
    assert!(
        url.starts_with("/api/v1/instances/page/proxy/?proxy_ticket="),
        "{url}"
    );
    assert!(!url.contains(MANAGEMENT_KEY));
    let opened = browser.get(engine.url(&url)).send().await.unwrap();
    assert_eq!(opened.status(), 303);
    assert_eq!(
        opened.headers()["location"],
        "/api/v1/instances/page/proxy/"
    );
    let pair = page_cookie(&opened, "page");
    // A ticket works once.
    let again = browser.get(engine.url(&url)).send().await.unwrap();
    assert_eq!(again.status(), 401);

    // The page's own requests carry only the cookie, which the backend never sees.
    let follow = browser
        .get(engine.url("/api/v1/instances/page/proxy/props"))
        .header("cookie", format!("theme=dark; {pair}"))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let echo: Value = follow.json().await.unwrap();
    assert_eq!(echo["headers"]["cookie"], "theme=dark");
    // The cookie opens this instance's page only, not another's, nor the management API.
    for elsewhere in ["/api/v1/instances", "/api/v1/instances/other/proxy/props"] {
        let refused = browser
            .get(engine.url(elsewhere))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{elsewhere}");
    }
    let wrong = browser
        .get(engine.url("/api/v1/instances/page/proxy/props"))
        .header("cookie", "corral_proxy_session=sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // A ticket for one instance does not open another's page.
    let crossed = ticket("page")
        .await
        .replace("/instances/page/", "/instances/other/");
    let crossed = browser.get(engine.url(&crossed)).send().await.unwrap();
    assert_eq!(crossed.status(), 401);

    // A tab opened with `?api_key=` (llamactl's way) still works, and its later requests too,
    // through a pass rather than the key; the key never reaches the backend.
    let page = browser
        .get(engine.url(&format!(
            "/api/v1/instances/page/proxy/?api_key={MANAGEMENT_KEY}&x=1"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let pair = page_cookie(&page, "page");
    let echo: Value = page.json().await.unwrap();
    assert_eq!(echo["path"], "/?x=1");
    let follow = browser
        .get(engine.url("/api/v1/instances/page/proxy/props"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    engine.stop().await;
}
