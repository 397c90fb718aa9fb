//! The keys `corral serve` generates when the config sets none: kept owner-only in the data
//! folder across restarts, replaced by `corral keys rotate`, and never written to the log, even
//! when a client sends one in the query. Runs the real binary.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::binary::Serve;

/// A config file with nothing about keys, so the generated ones are used.
fn config_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, "instances:\n  port_range: [11600, 11620]\n").unwrap();
    path
}

async fn serve(dir: &Path, data: &Path, env: &[(&str, &str)]) -> Serve {
    let config = config_file(dir);
    Serve::start(
        &[
            OsStr::new("--config"),
            config.as_os_str(),
            OsStr::new("--data-dir"),
            data.as_os_str(),
        ],
        env,
    )
    .await
}

/// `corral keys <action>` over `data`; its stdout.
fn keys_command(dir: &Path, data: &Path, action: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["keys", action, "--config"])
        .arg(config_file(dir))
        .arg("--data-dir")
        .arg(data)
        .env_remove("CORRAL_MANAGEMENT_KEYS")
        .env_remove("CORRAL_INFERENCE_KEYS")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The key at the end of `line` (`...: sk-inference-...`).
fn key_in(line: &str, prefix: &str) -> String {
    let key = line
        .split_whitespace()
        .find(|word| word.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} key in {line:?}"));
    key.to_owned()
}

async fn models_status(serve: &Serve, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v1/models", serve.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn generated_keys_survive_a_restart_and_rotate_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let first = serve(dir.path(), &data, &[]).await;
    let line = first.banner_line("inference key").await;
    assert!(line.contains("desktop-keys.json"), "{line}");
    let inference = key_in(&line, "sk-inference-");
    assert_eq!(models_status(&first, &inference).await, 200);
    assert_eq!(models_status(&first, "sk-inference-wrong").await, 401);
    first.stop().await;
    #[cfg(unix)]
    {
        assert_eq!(mode(&data.join("desktop-keys.json")), 0o600);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("run")), 0o700);
    }

    // The second start takes the same key from the file, and prints where it is, not the key.
    let second = serve(dir.path(), &data, &[]).await;
    let line = second.banner_line("inference key").await;
    assert!(!line.contains("sk-inference-"), "{line}");
    assert_eq!(models_status(&second, &inference).await, 200);
    let shown = keys_command(dir.path(), &data, "show");
    assert!(shown.contains(&inference), "{shown}");

    let rotated = keys_command(dir.path(), &data, "rotate");
    let new_inference = key_in(
        rotated
            .lines()
            .find(|line| line.contains("inference key"))
            .unwrap(),
        "sk-inference-",
    );
    assert_ne!(new_inference, inference);
    assert!(rotated.contains("Restart"), "{rotated}");
    #[cfg(unix)]
    assert_eq!(mode(&data.join("desktop-keys.json")), 0o600);
    // The running engine keeps the keys it started with until it restarts.
    assert_eq!(models_status(&second, &inference).await, 200);
    second.stop().await;

    let third = serve(dir.path(), &data, &[]).await;
    assert_eq!(models_status(&third, &new_inference).await, 200);
    assert_eq!(models_status(&third, &inference).await, 401);
    third.stop().await;
}

#[tokio::test]
async fn configured_keys_win_over_the_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    keys_command(dir.path(), &data, "rotate");
    let serve = serve(
        dir.path(),
        &data,
        &[("CORRAL_INFERENCE_KEYS", "sk-inference-configured")],
    )
    .await;
    assert_eq!(models_status(&serve, "sk-inference-configured").await, 200);
    let stored = keys_command(dir.path(), &data, "show");
    let from_file = key_in(
        stored
            .lines()
            .find(|line| line.contains("inference key"))
            .unwrap(),
        "sk-inference-",
    );
    assert_eq!(models_status(&serve, &from_file).await, 401);
    serve.stop().await;
}

#[tokio::test]
async fn credentials_in_the_query_never_reach_the_engine_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Debug level: whatever any part of the engine logs about a request is in the output.
    let serve = serve(dir.path(), &data, &[("RUST_LOG", "debug")]).await;
    let inference = key_in(&serve.banner_line("inference key").await, "sk-inference-");
    let client = reqwest::Client::new();
    let body = serde_json::json!({"model": "ghost", "messages": []});
    let by_query = client
        .post(format!(
            "{}/v1/chat/completions?api_key={inference}",
            serve.base
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_query.status(),
        404,
        "the key was accepted, the model is unknown"
    );
    let other = client
        .post(format!(
            "{}/v1/completions?token=tok-secret-123&stream=true",
            serve.base
        ))
        .bearer_auth(&inference)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);

    let log = serve.stop().await;
    assert!(
        log.contains("inference request refused"),
        "the requests were logged: {log}"
    );
    // Corral takes its own `api_key` out of the query before anything sees it; any other
    // credential-like parameter stays in the request but is redacted in the log.
    assert!(log.contains("path=/v1/chat/completions "), "{log}");
    assert!(log.contains("token=[redacted]"), "{log}");
    assert!(
        log.contains("stream=true"),
        "the rest of the query stays: {log}"
    );
    assert!(!log.contains(&inference), "the key is in the log: {log}");
    assert!(
        !log.contains("tok-secret-123"),
        "the token is in the log: {log}"
    );
}
