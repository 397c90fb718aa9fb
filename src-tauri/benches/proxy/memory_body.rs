//! Engine memory while it routes one large request body: `corral serve` as a child with a vLLM
//! instance (so the body's `model` is rewritten on the way, the costlier case), one
//! `POST /v1/embeddings` of `BODY_BYTES` whose `input` is a flat array of token ids (the shape a
//! JSON tree would inflate most), and the process's peak RSS (`VmHWM`) before and after.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::engine::{is_ready, status_kib, Backend, Serve};

/// The body sent: 100 MB.
pub const BODY_BYTES: usize = 100_000_000;

pub struct MemoryBody {
    pub idle_rss_kib: u64,
    pub peak_kib: u64,
    pub sent: usize,
    pub took: Duration,
}

pub async fn measure(data_dir: &Path, upstream: &Backend) -> anyhow::Result<MemoryBody> {
    let config = data_dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "backends:\n  vllm:\n    command: {}\n    args: {}\ninstances:\n  port_range: [28100, 28149]\n",
            serde_json::to_string(&upstream.command.display().to_string())?,
            serde_json::to_string(&upstream.args)?,
        ),
    )?;
    let config = config.display().to_string();
    // The default limit (64 MiB) would refuse this body with 413: let it in.
    let limit = (2 * BODY_BYTES).to_string();
    let serve = Serve::start(
        data_dir,
        &["--config", &config],
        &[("CORRAL_MAX_INFERENCE_BODY_BYTES", &limit)],
    )
    .await?;
    let management = &serve.management;
    let (status, created) = management
        .call(
            reqwest::Method::POST,
            "/api/v1/instances/big",
            Some(json!({
                "backend_type": "vllm",
                "backend_options": {"model": "org/bench-model"},
            })),
        )
        .await?;
    if status != 201 {
        bail!("creating the vLLM instance: {status} {created}");
    }
    management.wait_for("big", is_ready).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_kib = status_kib(serve.pid, "VmRSS")?;

    let body = flat_body(BODY_BYTES);
    let sent = body.len();
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", management.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = answer.status();
    let answer: Value = answer.json().await.context("the answer is not JSON")?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!("the large request answered {status}: {answer}");
    }
    // The backend got the whole body, with the name it serves under.
    let received = answer["received"].as_u64().unwrap_or(0);
    let expected = sent - "\"big\"".len() + "\"org/bench-model\"".len();
    if received != expected as u64
        || !answer["start"]
            .as_str()
            .unwrap_or_default()
            .contains("org/bench-model")
    {
        bail!("the backend got {received} bytes ({answer}), expected {expected}");
    }
    let peak_kib = status_kib(serve.pid, "VmHWM")?;
    serve.stop().await;
    Ok(MemoryBody {
        idle_rss_kib,
        peak_kib,
        sent,
        took,
    })
}

/// `{"model":"big","input":[1,1,...]}` of exactly `bytes` bytes.
fn flat_body(bytes: usize) -> Vec<u8> {
    let head = br#"{"model":"big","input":[1"#;
    let tail = b"]}";
    let mut body = Vec::with_capacity(bytes);
    body.extend_from_slice(head);
    while body.len() + 2 + tail.len() <= bytes {
        body.extend_from_slice(b",1");
    }
    while body.len() + tail.len() < bytes {
        body.push(b' ');
    }
    body.extend_from_slice(tail);
    body
}
