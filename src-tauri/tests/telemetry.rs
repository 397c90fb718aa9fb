//! Metrics (`GET /metrics`) and the activity log (`GET /api/v1/activity`, the `activity` event):
//! against the fake backend for what each request records and who may read it, and once against
//! the real llama-server with a real Prometheus (Debian's `prometheus` package: `prometheus` and
//! `promtool` on PATH) scraping the engine. `CORRAL_LLAMA_SERVER`, `CORRAL_TEST_MODEL` and
//! Prometheus missing, that test fails: run it through scripts/test.sh.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const METRICS_KEY: &str = "sk-metrics-test";

/// The value of the series `name{labels...}` in an exposition, all labels given matching.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// A chat request, its answer read whole (a client that drops the answer unread is a client
/// that left: the request is then recorded cut short); the status.
async fn chat(engine: &Engine, model: &str) -> u16 {
    let answer = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": model, "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let status = answer.status().as_u16();
    answer.text().await.unwrap();
    status
}

async fn metrics_text(engine: &Engine) -> String {
    let response = engine.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    response.text().await.unwrap()
}

#[tokio::test]
async fn each_request_is_counted_timed_and_kept_in_the_activity_log() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("a", llama(json!({}))).await;
    let mut events = SseReader::new(engine.get("/api/v1/events").await);
    events.until("snapshot", |e| e.event == "snapshot").await;
    for _ in 0..3 {
        assert_eq!(chat(&engine, "a").await, 200);
    }
    let stream = engine
        .post_json(
            "/v1/slow_stream",
            &json!({"model": "a", "chunks": 3, "interval": 0.05}),
        )
        .await;
    assert_eq!(stream.status(), 200);
    stream.text().await.unwrap();
    let failed = engine.post_json("/v1/fail", &json!({"model": "a"})).await;
    assert_eq!(failed.status(), 503);
    failed.text().await.unwrap();
    let unknown_route = engine
        .post_json("/v1/some/odd/path", &json!({"model": "a"}))
        .await;
    assert_eq!(unknown_route.status(), 200);
    unknown_route.text().await.unwrap();

    // The live feed sends each one as it ends.
    let first = events.until("activity", |e| e.event == "activity").await;
    assert_eq!(first.json()["instance"], "a");
    assert_eq!(first.json()["path"], "/v1/chat/completions");

    let page: Value = engine.get("/api/v1/activity").await.json().await.unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 6, "{page}");
    let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let chat_entry = &entries[5];
    assert_eq!(chat_entry["status"], 200);
    assert_eq!(chat_entry["prompt_tokens"], 5);
    assert_eq!(chat_entry["completion_tokens"], 7);
    assert!(chat_entry["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(
        chat_entry["first_byte_ms"].as_u64().unwrap()
            <= chat_entry["duration_ms"].as_u64().unwrap()
    );
    let streamed = &entries[2];
    assert_eq!(streamed["path"], "/v1/slow_stream");
    // Three chunks 50 ms apart: the first byte comes well before the end.
    assert!(
        streamed["duration_ms"].as_u64().unwrap() >= 100,
        "{streamed}"
    );
    assert!(
        streamed["first_byte_ms"].as_u64().unwrap() < streamed["duration_ms"].as_u64().unwrap(),
        "{streamed}"
    );
    let failure = &entries[1];
    assert_eq!(failure["status"], 503);
    assert_eq!(failure["error"], "the model is overloaded");

    let errors: Value = engine
        .get("/api/v1/activity?status=error")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(errors["entries"].as_array().unwrap().len(), 1);
    let one: Value = engine
        .get(&format!("/api/v1/activity/{}", failure["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["error"], "the model is overloaded");
    let after: Value = engine
        .get(&format!("/api/v1/activity?after={}", failure["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["entries"].as_array().unwrap().len(), 1);
    for bad in ["status=6xx", "limit=0", "limit=x", "after=-1"] {
        assert_error(
            engine.get(&format!("/api/v1/activity?{bad}")).await,
            400,
            "invalid_filter",
        )
        .await;
    }
    assert_error(engine.get("/api/v1/activity/999").await, 404, "not_found").await;
    assert_error(engine.get("/api/v1/activity/abc").await, 404, "not_found").await;

    let text = metrics_text(&engine).await;
    let ok = [
        ("model", "a"),
        ("route", "chat/completions"),
        ("status", "2xx"),
    ];
    assert_eq!(
        sample(&text, "corral_requests_total", &ok),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "corral_requests_total",
            &[("model", "a"), ("route", "other"), ("status", "5xx")]
        ),
        Some(1.0),
        "the fail route is no known route: {text}"
    );
    assert_eq!(
        sample(
            &text,
            "corral_requests_total",
            &[("model", "a"), ("route", "other"), ("status", "2xx")]
        ),
        Some(2.0),
        "/v1/slow_stream and /v1/some/odd/path share `other`: {text}"
    );
    let by_route = [("model", "a"), ("route", "chat/completions")];
    assert_eq!(
        sample(&text, "corral_request_duration_seconds_count", &by_route),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "corral_time_to_first_token_seconds_count", &by_route),
        Some(3.0),
        "{page} {text}"
    );
    assert_eq!(
        sample(&text, "corral_queue_wait_seconds_count", &[("model", "a")]),
        Some(6.0)
    );
    // 3 chats, the stream and the echo of the odd path each report 5 + 7.
    assert_eq!(
        sample(
            &text,
            "corral_tokens_total",
            &[("model", "a"), ("kind", "completion")]
        ),
        Some(35.0)
    );
    assert_eq!(
        sample(&text, "corral_instances", &[("state", "ready")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "corral_instances", &[("state", "failed")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "corral_instance_starts_total", &[("model", "a")]),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "corral_instance_resident_memory_bytes",
            &[("model", "a")]
        )
        .unwrap()
            > 0.0
    );
    assert!(
        sample(
            &text,
            "corral_device_memory_total_bytes",
            &[("device", "system")]
        )
        .unwrap()
            > 0.0
    );
    assert!(text.contains("corral_build_info{version=\""), "{text}");
    engine.stop().await;
}

#[tokio::test]
async fn crashes_restarts_and_evictions_are_counted_and_a_deleted_instance_leaves_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    let engine = Engine::start(config).await;
    engine
        .create("a", llama(json!({"restart_delay": 0, "max_restarts": 3})))
        .await;
    engine.wait_ready("a").await;
    // Crash it: the supervisor starts it again.
    let crash = engine
        .post_json("/api/v1/instances/a/proxy/crash", &json!({}))
        .await;
    assert_eq!(crash.status(), 200);
    crash.text().await.unwrap();
    engine
        .wait_for("a", "restarted", |v| {
            v["restarts"] == 1 && v["health"] == "ready"
        })
        .await;
    // Starting b (a create starts it) stops the idle a to make room.
    engine.create("b", llama(json!({}))).await;
    engine.wait_ready("b").await;
    let text = metrics_text(&engine).await;
    let a = [("model", "a")];
    assert_eq!(
        sample(&text, "corral_instance_crashes_total", &a),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "corral_instance_restarts_total", &a),
        Some(1.0)
    );
    assert_eq!(sample(&text, "corral_instance_starts_total", &a), Some(2.0));
    assert_eq!(
        sample(
            &text,
            "corral_evictions_total",
            &[("model", "a"), ("reason", "make_room")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(engine.delete("/api/v1/instances/a").await.status(), 204);
    let text = metrics_text(&engine).await;
    assert!(!text.contains("model=\"a\""), "{text}");
    assert!(text.contains("model=\"b\""));
    engine.stop().await;
}

#[tokio::test]
async fn bodies_are_kept_only_for_an_instance_that_captures_them_and_only_in_a_request_s_details() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    engine
        .create("kept", llama(json!({"capture_bodies": true})))
        .await;
    engine.create("plain", llama(json!({}))).await;
    for name in ["kept", "plain"] {
        engine.wait_ready(name).await;
    }
    assert_eq!(
        engine.instance("kept").await["options"]["capture_bodies"],
        true
    );
    let prompt = json!({"role": "user", "content": "the secret prompt"});
    // Twice each: the first through the router, the next on the fast path.
    for name in ["kept", "plain", "kept", "plain"] {
        let body = json!({"model": name, "messages": [prompt]});
        let answer = engine.post_json("/v1/chat/completions", &body).await;
        assert_eq!(answer.status(), 200);
        // Read whole: a client that leaves early ends its answer there (and its capture).
        answer.text().await.unwrap();
    }
    let big = "x".repeat(100 * 1024);
    let answer = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "kept", "messages": [{"role": "user", "content": big}]}),
        )
        .await;
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().len() > 64 * 1024);
    let stream = engine
        .post_json(
            "/v1/slow_stream",
            &json!({"model": "kept", "stream": true, "chunks": 2, "interval": 0.01}),
        )
        .await;
    assert!(stream.text().await.unwrap().contains("[DONE]"));

    let listed = engine.get("/api/v1/activity").await.text().await.unwrap();
    assert!(!listed.contains("secret prompt"), "{listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 6, "{listed}");
    for entry in entries {
        let kept = entry["instance"] == "kept";
        assert_eq!(entry["captured"], kept, "{entry}");
        let detail: Value = engine
            .get(&format!("/api/v1/activity/{}", entry["id"]))
            .await
            .json()
            .await
            .unwrap();
        if !kept {
            assert!(detail.get("bodies").is_none(), "{detail}");
            continue;
        }
        let (request, answer) = (
            detail["bodies"]["request"].as_str().unwrap(),
            detail["bodies"]["answer"].as_str().unwrap(),
        );
        assert!(!answer.is_empty(), "{detail}");
        if entry["path"] == "/v1/slow_stream" {
            assert!(answer.contains("data: [DONE]"), "{answer}");
        } else if request.len() > 64 * 1024 {
            assert!(request.len() < 65 * 1024, "cut at 64 KiB");
            assert!(
                request.ends_with("more bytes not kept]"),
                "{}",
                &request[65000..]
            );
        } else {
            assert!(request.contains("the secret prompt"), "{request}");
            // The fake backend echoes the request: its answer holds the prompt too.
            assert!(answer.contains("the secret prompt"), "{answer}");
        }
    }
    engine.stop().await;
}

#[tokio::test]
async fn metrics_need_a_management_or_metrics_key_unless_opened_to_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_auth(test_config(dir.path()));
    config.metrics.keys = vec![METRICS_KEY.to_owned()];
    let engine = Engine::start(config).await;
    let scrape = |key: Option<&'static str>| {
        let mut request = engine.client.get(engine.url("/metrics"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(scrape(None).await.unwrap().status(), 401);
    assert_eq!(scrape(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(scrape(Some(INFERENCE_KEY)).await.unwrap().status(), 401);
    assert_eq!(scrape(Some(MANAGEMENT_KEY)).await.unwrap().status(), 200);
    assert_eq!(scrape(Some(METRICS_KEY)).await.unwrap().status(), 200);
    // The metrics key opens the metrics only.
    let managed = engine
        .client
        .get(engine.url("/api/v1/instances"))
        .bearer_auth(METRICS_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(managed.status(), 401);
    let activity = engine
        .client
        .get(engine.url("/api/v1/activity"))
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        activity.status(),
        401,
        "the activity log is the management API's"
    );
    // A page in the user's browser on another origin gets no CORS grant to read them.
    let cross = engine
        .client
        .get(engine.url("/metrics"))
        .header("origin", "https://evil.example")
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert!(cross.headers().get("access-control-allow-origin").is_none());
    // A rebinding page's Host is refused before the key is looked at.
    let rebound = engine
        .client
        .get(engine.url("/metrics"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    engine.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = with_auth(test_config(dir.path()));
    config.metrics.open_on_loopback = true;
    let engine = Engine::start(config).await;
    assert_eq!(
        engine.get("/metrics").await.status(),
        200,
        "this test's client is on loopback"
    );
    assert_eq!(engine.get("/api/v1/instances").await.status(), 401);
    engine.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics.enabled = false;
    let engine = Engine::start(config).await;
    assert_error(engine.get("/metrics").await, 404, "not_found").await;
    engine.stop().await;
}

fn tool(name: &str) -> std::path::PathBuf {
    which::which(name).unwrap_or_else(|_| {
        panic!("{name} is not on PATH: install Debian's `prometheus` package (.ci/run does)")
    })
}

/// Kills Prometheus when the test ends, however it ends.
struct Killed(tokio::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_engine_serving_the_real_llama_server() {
    let llama_server = std::env::var("CORRAL_LLAMA_SERVER")
        .expect("CORRAL_LLAMA_SERVER: run through scripts/test.sh");
    let model = std::env::var("CORRAL_TEST_MODEL").expect("CORRAL_TEST_MODEL");
    let prometheus = tool("prometheus");
    let promtool = tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_auth(test_config(dir.path()));
    config.metrics.keys = vec![METRICS_KEY.to_owned()];
    config.backends.llama_cpp = corral::config::BackendCommand {
        command: llama_server,
        args: Vec::new(),
        environment: Default::default(),
    };
    let engine = Engine::start(config).await;
    let created = engine
        .client
        .post(engine.url("/api/v1/instances/tiny"))
        .bearer_auth(MANAGEMENT_KEY)
        .json(&json!({"backend_type": "llama_cpp",
                      "backend_options": {"model": model, "ctx_size": 256}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    const REQUESTS: u32 = 4;
    for _ in 0..REQUESTS {
        let answer = engine
            .client
            .post(engine.url("/v1/chat/completions"))
            .bearer_auth(INFERENCE_KEY)
            .json(&json!({"model": "tiny", "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap();
    }

    // promtool checks the exposition itself (names, types, help, histogram shape).
    let exposition = engine
        .client
        .get(engine.url("/metrics"))
        .bearer_auth(METRICS_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut check = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = check.stdin.take().unwrap();
        stdin.write_all(exposition.as_bytes()).await.unwrap();
    }
    let checked = check.wait_with_output().await.unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let web = free_port();
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(
        &config_file,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: corral\n    authorization:\n      credentials: {METRICS_KEY}\n    static_configs:\n      - targets: ['{}']\n",
            engine.addr
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        tokio::process::Command::new(&prometheus)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    );
    let api = reqwest::Client::new();
    let get = |path: String| {
        let api = api.clone();
        async move {
            let answer = api
                .get(format!("http://127.0.0.1:{web}{path}"))
                .send()
                .await
                .ok()?;
            answer.json::<Value>().await.ok()
        }
    };
    // The target goes up once a scrape with the key succeeded.
    let mut health = Value::Null;
    for _ in 0..120 {
        if let Some(targets) = get("/api/v1/targets".to_owned()).await {
            health = targets["data"]["activeTargets"][0]["health"].clone();
            if health == "up" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(health, "up", "Prometheus's target for the engine");
    let query =
        "sum(corral_requests_total{model=\"tiny\",route=\"chat/completions\",status=\"2xx\"})";
    let mut counted = None;
    for _ in 0..40 {
        let path = format!(
            "/api/v1/query?query={}",
            percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC)
        );
        if let Some(answer) = get(path).await {
            counted = answer["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned);
            if counted.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(counted.as_deref(), Some(REQUESTS.to_string().as_str()));
    engine.stop().await;
}
