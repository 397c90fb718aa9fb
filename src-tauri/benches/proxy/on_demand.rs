//! On-demand start overhead: Corral's request-to-answer time for a stopped instance, against the
//! backend's own spawn-to-answer time when started by hand and polled as fast as possible.
//!
//! Both runs also note when the backend's port first answers `/health` with 200 (polled every
//! millisecond by the bench itself), so the time from there to the answer can be compared: it
//! leaves out the backend's own start, whose spread (seconds for vLLM) would hide any overhead of
//! Corral's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::engine::{is_ready, Backend, Management};
use crate::{free_port, ms, percentile, subdir, verdict, ON_DEMAND_RUNS};

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

/// One backend the on-demand section measures.
struct OnDemandCase {
    label: &'static str,
    /// The engine's config key and the instance's backend_type.
    config_key: &'static str,
    backend_type: &'static str,
    backend: Backend,
    options: Value,
    /// The direct run's argv after the command and its args, for `port`.
    direct_args: Box<dyn Fn(u16) -> Vec<String>>,
    /// The `model` the direct run asks for (what the backend itself answers to).
    direct_model: String,
}

fn env_file(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The real backends whose variables are set (`CORRAL_LLAMA_SERVER` + `CORRAL_TEST_MODEL`,
/// `CORRAL_MLX_SERVER` / `CORRAL_VLLM` + `CORRAL_TEST_HF_MODEL`); the fixed-answer upstream
/// when none is.
fn on_demand_cases(fake: &Backend) -> Vec<OnDemandCase> {
    let mut cases = Vec::new();
    if let (Some(server), Some(model)) = (
        env_file("CORRAL_LLAMA_SERVER"),
        env_file("CORRAL_TEST_MODEL"),
    ) {
        let path = model.display().to_string();
        cases.push(OnDemandCase {
            label: "llama-server + tiny GGUF",
            config_key: "llama-cpp",
            backend_type: "llama_cpp",
            backend: Backend {
                command: server,
                args: Vec::new(),
                env: Vec::new(),
            },
            options: json!({"model": model, "ctx_size": 512, "gpu_layers": 0}),
            direct_args: Box::new(move |port| {
                let port = port.to_string();
                words(&[
                    "--model",
                    &path,
                    "--port",
                    &port,
                    "--host",
                    "127.0.0.1",
                    "--ctx-size",
                    "512",
                    "--n-gpu-layers",
                    "0",
                ])
            }),
            direct_model: "direct".into(),
        });
    }
    let hf_model = env_file("CORRAL_TEST_HF_MODEL");
    if let (Some(server), Some(model)) = (env_file("CORRAL_MLX_SERVER"), hf_model.clone()) {
        let path = model.display().to_string();
        cases.push(OnDemandCase {
            label: "mlx_lm.server + tiny HF model",
            config_key: "mlx",
            backend_type: "mlx_lm",
            backend: Backend {
                command: server,
                args: Vec::new(),
                env: vec![("HF_HUB_OFFLINE".into(), "1".into())],
            },
            options: json!({"model": model}),
            direct_args: Box::new({
                let path = path.clone();
                move |port| words(&["--model", &path, "--port", &port.to_string()])
            }),
            direct_model: path,
        });
    }
    if let (Some(vllm), Some(model)) = (env_file("CORRAL_VLLM"), hf_model) {
        let path = model.display().to_string();
        cases.push(OnDemandCase {
            label: "vllm serve + tiny HF model",
            config_key: "vllm",
            backend_type: "vllm",
            backend: Backend {
                command: vllm,
                args: vec!["serve".into()],
                env: vec![
                    ("HF_HUB_OFFLINE".into(), "1".into()),
                    ("VLLM_CPU_KVCACHE_SPACE".into(), "1".into()),
                    ("VLLM_CPU_OMP_THREADS_BIND".into(), "nobind".into()),
                ],
            },
            options: json!({"model": model, "dtype": "float32", "max_model_len": 512,
                            "enforce_eager": true}),
            direct_args: Box::new({
                let path = path.clone();
                move |port| {
                    words(&[
                        &path,
                        "--port",
                        &port.to_string(),
                        "--dtype",
                        "float32",
                        "--max-model-len",
                        "512",
                        "--enforce-eager",
                    ])
                }
            }),
            direct_model: path,
        });
    }
    if cases.is_empty() {
        cases.push(OnDemandCase {
            label: "fixed-answer upstream (no real backend set)",
            config_key: "llama-cpp",
            backend_type: "llama_cpp",
            backend: Backend {
                command: fake.command.clone(),
                args: fake.args.clone(),
                env: Vec::new(),
            },
            options: json!({"model": "/dev/null"}),
            direct_args: Box::new(|port| vec!["--port".into(), port.to_string()]),
            direct_model: "direct".into(),
        });
    }
    cases
}

pub async fn on_demand_overhead(tmp: &Path, fake: &Backend) -> anyhow::Result<()> {
    let runs = std::env::var("CORRAL_BENCH_ON_DEMAND_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ON_DEMAND_RUNS);
    for (i, case) in on_demand_cases(fake).into_iter().enumerate() {
        on_demand_case(tmp, &case, runs, i).await?;
    }
    Ok(())
}

async fn on_demand_case(
    tmp: &Path,
    case: &OnDemandCase,
    runs: usize,
    index: usize,
) -> anyhow::Result<()> {
    println!(
        "\nOn-demand start: {}, {runs} runs each, medians",
        case.label
    );
    let base = 28050 + 50 * u16::try_from(index)?;
    let engine = crate::engine::start_engine_as(
        &subdir(tmp, &format!("on-demand-{}", case.config_key))?,
        case.config_key,
        &case.backend,
        (base, base + 49),
    )
    .await?;
    let management = Management::new(format!("http://{}", engine.addr));
    let created = management
        .create_as("od", case.backend_type, case.options.clone())
        .await?;
    let od_port = created["options"]["backend_options"]["port"]
        .as_u64()
        .and_then(|port| u16::try_from(port).ok())
        .context("the instance has no port")?;
    management.wait_for("od", is_ready).await?;
    management.stop("od").await?;
    let mut direct = Vec::new();
    let mut corral = Vec::new();
    let mut failure = None;
    for _ in 0..runs {
        let port = free_port()?;
        let args = (case.direct_args)(port);
        direct.push(direct_once(&case.backend, &args, port, &case.direct_model).await?);
        match corral_once(&management, "od", od_port).await {
            Ok(t) => corral.push(t),
            Err((status, body)) => {
                failure = Some(format!("{status} {body}"));
                break;
            }
        }
    }
    engine.shutdown().await;
    let samples = |all: &[Duration]| {
        all.iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let after_ready = |all: &[Start]| all.iter().map(Start::after_ready).collect::<Vec<_>>();
    let (direct_after, corral_after) = (after_ready(&direct), after_ready(&corral));
    let direct: Vec<Duration> = direct.iter().map(|s| s.total).collect();
    let corral: Vec<Duration> = corral.iter().map(|s| s.total).collect();
    println!("samples, direct (ms): {}", samples(&direct));
    println!("samples, Corral (ms): {}", samples(&corral));
    let direct_ms = ms(percentile(&direct, 50.0));
    println!(
        "{:<48} {:>10.1} ms",
        "backend spawn to answer, direct", direct_ms
    );
    match failure {
        Some(why) => println!(
            "Corral on-demand: not measurable, a request for the stopped instance answered {why}"
        ),
        None => {
            let corral_ms = ms(percentile(&corral, 50.0));
            println!(
                "{:<48} {:>10.1} ms",
                "Corral request to answer, instance stopped", corral_ms
            );
            // Runs alternate direct and Corral starts, so each pair shares the machine's state
            // of the moment: the median of the pairs' differences resists a slow start better
            // than the difference of the two medians.
            let mut pairs: Vec<f64> = direct
                .iter()
                .zip(&corral)
                .map(|(d, c)| ms(*c) - ms(*d))
                .collect();
            pairs.sort_by(f64::total_cmp);
            println!(
                "paired differences, Corral - direct (ms): {}",
                pairs
                    .iter()
                    .map(|d| format!("{d:+.1}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let paired = pairs.get(pairs.len() / 2).copied().unwrap_or(f64::NAN);
            println!(
                "end to end: {:+.1} ms difference of medians, {paired:+.1} ms median of pairs",
                corral_ms - direct_ms,
            );
            // What Corral adds once the backend can answer: noticing it and forwarding the
            // waiting request. The backend's own start, whose spread can be seconds, is left out.
            println!(
                "port answering /health to answer, direct (ms): {}",
                samples(&direct_after)
            );
            println!(
                "port answering /health to answer, Corral (ms): {}",
                samples(&corral_after)
            );
            let after = ms(percentile(&corral_after, 50.0)) - ms(percentile(&direct_after, 50.0));
            println!(
                "on-demand overhead after readiness: {after:+.1} ms (medians; target < 20 ms: {})",
                verdict(after < 20.0)
            );
        }
    }
    Ok(())
}
