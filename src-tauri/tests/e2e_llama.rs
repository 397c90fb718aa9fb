//! End to end: the real `corral` binary supervising a real `llama-server` with a tiny model.
//!
//! Needs `CORRAL_LLAMA_SERVER` and `CORRAL_TEST_MODEL` (set by `scripts/test.sh`, which builds
//! them). Missing, they fail the test: CI must never pass without the real backend.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::{required_file, spawn_corral};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::process::Child;

const KEY: &str = "sk-e2e-management";

/// One `corral serve` process on a random port over a data folder that outlives it.
struct Corral {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Corral {
    async fn start(data_dir: &Path, llama_server: &Path) -> Corral {
        let env = [
            ("CORRAL_MANAGEMENT_KEYS", KEY),
            ("CORRAL_REQUIRE_INFERENCE_AUTH", "false"),
        ];
        let (child, base) = spawn_corral(data_dir, llama_server, (11100, 11199), &env).await;
        Corral {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.call(method, path, body).await;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn instance(&self, name: &str) -> Value {
        let (status, v) = self
            .json(
                reqwest::Method::GET,
                &format!("/api/v1/instances/{name}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls the instance until `check` holds; panics with the last state after `limit`.
    async fn wait_for(&self, name: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.instance(name).await;
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting; last state: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn terminate(mut self) {
        let pid = self.child.id().expect("corral pid");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM corral");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("corral did not exit within 30 s of SIGTERM")
            .expect("wait");
        assert!(status.success(), "corral exited with {status}");
    }

    async fn sigkill(mut self) {
        self.child.kill().await.expect("SIGKILL corral");
    }
}

fn pid_of(v: &Value) -> i32 {
    v["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {v}")) as i32
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); read its state where we can.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        return !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'));
    }
    kill(Pid::from_raw(pid), None).is_ok()
}

async fn wait_gone(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready(v: &Value) -> bool {
    v["status"] == "running" && v["health"] == "ready"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_llama_server_lives_its_whole_life_under_corral() {
    use reqwest::Method;
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let data = tempfile::tempdir().expect("tempdir");
    let corral = Corral::start(data.path(), &llama_server).await;
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

    let corral = Corral::start(data.path(), &llama_server).await;
    let back = corral.wait_for("tiny", ready_limit, ready).await;
    assert_eq!(back["options"]["backend_options"]["ctx_size"], 512);
    assert_eq!(back["created"], created["created"]);

    // SIGKILL of the engine leaves no llama-server behind.
    let orphan_candidate = pid_of(&back);
    corral.sigkill().await;
    wait_gone(orphan_candidate, Duration::from_secs(10)).await;

    // Delete stops and removes; the definition file goes, the log stays.
    let corral = Corral::start(data.path(), &llama_server).await;
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
