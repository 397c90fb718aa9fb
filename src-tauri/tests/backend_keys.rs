//! End to end against the real `llama-server`: the backend answers only Corral. Each start gets a
//! secret that Corral's proxy adds (the fast path and the router alike) and that no client, argv
//! or API answer ever shows; a key the user set on the instance still works straight at the port.
//!
//! Needs `CORRAL_LLAMA_SERVER` and `CORRAL_TEST_MODEL` (set by `scripts/test.sh`); missing, the
//! test fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::binary::{required_file, spawn_corral};
use serde_json::{json, Value};

const KEY: &str = "sk-keys-management";
const USER_KEY: &str = "sk-users-own-llama-key";

fn chat() -> Value {
    json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
}

async fn wait_ready(http: &reqwest::Client, base: &str, previous_pid: Option<i64>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v: Value = http
            .get(format!("{base}/api/v1/instances/tiny"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["health"] == "ready" && v["pid"].as_i64() != previous_pid {
            return v;
        }
        assert!(Instant::now() < deadline, "never ready: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_llama_server_answers_only_corral_and_the_users_own_key() {
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("CORRAL_MANAGEMENT_KEYS", KEY),
        ("CORRAL_REQUIRE_INFERENCE_AUTH", "false"),
    ];
    let (_corral, base) = spawn_corral(data.path(), &llama_server, (11300, 11349), &env).await;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/api/v1/instances/tiny"))
        .bearer_auth(KEY)
        .json(&json!({
            "backend_type": "llama_cpp",
            "backend_options": {"model": model, "ctx_size": 256, "gpu_layers": 0, "api_key": USER_KEY},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let view = wait_ready(&http, &base, None).await;
    let port = view["options"]["backend_options"]["port"].as_u64().unwrap();
    let direct = format!("http://127.0.0.1:{port}/v1/chat/completions");

    // Straight at the port: nothing, Corral's own key, or a foreign page's request is refused.
    let bare = http.post(&direct).json(&chat()).send().await.unwrap();
    assert_eq!(bare.status(), 401, "no key");
    let corral_key = http
        .post(&direct)
        .bearer_auth(KEY)
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(
        corral_key.status(),
        401,
        "Corral's keys are not the backend's"
    );
    let page = http
        .post(&direct)
        .header("Origin", "http://evil.example")
        .header("Content-Type", "text/plain")
        .body(chat().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401, "a web page's request");
    // The user's own key keeps working beside Corral's secret.
    let own = http
        .post(&direct)
        .bearer_auth(USER_KEY)
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "{}", own.text().await.unwrap());

    // Through Corral: /v1 (the fast path takes this one) and the per-instance proxy answer.
    for path in [
        "/v1/chat/completions",
        "/api/v1/instances/tiny/proxy/v1/chat/completions",
    ] {
        let answer = http
            .post(format!("{base}{path}"))
            .bearer_auth(KEY)
            .json(&chat())
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "{path}: {}",
            answer.text().await.unwrap()
        );
    }
    // The handed-off request (a key in the query keeps it off the fast path) too.
    let routed = http
        .post(format!("{base}/v1/chat/completions?api_key={KEY}"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), 200);

    // The secret is in an owner-only file, never in argv, the API's answers or the log.
    let key_file = data.path().join("run/tiny.key");
    let secret = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(secret.len(), 64);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pid = view["pid"].as_i64().unwrap();
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv = String::from_utf8_lossy(&argv);
    assert!(
        argv.contains("--api-key-file") && !argv.contains(&secret),
        "{argv}"
    );
    let listed = http
        .get(format!("{base}/api/v1/instances"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&secret));
    let log = std::fs::read_to_string(data.path().join("logs/tiny.log")).unwrap();
    assert!(!log.contains(&secret));

    // Each start has a new secret, and Corral presents the new one.
    let restarted = http
        .post(format!("{base}/api/v1/instances/tiny/restart"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(restarted.status(), 200);
    wait_ready(&http, &base, Some(pid)).await;
    let fresh = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(fresh, secret);
    let stale = http
        .post(&direct)
        .bearer_auth(&secret)
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401, "the last start's secret is dead");
    let answer = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}
