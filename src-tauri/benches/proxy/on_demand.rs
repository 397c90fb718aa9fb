//! On-demand start overhead: Corral's request-to-answer time for a stopped instance, against the
//! backend's own spawn-to-answer time when started by hand and polled as fast as possible.
//!
//! Both runs also note when the backend's port first answers `/health` with 200 (polled every
//! millisecond by the bench itself), so the time from there to the answer can be compared: it
//! leaves out the backend's own start, whose spread (seconds for vLLM) would hide any overhead of
//! Corral's.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::engine::{Backend, Management};

const CHAT: &str =
    r#"{"model":"MODEL","messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#;

/// One start measured: from spawn (direct) or request (Corral) to the answer, and to the moment
/// the backend's port first answered `/health` with 200.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub total: Duration,
    pub port_ready: Duration,
}

impl Start {
    /// From the port answering to the answer arriving.
    pub fn after_ready(&self) -> Duration {
        self.total.saturating_sub(self.port_ready)
    }
}

/// Polls `http://127.0.0.1:{port}/health` every millisecond until it answers 200; answers how
/// long after `since` that was.
async fn port_ready(port: u16, since: Instant) -> Duration {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Spawns the backend directly on `port` with `args`, polls `/health` every millisecond until it
/// answers 200, then sends one chat request for `model`: spawn to answer. (mlx_lm.server's
/// health is 200 while it loads, but the chat waits for the load, so the answer still comes
/// the moment the backend can give it.)
pub async fn direct_once(
    backend: &Backend,
    args: &[String],
    port: u16,
    model: &str,
) -> anyhow::Result<Start> {
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
    let Ok(ready) = tokio::time::timeout(Duration::from_secs(600), port_ready(port, started)).await
    else {
        bail!("the backend was not healthy within 600 s");
    };
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
    Ok(Start {
        total: elapsed,
        port_ready: ready,
    })
}

/// One request for the stopped instance `name` (listening on `port` once started) through
/// Corral's `/v1/chat/completions`: request to answer. Stops the instance again afterwards.
pub async fn corral_once(
    management: &Management,
    name: &str,
    port: u16,
) -> Result<Start, (u16, Value)> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let watch = tokio::spawn(port_ready(port, started));
    let stop_watching = watch.abort_handle();
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
    // The bench's own poll may land a moment after Corral's: it ran beside it all along.
    let ready = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .ok()
        .and_then(Result::ok);
    stop_watching.abort();
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
    let Some(ready) = ready else {
        return Err((
            0,
            json!("the bench never saw the backend's /health answer 200"),
        ));
    };
    Ok(Start {
        total: elapsed,
        port_ready: ready.min(elapsed),
    })
}
