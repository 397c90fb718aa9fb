//! The shipped binary under load: `corral serve` as users run it (a child process, its request
//! log at the default level written to a file) in front of the fixed-answer upstream. Loaded
//! with wrk beside nginx, and soaked with many concurrent SSE streams: every stream must arrive
//! whole, the gaps between chunks are compared with the upstream's own, and the engine's memory
//! is sampled throughout.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;

use crate::engine::{is_ready, status_kib, Backend, Serve};
use crate::upstream::{self, STREAM_CHUNKS};
use crate::{env_number, free_port, nginx, proxy_overhead, subdir, verdict, STREAM_BODY};

/// `corral serve` as users run it (see [`Serve::start_logging`]), with one ready instance `fast`
/// whose backend is the fixed-answer upstream.
pub struct Shipped {
    pub serve: Serve,
    /// `host:port` of the instance's upstream.
    pub upstream: String,
    /// The upstream's pid.
    pub upstream_pid: u32,
}

impl Shipped {
    pub async fn start(data_dir: &Path, upstream: &Backend, log: &Path) -> anyhow::Result<Self> {
        let config = data_dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "backends:\n  llama-cpp:\n    command: {}\n    args: {}\ninstances:\n  port_range: [28200, 28249]\n",
                serde_json::to_string(&upstream.command.display().to_string())?,
                serde_json::to_string(&upstream.args)?,
            ),
        )?;
        let config = config.display().to_string();
        let serve = Serve::start_logging(data_dir, &["--config", &config], &[], Some(log)).await?;
        let created = serve
            .management
            .create("fast", json!({"model": "/dev/null"}))
            .await?;
        let ready = serve.management.wait_for("fast", is_ready).await?;
        let port = created["options"]["backend_options"]["port"]
            .as_u64()
            .context("the instance has no port")?;
        let upstream_pid = ready["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .context("the instance has no pid")?;
        Ok(Shipped {
            serve,
            upstream: format!("127.0.0.1:{port}"),
            upstream_pid,
        })
    }
}

/// What a soak saw.
pub struct Soak {
    /// Streams that arrived whole.
    pub streams: u64,
    /// Streams that failed, broke off or came short.
    pub dropped: u64,
    /// Gaps between the arrivals of consecutive events (a token each, to a user), in µs, all
    /// streams together. An event arrives when its closing blank line does: one split over two
    /// reads arrives once, at the second.
    pub gaps_us: Vec<u32>,
    /// The engine's resident memory, sampled every second: the highest and the last, in KiB.
    pub rss_peak_kib: Option<u64>,
    pub rss_last_kib: Option<u64>,
}

/// `concurrency` clients, each sending streamed chats to `url` one after another, until `run_for`
/// has passed; samples `rss_pid`'s memory meanwhile.
pub async fn soak(
    url: &str,
    body: &'static str,
    concurrency: usize,
    run_for: Duration,
    rss_pid: Option<u32>,
) -> anyhow::Result<Soak> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let deadline = Instant::now() + run_for;
    let streams = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let sampler = rss_pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0u64;
            let mut last = 0u64;
            while Instant::now() < deadline {
                if let Ok(rss) = status_kib(pid, "VmRSS") {
                    peak = peak.max(rss);
                    last = rss;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (peak, last)
        })
    });
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let http = http.clone();
        let url = url.to_owned();
        let streams = Arc::clone(&streams);
        let dropped = Arc::clone(&dropped);
        clients.push(tokio::spawn(async move {
            let mut gaps = Vec::new();
            while Instant::now() < deadline {
                match one_stream(&http, &url, body, &mut gaps).await {
                    Ok(()) => streams.fetch_add(1, Ordering::Relaxed),
                    Err(_) => dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
            gaps
        }));
    }
    let mut gaps_us = Vec::new();
    for client in clients {
        gaps_us.extend(client.await?);
    }
    let (rss_peak_kib, rss_last_kib) = match sampler {
        Some(sampler) => {
            let (peak, last) = sampler.await?;
            (Some(peak), Some(last))
        }
        None => (None, None),
    };
    Ok(Soak {
        streams: streams.load(Ordering::Relaxed),
        dropped: dropped.load(Ordering::Relaxed),
        gaps_us,
        rss_peak_kib,
        rss_last_kib,
    })
}

/// One streamed chat: whole when every chunk and the closing `[DONE]` arrived.
async fn one_stream(
    http: &reqwest::Client,
    url: &str,
    body: &'static str,
    gaps: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let mut chunks = response.bytes_stream();
    let mut last: Option<Instant> = None;
    let mut events = 0usize;
    let mut done = false;
    // The stream so far, for the markers that a read may split.
    let mut seen = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if chunk.is_empty() {
            continue;
        }
        let now = Instant::now();
        // Only the new bytes and the one before them can hold a blank line not counted yet.
        let from = seen.len().saturating_sub(1);
        seen.extend_from_slice(&chunk);
        let ends = seen[from..].windows(2).filter(|w| w == b"\n\n").count();
        for _ in 0..ends {
            if let Some(last) = last {
                gaps.push(u32::try_from((now - last).as_micros()).unwrap_or(u32::MAX));
            }
            last = Some(now);
        }
    }
    events += seen.windows(6).filter(|w| w == b"data: ").count();
    done |= seen.windows(6).any(|w| w == b"[DONE]");
    if !done || events != STREAM_CHUNKS + 1 {
        bail!("the stream came short: {events} events, done: {done}");
    }
    Ok(())
}

/// The `pct` percentile of `samples`, in ms.
pub fn percentile_ms(samples: &mut [u32], pct: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((pct / 100.0) * samples.len() as f64).ceil() as usize;
    f64::from(samples[rank.clamp(1, samples.len()) - 1]) / 1000.0
}

/// The shipped `corral serve` binary, its request log going to a file as users run it: wrk
/// against it and nginx in front of the same upstream, then the SSE soak.
pub async fn shipped(
    tmp: &Path,
    fake: &Backend,
    nginx_bin: &str,
    run_for: Duration,
    rounds: u64,
    load: bool,
    soak: bool,
) -> anyhow::Result<()> {
    let data_dir = subdir(tmp, "shipped")?;
    let log = data_dir.join("corral.log");
    let shipped = Shipped::start(&data_dir, fake, &log).await?;
    let serve = &shipped.serve;
    let corral = format!("{}/v1/chat/completions", serve.management.base);
    let direct = format!("http://{}/v1/chat/completions", shipped.upstream);
    if load {
        let nginx = nginx::Nginx::start(
            nginx_bin,
            &subdir(tmp, "shipped-nginx")?,
            &shipped.upstream,
            free_port()?,
        )?;
        let targets = vec![
            ("direct", direct.clone()),
            (
                "nginx",
                format!("http://{}/v1/chat/completions", nginx.authority),
            ),
            ("`corral serve` /v1 (log to a file)", corral.clone()),
        ];
        let corral_pid = serve.pid;
        let pids = |label: &str| match label {
            "direct" => Vec::new(),
            "nginx" => nginx.pids(),
            _ => vec![corral_pid],
        };
        println!("\nThe shipped binary: `corral serve`, its default request log written to a file");
        proxy_overhead(&targets, &pids, shipped.upstream_pid, tmp, run_for, rounds).await?;
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        println!(
            "(its log file holds {} request lines)",
            logged.matches("inference request").count()
        );
    }
    if soak {
        let seconds = env_number("CORRAL_BENCH_SOAK_SECONDS", 60);
        let streams = usize::try_from(env_number("CORRAL_BENCH_SOAK_STREAMS", 500)).unwrap_or(500);
        println!(
            "\nStreaming soak: {streams} concurrent SSE streams for {seconds} s each way, {} chunks 10 ms apart per stream",
            upstream::STREAM_CHUNKS
        );
        println!(
            "{:<34} {:>9} {:>8} {:>10} {:>10} {:>11} {:>13}",
            "path", "streams", "dropped", "gap p50 ms", "gap p99 ms", "RSS peak MiB", "RSS end MiB"
        );
        let mut p99s = Vec::new();
        for (label, url, pid) in [
            ("direct", direct.as_str(), None),
            ("`corral serve` /v1", corral.as_str(), Some(serve.pid)),
        ] {
            let mut run =
                self::soak(url, STREAM_BODY, streams, Duration::from_secs(seconds), pid).await?;
            let p99 = percentile_ms(&mut run.gaps_us, 99.0);
            let mib = |kib: Option<u64>| {
                kib.map_or("-".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0))
            };
            println!(
                "{:<34} {:>9} {:>8} {:>10.2} {:>10.2} {:>11} {:>13}",
                label,
                run.streams,
                run.dropped,
                percentile_ms(&mut run.gaps_us, 50.0),
                p99,
                mib(run.rss_peak_kib),
                mib(run.rss_last_kib)
            );
            p99s.push((p99, run.dropped));
        }
        if let [(direct_p99, _), (corral_p99, dropped)] = p99s[..] {
            println!(
                "none dropped: {}; gap p99 within 2 ms of direct (+{:.2} ms): {}",
                verdict(dropped == 0),
                corral_p99 - direct_p99,
                verdict(corral_p99 - direct_p99 <= 2.0)
            );
        }
    }
    shipped.serve.stop().await;
    Ok(())
}
