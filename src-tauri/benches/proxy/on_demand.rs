//! On-demand start overhead: Corral's request-to-answer time for a stopped instance, against the
//! backend's own spawn-to-answer time when started by hand and polled as fast as possible.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::engine::{Backend, Management};

const CHAT: &str =
    r#"{"model":"MODEL","messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#;

/// Spawns the backend directly on `port` with `args`, polls `/health` every millisecond until it
/// answers 200, then sends one chat request for `model`: spawn to answer. (mlx_lm.server's
/// health is 200 while it loads, but the chat waits for the load, so the answer still comes
/// the moment the backend can give it.)
pub async fn direct_once(
    backend: &Backend,
    args: &[String],
    port: u16,
    model: &str,
) -> anyhow::Result<Duration> {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&backend.command)
        .args(&backend.args)
        .args(args)
        .envs(backend.env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", backend.command.display()))?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let healthy = http
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy {
            break;
        }
        if Instant::now() > deadline {
            bail!("the backend was not healthy within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let answer = http
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(CHAT.replace("MODEL", model))
        .send()
        .await?;
    let status = answer.status();
    answer.bytes().await?;
    let elapsed = started.elapsed();
    if !status.is_success() {
        bail!("the backend answered {status}");
    }
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SIGTERM ends all three: mlx_lm.server aborts on SIGINT.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    Ok(elapsed)
}

/// One request for the stopped instance `name` through Corral's `/v1/chat/completions`: request
/// to answer. Stops the instance again afterwards.
pub async fn corral_once(management: &Management, name: &str) -> Result<Duration, (u16, Value)> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let response = http
        .post(format!("{}/v1/chat/completions", management.base))
        .header("content-type", "application/json")
        .body(CHAT.replace("MODEL", name))
        .send()
        .await
        .map_err(|e| (0, json!(e.to_string())))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| (0, json!(e.to_string())))?;
    let elapsed = started.elapsed();
    if status != 200 {
        let text = String::from_utf8_lossy(&body).into_owned();
        return Err((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ));
    }
    management
        .stop(name)
        .await
        .map_err(|e| (0, json!(e.to_string())))?;
    Ok(elapsed)
}
