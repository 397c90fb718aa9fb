//! End to end: the real `corral` binary supervising a real `vllm serve` (vLLM's CPU build) with
//! a tiny random-weight Hugging Face model.
//!
//! Needs `CORRAL_VLLM` and `CORRAL_TEST_HF_MODEL`, set by `scripts/test-vllm.sh` (which installs
//! them with `scripts/test-backends-py.sh vllm`, 6 GB); missing, the test fails. It is not part
//! of `cargo test`'s default run (`#[ignore]`): the install and vLLM's slow starts do not fit in
//! CI's time on a two-core machine; that script runs it with `--ignored`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::{
    pid_of, processes_in_group, processes_of, ready, required_dir, required_file, wait_gone, Corral,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::{json, Value};

const KEY: &str = "sk-e2e-management";
/// vLLM needs ~30 s to serve on an idle machine, several times that on a busy one.
const READY_LIMIT: Duration = Duration::from_secs(600);

async fn start_corral(data: &Path, ports: (u16, u16)) -> Corral {
    let vllm = required_file("CORRAL_VLLM");
    let config = format!(
        "backends:\n  vllm:\n    command: {}\n    args: [serve]\n    environment:\n      HF_HUB_OFFLINE: \"1\"\n      HF_HOME: {}\n      VLLM_CPU_KVCACHE_SPACE: \"1\"\n      VLLM_CPU_OMP_THREADS_BIND: nobind\n\
         instances:\n  port_range: [{}, {}]\n  stop_grace_seconds: 30\n  on_demand_start_timeout: 600\n",
        vllm.display(),
        data.join("hf-home").display(),
        ports.0,
        ports.1
    );
    let env = [
        ("CORRAL_MANAGEMENT_KEYS", KEY),
        ("CORRAL_REQUIRE_INFERENCE_AUTH", "false"),
    ];
    Corral::start(data, &config, &env, KEY).await
}

fn options(model: &str) -> Value {
    json!({"model": model, "dtype": "float32", "max_model_len": 512, "enforce_eager": true})
}

/// vLLM refuses `stream_options` on a request that does not stream (400), unlike llama-server
/// and mlx_lm.server; so it is only sent with `stream: true`.
fn chat(model: &str, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn rss_of(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs vLLM (6 GB); run by scripts/test-vllm.sh"]
async fn real_vllm_serve_lives_its_whole_life_under_corral() {
    let model = required_dir("CORRAL_TEST_HF_MODEL");
    let model = model.to_str().unwrap();
    let data = tempfile::tempdir().expect("tempdir");
    let corral = start_corral(data.path(), (11500, 11549)).await;

    // A model path that does not exist is refused before vLLM is started at all.
    let (status, body) = corral
        .json(
            Method::POST,
            "/api/v1/instances/nowhere",
            Some(json!({"backend_type": "vllm", "max_restarts": 0,
                        "backend_options": options("/nonexistent/model")})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "model_not_found", "{body}");
    assert!(processes_of("nowhere").is_empty());

    // Created from the API; ready once vLLM opens its port.
    let (status, created) = corral
        .json(
            Method::POST,
            "/api/v1/instances/tiny-vllm",
            Some(
                json!({"backend_type": "vllm", "on_demand_start": true, "max_restarts": 1,
                        "restart_delay": 1, "backend_options": options(model)}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let first = corral.wait_for("tiny-vllm", READY_LIMIT, ready).await;

    // Three processes (API server, engine core, worker), all counted in the resources.
    let processes = processes_in_group(pid_of(&first));
    assert!(processes.len() >= 3, "{processes:?}");
    let view = corral.instance("tiny-vllm").await;
    let total = view["resources"]["rss_bytes"].as_u64().unwrap_or(0);
    assert!(
        total > rss_of(pid_of(&first)) * 3 / 2,
        "resources count only the API server: {view}"
    );

    // The instance's name works in every client, though vLLM only answers to its served name.
    let (status, body) = corral
        .post_unkeyed("/v1/chat/completions", chat("tiny-vllm", false))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = corral
        .post_unkeyed("/v1/chat/completions", chat("tiny-vllm", true))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"usage\""), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let (status, body) = corral
        .post_unkeyed(
            "/v1/completions",
            json!({"model": "tiny-vllm", "prompt": "Once upon", "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = corral
        .post_unkeyed(
            "/api/chat",
            json!({"model": "tiny-vllm", "messages": [{"role": "user", "content": "hi"}],
               "stream": false, "options": {"num_predict": 4}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"done\":true"), "{body}");
    let (status, body) = corral
        .post_unkeyed(
            "/v1/messages",
            json!({"model": "tiny-vllm", "max_tokens": 4,
               "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"type\":\"message\""), "{body}");

    // Stop reaches the whole group and leaves no process.
    let (status, stopped) = corral
        .json(Method::POST, "/api/v1/instances/tiny-vllm/stop", None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    for pid in &processes {
        wait_gone(*pid, Duration::from_secs(10)).await;
    }
    assert!(processes_in_group(pid_of(&first)).is_empty());

    // On-demand start with concurrent waiters.
    let requests =
        (0..3).map(|_| corral.post_unkeyed("/v1/chat/completions", chat("tiny-vllm", false)));
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
    }
    let started = corral.wait_for("tiny-vllm", READY_LIMIT, ready).await;

    // A crash of the API server is seen and restarted, and its engine processes do not linger.
    let before = processes_in_group(pid_of(&started));
    kill(Pid::from_raw(pid_of(&started)), Signal::SIGKILL).expect("kill vllm");
    let revived = corral
        .wait_for("tiny-vllm", READY_LIMIT, |v| {
            ready(v) && pid_of(v) != pid_of(&started)
        })
        .await;
    assert_eq!(revived["restarts"], 1, "{revived}");
    for pid in &before {
        wait_gone(*pid, Duration::from_secs(10)).await;
    }

    // The engine's death, even by SIGKILL, ends the whole group: no vLLM process is left (the
    // engine core and worker renamed themselves, so nothing but their group ties them to it).
    let survivors = processes_in_group(pid_of(&revived));
    assert!(survivors.len() >= 3, "{survivors:?}");
    corral.sigkill().await;
    for pid in &survivors {
        wait_gone(*pid, Duration::from_secs(30)).await;
    }
}
