//! `CORRAL_LLAMA_SERVER=… CORRAL_TEST_MODEL=… cargo bench -p corral --no-default-features --bench swap`:
//! the cost of a model swap. With room for one model (`max_running_instances: 1`), requests
//! alternate between two instances A, B, A, B, ... so each one stops the other's llama-server
//! and starts its own; that is set against the same stop + start + first answer done directly
//! (SIGINT, wait for the exit, spawn, poll `/health`, one chat, no keep-alive connection left
//! open). The difference is Corral's
//! overhead per swap. Also prints the estimated and measured memory of the model at a few
//! context sizes. `CORRAL_BENCH_SWAPS` (default 20) swaps per side.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

fn main() -> anyhow::Result<()> {
    let server = std::env::var("CORRAL_LLAMA_SERVER").context("CORRAL_LLAMA_SERVER")?;
    let model = std::env::var("CORRAL_TEST_MODEL").context("CORRAL_TEST_MODEL")?;
    let swaps: usize = std::env::var("CORRAL_BENCH_SWAPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    tokio::runtime::Runtime::new()?.block_on(run(&server, &model, swaps))
}

async fn run(server: &str, model: &str, swaps: usize) -> anyhow::Result<()> {
    // Without idle connections kept: llama-server exits about 110 ms later while a keep-alive
    // connection is open (Corral closes its own before a stop), which is not a swap's cost.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let direct = direct_swaps(&client, server, model, swaps).await?;
    let (corral, memory) = corral_swaps(&client, server, model, swaps).await?;
    let per = |total: Duration| total.as_secs_f64() * 1000.0 / swaps as f64;
    println!("swap = stop one llama-server, start the other, first answer; {swaps} swaps each");
    println!("{:<34} {:>12}", "", "ms per swap");
    println!(
        "{:<34} {:>12.1}",
        "direct (SIGINT, spawn, /health)",
        per(direct)
    );
    println!(
        "{:<34} {:>12.1}",
        "through Corral (A, B, A, B, ...)",
        per(corral)
    );
    println!(
        "{:<34} {:>12.1}",
        "Corral's overhead",
        per(corral) - per(direct)
    );
    println!();
    println!(
        "{:<10} {:>16} {:>16} {:>8}",
        "ctx_size", "estimated MiB", "measured MiB", "ratio"
    );
    for (ctx, estimated, measured) in memory {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        println!(
            "{ctx:<10} {:>16.1} {:>16.1} {:>8.2}",
            mib(estimated),
            mib(measured),
            estimated as f64 / measured.max(1) as f64
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(server: &str, model: &str, port: u16) -> anyhow::Result<Child> {
    Ok(Command::new(server)
        .args([
            "--model",
            model,
            "--port",
            &port.to_string(),
            "--ctx-size",
            "512",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

async fn wait_healthy(client: &reqwest::Client, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let url = format!("http://127.0.0.1:{port}/health");
        if let Ok(response) = client.get(url).send().await {
            if response.status() == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("llama-server on port {port} did not become healthy")
}

fn stop(child: &mut Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    child.wait()?;
    Ok(())
}

async fn chat(client: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<()> {
    let response = client
        .post(format!("{base}{CHAT}"))
        .json(&json!({"model": model, "max_tokens": 4,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    if response.status() != 200 {
        bail!(
            "chat with {model}: {} {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}

/// What a swap costs without Corral: the polling interval (10 ms) is the same as Corral's
/// readiness probe's fastest.
async fn direct_swaps(
    client: &reqwest::Client,
    server: &str,
    model: &str,
    swaps: usize,
) -> anyhow::Result<Duration> {
    let mut port = free_port()?;
    let mut running = spawn(server, model, port)?;
    wait_healthy(client, port).await?;
    let started = Instant::now();
    for _ in 0..swaps {
        stop(&mut running)?;
        port = free_port()?;
        running = spawn(server, model, port)?;
        wait_healthy(client, port).await?;
        chat(client, &format!("http://127.0.0.1:{port}"), "m").await?;
    }
    let elapsed = started.elapsed();
    stop(&mut running)?;
    Ok(elapsed)
}

/// The same swaps through Corral, and the estimated and measured memory at a few contexts.
async fn corral_swaps(
    client: &reqwest::Client,
    server: &str,
    model: &str,
    swaps: usize,
) -> anyhow::Result<(Duration, Vec<(u64, u64, u64)>)> {
    let dir = tempfile::tempdir()?;
    let mut config = corral::config::Config::with_data_dir(dir.path().to_path_buf());
    config.server.port = 0;
    config.backends.llama_cpp.command = server.to_owned();
    config.instances.max_running_instances = Some(1);
    config.scheduler.min_residency_seconds = 0;
    config.auth.require_inference_auth = false;
    config.auth.require_management_auth = false;
    let engine = corral::Engine::start(config).await?;
    let base = format!("http://{}", engine.addr);
    let create = |name: &str, ctx: u64| {
        let body = json!({"backend_type": "llama_cpp", "on_demand_start": true,
            "backend_options": {"model": model, "ctx_size": ctx}});
        client
            .post(format!("{base}/api/v1/instances/{name}"))
            .json(&body)
            .send()
    };
    for name in ["a", "b"] {
        let response = create(name, 512).await?;
        if response.status() != 201 {
            bail!("create {name}: {}", response.text().await?);
        }
    }
    // `b` started last; `a` first swaps it out.
    chat(client, &base, "b").await?;
    let started = Instant::now();
    for i in 0..swaps {
        chat(client, &base, if i % 2 == 0 { "a" } else { "b" }).await?;
    }
    let elapsed = started.elapsed();

    let mut memory = Vec::new();
    for ctx in [512_u64, 2048, 8192] {
        let name = format!("m{ctx}");
        let response = create(&name, ctx).await?;
        if response.status() != 201 {
            bail!("create {name}: {}", response.text().await?);
        }
        chat(client, &base, &name).await?;
        // The next start measures the running one.
        chat(client, &base, "a").await?;
        let view: Value = client
            .get(format!("{base}/api/v1/instances/{name}"))
            .send()
            .await?
            .json()
            .await?;
        let bytes = |which: &str| {
            let f = &view["footprint"][which];
            f["ram_bytes"].as_u64().unwrap_or(0) + f["gpu_bytes"].as_u64().unwrap_or(0)
        };
        memory.push((ctx, bytes("estimated"), bytes("measured")));
    }
    engine.shutdown().await;
    Ok((elapsed, memory))
}
