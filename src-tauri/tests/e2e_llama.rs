//! End to end: the real `corral` binary supervising a real `llama-server` with a tiny model.
//!
//! Needs `CORRAL_LLAMA_SERVER` and `CORRAL_TEST_MODEL` (set by `scripts/test.sh`, which builds
//! them). Missing, they fail the test: CI must never pass without the real backend.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::{pid_of, ready, required_file, spawn_corral, wait_gone, Corral};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

const KEY: &str = "sk-e2e-management";

/// `corral serve` on a random port over a data folder that outlives it, its llama.cpp backend
/// the real llama-server.
async fn start_corral(data_dir: &Path, llama_server: &Path) -> Corral {
    let env = [
        ("CORRAL_MANAGEMENT_KEYS", KEY),
        ("CORRAL_REQUIRE_INFERENCE_AUTH", "false"),
    ];
    let (child, base) = spawn_corral(data_dir, llama_server, (11100, 11199), &env).await;
    Corral::over(child, base, KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_llama_server_lives_its_whole_life_under_corral() {
    use reqwest::Method;
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let data = tempfile::tempdir().expect("tempdir");
    let corral = start_corral(data.path(), &llama_server).await;
    let ready_limit = Duration::from_secs(60);

    // Create starts the instance; it becomes ready and answers through the proxy.
    let (status, created) = corral
        .json(
            Method::POST,
            "/api/v1/instances/tiny",
            Some(json!({
                "backend_type": "llama_cpp",
                "max_restarts": 1,
                "restart_delay": 1,
                "backend_options": {"model": model, "ctx_size": 256, "gpu_layers": 0}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "running");
    let port = created["options"]["backend_options"]["port"]
        .as_u64()
        .expect("auto-assigned port");
    assert!(
        (11100..=11199).contains(&port),
        "port {port} outside the range"
    );
    assert_eq!(created["options"]["backend_options"]["gpu_layers"], 0);
    let first = corral.wait_for("tiny", ready_limit, ready).await;
    let first_pid = pid_of(&first);

    let (status, body) = corral
        .call(Method::GET, "/api/v1/instances/tiny/proxy/health", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ok"), "{body}");
    let (status, answer) = corral
        .json(
            Method::POST,
            "/api/v1/instances/tiny/proxy/v1/chat/completions",
            Some(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["choices"][0]["message"].is_object(), "{answer}");

    // Logs carry the start marker and llama-server's own output.
    let (status, logs) = corral
        .call(Method::GET, "/api/v1/instances/tiny/logs?lines=500", None)
        .await;
    assert_eq!(status, 200);
    assert!(logs.contains("=== Instance tiny started at"), "{logs}");
    assert!(logs.contains("llama"), "{logs}");
    let (_, two) = corral
        .call(Method::GET, "/api/v1/instances/tiny/logs?lines=2", None)
        .await;
    assert_eq!(two.lines().count(), 2, "{two}");

    // Stop ends the process; start and restart bring new ones.
    let (status, stopped) = corral
        .json(Method::POST, "/api/v1/instances/tiny/stop", None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    wait_gone(first_pid, Duration::from_secs(10)).await;
    let (status, _) = corral
        .json(Method::POST, "/api/v1/instances/tiny/start", None)
        .await;
    assert_eq!(status, 200);
    let started = corral.wait_for("tiny", ready_limit, ready).await;
    let (status, _) = corral
        .json(Method::POST, "/api/v1/instances/tiny/restart", None)
        .await;
    assert_eq!(status, 200);
    let restarted = corral
        .wait_for("tiny", ready_limit, |v| {
            ready(v) && pid_of(v) != pid_of(&started)
        })
        .await;
    wait_gone(pid_of(&started), Duration::from_secs(10)).await;

    // Updating a running instance restarts it with the new options.
    let (status, updated) = corral
        .json(
            Method::PUT,
            "/api/v1/instances/tiny",
            Some(json!({
                "backend_type": "llama_cpp",
                "max_restarts": 1,
                "restart_delay": 1,
                "backend_options": {"model": model, "ctx_size": 512, "gpu_layers": 0, "port": port}
            })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["options"]["backend_options"]["ctx_size"], 512);
    let updated = corral
        .wait_for("tiny", ready_limit, |v| {
            ready(v) && pid_of(v) != pid_of(&restarted)
        })
        .await;
    let (_, logs) = corral
        .call(Method::GET, "/api/v1/instances/tiny/logs", None)
        .await;
    assert!(logs.contains("512"), "the new ctx_size is not in the logs");

    // A crash is restarted once (max_restarts 1), the second one leaves it failed.
    kill(Pid::from_raw(pid_of(&updated)), Signal::SIGKILL).expect("kill llama-server");
    let revived = corral
        .wait_for("tiny", Duration::from_secs(60), |v| {
            ready(v) && pid_of(v) != pid_of(&updated)
        })
        .await;
    assert_eq!(revived["restarts"], 1, "{revived}");
    kill(Pid::from_raw(pid_of(&revived)), Signal::SIGKILL).expect("kill llama-server again");
    let failed = corral
        .wait_for("tiny", Duration::from_secs(30), |v| v["status"] == "failed")
        .await;
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "failed without a reason: {failed}"
    );

    // A graceful engine exit stops the backend; the next engine finds the definition and
    // starts what was running.
    let (status, _) = corral
        .json(Method::POST, "/api/v1/instances/tiny/start", None)
        .await;
    assert_eq!(status, 200);
    let before_exit = corral.wait_for("tiny", ready_limit, ready).await;
    corral.terminate().await;
    wait_gone(pid_of(&before_exit), Duration::from_secs(10)).await;

    let corral = start_corral(data.path(), &llama_server).await;
    let back = corral.wait_for("tiny", ready_limit, ready).await;
    assert_eq!(back["options"]["backend_options"]["ctx_size"], 512);
    assert_eq!(back["created"], created["created"]);

    // SIGKILL of the engine leaves no llama-server behind.
    let orphan_candidate = pid_of(&back);
    corral.sigkill().await;
    wait_gone(orphan_candidate, Duration::from_secs(10)).await;

    // Delete stops and removes; the definition file goes, the log stays.
    let corral = start_corral(data.path(), &llama_server).await;
    let again = corral.wait_for("tiny", ready_limit, ready).await;
    let (status, body) = corral
        .call(Method::DELETE, "/api/v1/instances/tiny", None)
        .await;
    assert_eq!(status, 204, "{body}");
    wait_gone(pid_of(&again), Duration::from_secs(10)).await;
    let (status, _) = corral
        .call(Method::GET, "/api/v1/instances/tiny", None)
        .await;
    assert_eq!(status, 404);
    assert!(!data.path().join("instances/tiny.json").exists());
    assert!(data.path().join("logs/tiny.log").exists());
    corral.terminate().await;
}
