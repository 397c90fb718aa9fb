//! End to end: the real `corral` binary supervising a real `mlx_lm.server` (mlx on its CPU
//! device) with a tiny random-weight Hugging Face model.
//!
//! Needs `CORRAL_MLX_SERVER` and `CORRAL_TEST_HF_MODEL` (set by `scripts/test.sh`, which installs
//! them with `scripts/test-backends-py.sh`). Missing, they fail the test: CI must never pass
//! without the real backend.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::{
    alive, pid_of, processes_of, ready, required_dir, required_file, wait_gone, Corral,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::{json, Value};

const KEY: &str = "sk-e2e-management";
/// Generous: two busy cores, and Python imports mlx and transformers on every start.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// Corral with mlx_lm.server as its MLX backend, offline, over a Hugging Face home that does not
/// exist yet (a fresh machine's). Idle timeouts count in seconds here.
async fn start_corral(data: &Path, ports: (u16, u16)) -> Corral {
    let server = required_file("CORRAL_MLX_SERVER");
    let hf_home = data.join("hf-home");
    let config = format!(
        "backends:\n  mlx:\n    command: {}\n    environment:\n      HF_HUB_OFFLINE: \"1\"\n      HF_HOME: {}\n\
         instances:\n  port_range: [{}, {}]\n  stop_grace_seconds: 10\n  idle_timeout_unit_seconds: 1\n",
        server.display(),
        hf_home.display(),
        ports.0,
        ports.1
    );
    let env = [
        ("CORRAL_MANAGEMENT_KEYS", KEY),
        ("CORRAL_REQUIRE_INFERENCE_AUTH", "false"),
    ];
    Corral::start(data, &config, &env, KEY).await
}

fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

async fn log_of(corral: &Corral, name: &str) -> String {
    let (status, logs) = corral
        .call(Method::GET, &format!("/api/v1/instances/{name}/logs"), None)
        .await;
    assert_eq!(status, 200, "{logs}");
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mlx_lm_server_lives_its_whole_life_under_corral() {
    let model = required_dir("CORRAL_TEST_HF_MODEL");
    let model = model.to_str().unwrap();
    let data = tempfile::tempdir().expect("tempdir");
    let corral = start_corral(data.path(), (11300, 11349)).await;

    // Created from the API; it starts, and is ready only once the model answers.
    let (status, created) = corral
        .json(
            Method::POST,
            "/api/v1/instances/tiny-mlx",
            Some(json!({
                "backend_type": "mlx_lm",
                "on_demand_start": true,
                "max_restarts": 1,
                "restart_delay": 1,
                "backend_options": {"model": model, "max_tokens": 8}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let first = corral.wait_for("tiny-mlx", READY_LIMIT, ready).await;
    let first_pid = pid_of(&first);

    // The instance's name works in every client, though mlx_lm.server only knows its path.
    let (status, body) = corral
        .post_unkeyed("/v1/chat/completions", chat("tiny-mlx", false))
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );
    assert!(
        answer["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{answer}"
    );

    let (status, body) = corral
        .post_unkeyed("/v1/chat/completions", chat("tiny-mlx", true))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chat.completion.chunk"), "{body}");
    assert!(body.contains("\"usage\""), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

    let (status, body) = corral
        .post_unkeyed(
            "/v1/completions",
            json!({"model": "tiny-mlx", "prompt": "Once upon", "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("text_completion"), "{body}");

    let (status, body) = corral
        .post_unkeyed(
            "/api/chat",
            json!({"model": "tiny-mlx", "messages": [{"role": "user", "content": "hi"}],
               "stream": false, "options": {"num_predict": 4}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ollama: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ollama["done"], true, "{ollama}");
    assert!(ollama["message"]["content"].is_string(), "{ollama}");

    let (status, body) = corral
        .post_unkeyed(
            "/api/chat",
            json!({"model": "tiny-mlx", "messages": [{"role": "user", "content": "hi"}],
               "options": {"num_predict": 4}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let last: Value = serde_json::from_str(body.trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(last["done"], true, "{body}");

    // mlx_lm.server lists the models of the Hugging Face cache, and sends an empty body when
    // that folder does not exist; Corral makes sure it does.
    let (status, models) = corral
        .json(
            Method::GET,
            "/api/v1/instances/tiny-mlx/proxy/v1/models",
            None,
        )
        .await;
    assert_eq!(status, 200, "{models}");
    assert!(
        models["data"].as_array().is_some_and(|d| !d.is_empty()),
        "{models}"
    );

    // Logs and resources of the running backend.
    let logs = log_of(&corral, "tiny-mlx").await;
    assert!(logs.contains("=== Instance tiny-mlx started at"), "{logs}");
    assert!(logs.contains("Starting httpd"), "{logs}");
    // Resources are sampled at most once a second: the sample the create's answer took, while
    // the process was still importing, may be what a read within that second gets.
    let loaded = |view: &Value| view["resources"]["rss_bytes"].as_u64().unwrap_or(0) > 10 << 20;
    let mut view = corral.instance("tiny-mlx").await;
    for _ in 0..20 {
        if loaded(&view) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        view = corral.instance("tiny-mlx").await;
    }
    assert!(
        loaded(&view),
        "no resources for a running mlx_lm.server: {view}"
    );

    // Stop: SIGTERM, at once, never taken for a crash (SIGINT would abort it with SIGABRT).
    let (status, stopped) = corral
        .json(Method::POST, "/api/v1/instances/tiny-mlx/stop", None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    wait_gone(first_pid, Duration::from_secs(5)).await;
    assert!(processes_of("tiny-mlx").is_empty());
    let logs = log_of(&corral, "tiny-mlx").await;
    assert!(
        logs.contains("Stopping instance tiny-mlx: the backend was killed by signal 15 (SIGTERM)"),
        "{logs}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = corral.instance("tiny-mlx").await;
    assert_eq!(
        (&after["status"], &after["restarts"]),
        (&json!("stopped"), &json!(0)),
        "{after}"
    );

    // On-demand start: concurrent requests wait for one start and all get an answer.
    let requests =
        (0..4).map(|_| corral.post_unkeyed("/v1/chat/completions", chat("tiny-mlx", false)));
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
    }
    let logs = log_of(&corral, "tiny-mlx").await;
    assert_eq!(
        logs.matches("=== Instance tiny-mlx started at").count(),
        2,
        "{logs}"
    );
    let started = corral.wait_for("tiny-mlx", READY_LIMIT, ready).await;

    // Restart brings a new process.
    let (status, _) = corral
        .json(Method::POST, "/api/v1/instances/tiny-mlx/restart", None)
        .await;
    assert_eq!(status, 200);
    let restarted = corral
        .wait_for("tiny-mlx", READY_LIMIT, |v| {
            ready(v) && pid_of(v) != pid_of(&started)
        })
        .await;
    wait_gone(pid_of(&started), Duration::from_secs(10)).await;

    // A crash (SIGKILL) is seen and restarted.
    kill(Pid::from_raw(pid_of(&restarted)), Signal::SIGKILL).expect("kill mlx_lm.server");
    let revived = corral
        .wait_for("tiny-mlx", READY_LIMIT, |v| {
            ready(v) && pid_of(v) != pid_of(&restarted)
        })
        .await;
    assert_eq!(revived["restarts"], 1, "{revived}");

    // Idle stop: with an idle timeout of one unit (a second here) it stops on its own.
    let (status, updated) = corral
        .json(
            Method::PUT,
            "/api/v1/instances/tiny-mlx",
            Some(json!({
                "backend_type": "mlx_lm",
                "on_demand_start": true,
                "idle_timeout": 1,
                "backend_options": {"model": model, "max_tokens": 8,
                                    "port": created["options"]["backend_options"]["port"]}
            })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let idle = corral
        .wait_for("tiny-mlx", READY_LIMIT, |v| v["status"] == "stopped")
        .await;
    assert_eq!(
        idle["error"],
        Value::Null,
        "an idle stop is no failure: {idle}"
    );
    assert!(!alive(pid_of(&revived)));

    // The engine's death, even by SIGKILL, leaves no process of the backend.
    let (status, body) = corral
        .post_unkeyed("/v1/chat/completions", chat("tiny-mlx", false))
        .await;
    assert_eq!(status, 200, "{body}");
    let last = corral.wait_for("tiny-mlx", READY_LIMIT, ready).await;
    corral.sigkill().await;
    wait_gone(pid_of(&last), Duration::from_secs(10)).await;
    assert!(processes_of("tiny-mlx").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlx_model_folder_that_cannot_load_fails_the_start_with_the_reason() {
    let good = required_dir("CORRAL_TEST_HF_MODEL");
    let data = tempfile::tempdir().expect("tempdir");
    // The config alone, no weights: mlx_lm.server binds, answers /health, and its load fails.
    let broken = data.path().join("no-weights");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(good.join("config.json"), broken.join("config.json")).unwrap();
    let corral = start_corral(data.path(), (11350, 11399)).await;

    let (status, created) = corral
        .json(
            Method::POST,
            "/api/v1/instances/broken-mlx",
            Some(json!({
                "backend_type": "mlx_lm",
                "max_restarts": 3,
                "restart_delay": 1,
                "backend_options": {"model": broken.to_str().unwrap()}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let failed = corral
        .wait_for("broken-mlx", READY_LIMIT, |v| v["status"] == "failed")
        .await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot answer"), "{failed}");
    assert!(
        error.contains("safetensors"),
        "the log's reason is missing: {failed}"
    );
    assert_eq!(
        failed["restarts"], 0,
        "a model that cannot load is not restarted: {failed}"
    );
    assert!(processes_of("broken-mlx").is_empty());

    // A request for it gets the same reason, not a wait.
    let (status, body) = corral
        .post_unkeyed("/v1/chat/completions", chat("broken-mlx", false))
        .await;
    assert!(status >= 400, "{status} {body}");
    corral.terminate().await;
}
