//! `cargo bench -p corral --no-default-features --bench proxy`: Corral's proxy against a direct
//! connection and nginx, streaming latency, on-demand start overhead and engine memory. Prints a
//! table; docs/benchmarks.md records the figures. Loopback only, every loop bounded.
//!
//! `CORRAL_BENCH_SECONDS` (default 5) sets the length of each load run, `CORRAL_BENCH_ROUNDS`
//! (default 3) how often every path is loaded in turn; `CORRAL_BENCH_ONLY`
//! (`load,stream,on-demand,memory,memory-body,shipped,soak`, comma-separated) picks sections;
//! `CORRAL_BENCH_SOAK_SECONDS` (default 60) and `CORRAL_BENCH_SOAK_STREAMS` (default 500) size
//! the soak. With
//! `CORRAL_LLAMA_SERVER` and `CORRAL_TEST_MODEL` set, on-demand start uses the real llama-server;
//! with `CORRAL_MLX_SERVER` / `CORRAL_VLLM` and `CORRAL_TEST_HF_MODEL`, the real mlx_lm.server and
//! vllm serve too (`CORRAL_BENCH_ON_DEMAND_RUNS`, default 5, runs of each).

mod engine;
mod load;
mod memory_body;
mod nginx;
mod on_demand;
mod soak;
mod streaming;
mod upstream;

// The engine runs in this process: the same allocator as the `corral` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use crate::engine::{is_ready, Backend, Management};
use crate::load::LoadResult;

const CHAT_BODY: &str =
    r#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#;
const STREAM_BODY: &str =
    r#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":true}"#;
const STREAM_RUNS: usize = 20;
const ON_DEMAND_RUNS: usize = 5;
const DEFINED_INSTANCES: usize = 200;

fn main() -> anyhow::Result<()> {
    if let Some(result) = upstream::run_if_requested() {
        return result;
    }
    // Corral logs every request at info, as `corral serve` does; the cost of formatting and
    // writing those lines belongs in the measurement, the terminal output does not.
    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // RUST_LOG overrides the filter, e.g. `off` to see what the request log costs.
    // As `corral serve` writes to a file or a journal: no colour codes.
    corral::logging::init(devnull, false);
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let seconds = env_number("CORRAL_BENCH_SECONDS", 5);
    let rounds = env_number("CORRAL_BENCH_ROUNDS", 3).max(1);
    let only = std::env::var("CORRAL_BENCH_ONLY").unwrap_or_default();
    let wanted = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    let fake = Backend {
        env: Vec::new(),
        command: std::env::current_exe()?,
        args: vec![upstream::UPSTREAM_FLAG.to_owned()],
    };
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model()
    );
    // Needs neither nginx nor the in-process engine.
    if wanted("memory-body") {
        let tmp = tempfile::tempdir()?;
        memory_body(tmp.path(), &fake).await?;
    }
    if !["load", "stream", "on-demand", "memory", "shipped", "soak"]
        .into_iter()
        .any(wanted)
    {
        return Ok(());
    }
    let nginx_bin = bench_deps().await?;
    let tmp = tempfile::tempdir()?;
    if wanted("shipped") || wanted("soak") {
        soak::shipped(
            tmp.path(),
            &fake,
            &nginx_bin,
            Duration::from_secs(seconds),
            rounds,
            wanted("shipped"),
            wanted("soak"),
        )
        .await?;
        if !["load", "stream", "on-demand", "memory"]
            .into_iter()
            .any(wanted)
        {
            return Ok(());
        }
    }

    // One engine whose `fast` instance is the fixed-answer upstream; direct and nginx reach the
    // same process on its port.
    let proxy_dir = subdir(tmp.path(), "proxy")?;
    let engine = engine::start_engine(&proxy_dir, &fake, (28000, 28049)).await?;
    let management = Management::new(format!("http://{}", engine.addr));
    let created = management
        .create("fast", json!({"model": "/dev/null"}))
        .await?;
    management.wait_for("fast", is_ready).await?;
    let port = created["options"]["backend_options"]["port"]
        .as_u64()
        .context("the instance has no port")?;
    let upstream = format!("127.0.0.1:{port}");
    let nginx = nginx::Nginx::start(
        &nginx_bin,
        &subdir(tmp.path(), "nginx")?,
        &upstream,
        free_port()?,
    )?;
    let (corral_label, corral_url) = corral_route(&management).await?;
    let per_instance = format!(
        "{}/api/v1/instances/fast/proxy/v1/chat/completions",
        management.base
    );
    let mut targets = vec![
        ("direct", format!("http://{upstream}/v1/chat/completions")),
        (
            "nginx",
            format!("http://{}/v1/chat/completions", nginx.authority),
        ),
        (corral_label, corral_url.clone()),
    ];
    // The bare proxy beside the router splits the router's own cost from the proxy's.
    if corral_url != per_instance {
        targets.push(("Corral /api/v1/instances/fast/proxy", per_instance));
    }
    // Whose CPU each load run costs: nothing between wrk and the upstream for direct, nginx's
    // master and workers, and this process (the engine runs in it) for Corral's paths.
    let proxy_pids = |label: &str| match label {
        "direct" => Vec::new(),
        "nginx" => nginx.pids(),
        _ => vec![std::process::id()],
    };

    // The upstream's own cost per request: what serving one request with hyper and axum takes,
    // the floor of a proxy built on them (a proxy serves the request and sends it on).
    let upstream_pid = created["pid"]
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
        .context("the instance has no pid")?;

    if wanted("load") {
        proxy_overhead(
            &targets,
            &proxy_pids,
            upstream_pid,
            tmp.path(),
            Duration::from_secs(seconds),
            rounds,
        )
        .await?;
    }
    if wanted("stream") {
        streaming_latency(&targets, corral_label).await?;
    }
    drop(nginx);
    engine.shutdown().await;
    if wanted("on-demand") {
        on_demand::on_demand_overhead(tmp.path(), &fake).await?;
    }
    if wanted("memory") {
        memory(tmp.path()).await?;
    }
    Ok(())
}

/// Every path loaded in turn, `rounds` times over: a neighbour's burst on a shared machine then
/// lands in one round's figures rather than skewing one path's, and each round's Corral/nginx
/// ratio compares runs seconds apart. The verdict is on the median round.
async fn proxy_overhead(
    targets: &[(&str, String)],
    proxy_pids: &dyn Fn(&str) -> Vec<u32>,
    upstream_pid: u32,
    tmp: &Path,
    run_for: Duration,
    rounds: u64,
) -> anyhow::Result<()> {
    println!(
        "\nProxy overhead: fixed-answer upstream, wrk -t1, {} s per run, {rounds} rounds, POST {CHAT_BODY}",
        run_for.as_secs()
    );
    println!("(CPU µs: user+system CPU time of the proxy's processes, and of the upstream, per answered request)");
    println!(
        "{:<34} {:>5} {:>10} {:>10} {:>10} {:>14} {:>14} {:>7}",
        "path", "conc", "req/s", "p50 ms", "p99 ms", "proxy CPU µs", "upstream CPU µs", "errors"
    );
    let script = load::write_script(tmp, CHAT_BODY)?;
    for connections in [1u32, 32] {
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let mut results = Vec::new();
            for (label, url) in targets {
                load::run(url, &script, connections, Duration::from_secs(1)).await?;
                let pids = proxy_pids(label);
                let cpu_before = load::cpu_time(&pids);
                let upstream_before = load::cpu_time(&[upstream_pid]);
                let r = load::run(url, &script, connections, run_for).await?;
                let cpu = load::cpu_time(&pids).saturating_sub(cpu_before);
                let upstream_cpu = load::cpu_time(&[upstream_pid]).saturating_sub(upstream_before);
                let requests = r.requests_per_s * run_for.as_secs_f64();
                let per_request = |cpu: Duration, measured: bool| {
                    if !measured || requests < 1.0 {
                        "-".to_owned()
                    } else {
                        format!("{:.1}", cpu.as_secs_f64() * 1e6 / requests)
                    }
                };
                println!(
                    "{:<34} {:>5} {:>10.0} {:>10.3} {:>10.3} {:>14} {:>14} {:>7}",
                    label,
                    connections,
                    r.requests_per_s,
                    ms(r.p50),
                    ms(r.p99),
                    per_request(cpu, !pids.is_empty()),
                    per_request(upstream_cpu, true),
                    r.errors
                );
                results.push(r);
            }
            let ratio = Ratio::of(&results[1], &results[2]);
            println!(
                "  c={connections}: Corral/nginx throughput {:.2}x, p50 {:.2}x",
                ratio.throughput, ratio.p50
            );
            ratios.push(ratio);
        }
        print_verdict(connections, &ratios);
    }
    Ok(())
}

async fn streaming_latency(targets: &[(&str, String)], corral_label: &str) -> anyhow::Result<()> {
    println!(
        "\nStreaming: {} SSE chunks, one every {} ms; {STREAM_RUNS} requests per path",
        upstream::STREAM_CHUNKS,
        upstream::STREAM_GAP.as_millis()
    );
    println!(
        "{:<34} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "path", "TTFB p50", "TTFB max", "gap p50", "gap p99", "gap max"
    );
    let mut direct_stream = None;
    for (label, url) in targets {
        let s = streaming::measure(url, STREAM_BODY, STREAM_RUNS).await?;
        println!(
            "{:<34} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>12.3}",
            label,
            ms(percentile(&s.ttfb, 50.0)),
            ms(percentile(&s.ttfb, 100.0)),
            ms(percentile(&s.gaps, 50.0)),
            ms(percentile(&s.gaps, 99.0)),
            ms(percentile(&s.gaps, 100.0)),
        );
        if direct_stream.is_none() {
            direct_stream = Some(s);
        } else if *label == corral_label {
            if let Some(d) = &direct_stream {
                println!(
                    "Corral - direct: TTFB p50 {:+.3} ms, gap p50 {:+.3} ms, gap p99 {:+.3} ms (target: within 1 ms)",
                    ms(percentile(&s.ttfb, 50.0)) - ms(percentile(&d.ttfb, 50.0)),
                    ms(percentile(&s.gaps, 50.0)) - ms(percentile(&d.gaps, 50.0)),
                    ms(percentile(&s.gaps, 99.0)) - ms(percentile(&d.gaps, 99.0)),
                );
            }
        }
    }
    Ok(())
}

/// `/v1/chat/completions` when the router serves it; else the per-instance proxy, labelled so.
async fn corral_route(management: &Management) -> anyhow::Result<(&'static str, String)> {
    let v1 = format!("{}/v1/chat/completions", management.base);
    let answer = reqwest::Client::new()
        .post(&v1)
        .header("content-type", "application/json")
        .body(CHAT_BODY)
        .send()
        .await?;
    let status = answer.status();
    let text = answer.text().await?;
    if status.is_success() && text.contains("choices") {
        return Ok(("Corral /v1/chat/completions", v1));
    }
    println!("note: Corral's /v1/chat/completions answered {status} ({text}); measuring the per-instance proxy instead");
    Ok((
        "Corral /api/v1/instances/fast/proxy",
        format!(
            "{}/api/v1/instances/fast/proxy/v1/chat/completions",
            management.base
        ),
    ))
}

/// Corral's figures relative to nginx's in one round.
struct Ratio {
    throughput: f64,
    p50: f64,
}

impl Ratio {
    fn of(nginx: &LoadResult, corral: &LoadResult) -> Self {
        Self {
            throughput: corral.requests_per_s / nginx.requests_per_s,
            p50: corral.p50.as_secs_f64() / nginx.p50.as_secs_f64(),
        }
    }
}

fn print_verdict(connections: u32, ratios: &[Ratio]) {
    let throughput = median(ratios.iter().map(|r| r.throughput));
    let p50 = median(ratios.iter().map(|r| r.p50));
    println!(
        "c={connections}, median of {} rounds: Corral/nginx throughput {throughput:.2}x (target >= 0.9x: {}), p50 {p50:.2}x (target <= 1.2x: {})",
        ratios.len(),
        verdict(throughput >= 0.9),
        verdict(p50 <= 1.2)
    );
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

async fn memory(tmp: &Path) -> anyhow::Result<()> {
    println!("\nEngine memory (`corral serve`, VmRSS 1 s after start)");
    let idle = engine::serve_rss_kib(&subdir(tmp, "mem-idle")?, 0).await?;
    let full_dir = subdir(tmp, "mem-200")?;
    engine::write_definitions(&full_dir, DEFINED_INSTANCES)?;
    let full = engine::serve_rss_kib(&full_dir, DEFINED_INSTANCES).await?;
    println!("{:<48} {:>10.1} MiB", "no instances", idle as f64 / 1024.0);
    println!(
        "{:<48} {:>10.1} MiB",
        format!("{DEFINED_INSTANCES} defined (stopped) instances"),
        full as f64 / 1024.0
    );
    Ok(())
}

async fn memory_body(tmp: &Path, upstream: &Backend) -> anyhow::Result<()> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let body_mib = memory_body::BODY_BYTES as f64 / (1024.0 * 1024.0);
    println!(
        "\nEngine memory while routing one {body_mib:.1} MiB `POST /v1/embeddings` to a vLLM instance \
         (`model` rewritten; `input` a flat array of token ids); `corral serve`, VmHWM"
    );
    let m = memory_body::measure(tmp, upstream).await?;
    let peak = mib(m.peak_kib);
    println!(
        "{:<48} {:>10.1} MiB",
        "idle, instance ready (VmRSS)",
        mib(m.idle_rss_kib)
    );
    println!(
        "{:<48} {:>10.1} MiB",
        "peak while routing the body (VmHWM)", peak
    );
    println!(
        "{:<48} {:>10.1} MiB ({:.2}x the body)",
        "peak above idle",
        peak - mib(m.idle_rss_kib),
        (peak - mib(m.idle_rss_kib)) / body_mib
    );
    println!(
        "peak {:.2}x the body, sent in {:.2} s (target: peak < 2x the body: {})",
        peak / (m.sent as f64 / (1024.0 * 1024.0)),
        m.took.as_secs_f64(),
        verdict(peak < 2.0 * body_mib)
    );
    Ok(())
}

/// Runs scripts/bench-deps.sh (installs nginx and wrk when missing); returns nginx's path.
async fn bench_deps() -> anyhow::Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-deps.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .map(|line| line.trim().to_owned())
        .context("bench-deps.sh printed no nginx path")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn subdir(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile; zero for no samples.
fn percentile(samples: &[Duration], pct: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
