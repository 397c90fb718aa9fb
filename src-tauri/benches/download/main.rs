//! `cargo bench -p corral --no-default-features --bench download`: Corral's model download
//! against `curl` on the same file from the same local fake hub (the tests' `fake_hub`: model
//! info, the 302 to a CDN-like origin, ranged GETs). Prints a table; docs/benchmarks.md records
//! the figures. Loopback only.
//!
//! `CORRAL_BENCH_DOWNLOAD_MIB` (default 512) sizes the file, `CORRAL_BENCH_ROUNDS` (default 3)
//! how often each client fetches it, in turn. Corral's time runs from the job's start to its
//! `completed` (model info, the file's metadata, the bytes, the sha256 check, the rename and
//! the snapshot link); curl's is the whole `curl -sSfL -o FILE URL`, redirect included, and
//! "curl, then sha256sum" adds the check Corral makes, as a user would run it.

#[allow(dead_code, clippy::unwrap_used)] // the tests' fake hub, shared as it is
#[path = "../../tests/common/fake_hub.rs"]
mod fake_hub;

// The same allocator as the `corral` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use corral::downloads::{Downloads, JobState, Settings};
use fake_hub::{FakeFile, FakeHub, FakeRepo};

const REPO: &str = "bench/model-GGUF";
const FILE: &str = "model-Q4_K_M.gguf";

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mib = env_number("CORRAL_BENCH_DOWNLOAD_MIB", 512);
    let rounds = env_number("CORRAL_BENCH_ROUNDS", 3).max(1);
    let size = mib * 1024 * 1024;
    let hub = FakeHub::start(vec![(
        REPO,
        FakeRepo::new('d', vec![FakeFile::generated(FILE, size, true)]),
    )])
    .await;
    let dir = tempfile::tempdir()?;
    let url = format!("{}/{REPO}/resolve/main/{FILE}", hub.endpoint());
    let out = dir.path().join("curl.bin");
    let (mut curl, mut checked, mut corral) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        curl.push(with_curl(&url, &out, size, false).await?);
        checked.push(with_curl(&url, &out, size, true).await?);
        corral.push(with_corral(&hub, &dir.path().join(format!("round-{round}"))).await?);
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (curl, checked, corral) = (median(&mut curl), median(&mut checked), median(&mut corral));
    let rate = |time: Duration| size as f64 / (1024.0 * 1024.0) / time.as_secs_f64();
    println!("download of {mib} MiB from a local fake hub, median of {rounds} rounds");
    println!("| client | time | MiB/s | vs curl |");
    println!("|---|---|---|---|");
    println!(
        "| curl -sSfL | {:.3} s | {:.0} | 1.00x |",
        curl.as_secs_f64(),
        rate(curl)
    );
    println!(
        "| curl -sSfL, then sha256sum | {:.3} s | {:.0} | {:.2}x |",
        checked.as_secs_f64(),
        rate(checked),
        rate(checked) / rate(curl)
    );
    println!(
        "| Corral (job start to completed, sha256 checked) | {:.3} s | {:.0} | {:.2}x |",
        corral.as_secs_f64(),
        rate(corral),
        rate(corral) / rate(curl)
    );
    Ok(())
}

/// One `curl` of `url` into `out`, and with `check` a `sha256sum` of it.
async fn with_curl(url: &str, out: &Path, size: usize, check: bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = tokio::process::Command::new("curl")
        .args(["-sSfL", "-o"])
        .arg(out)
        .arg(url)
        .status()
        .await
        .context("run curl")?;
    if !status.success() || std::fs::metadata(out)?.len() != size as u64 {
        bail!("curl failed: {status}");
    }
    if check {
        let hashed = tokio::process::Command::new("sha256sum")
            .arg(out)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .context("run sha256sum")?;
        if !hashed.success() {
            bail!("sha256sum failed: {hashed}");
        }
    }
    let elapsed = started.elapsed();
    std::fs::remove_file(out)?;
    Ok(elapsed)
}

async fn with_corral(hub: &FakeHub, dir: &Path) -> anyhow::Result<Duration> {
    let downloads = Downloads::open(Settings {
        cache_dir: dir.join("hub"),
        endpoint: hub.endpoint(),
        token: None,
        data_dir: dir.join("data"),
    })?;
    let started = Instant::now();
    let id = downloads.start(REPO, None)?.job_id;
    let job = loop {
        let job = downloads.job(&id)?;
        if !matches!(job.state, JobState::Queued | JobState::Running) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let elapsed = started.elapsed();
    if job.state != JobState::Completed {
        bail!("the download ended {:?}: {:?}", job.state, job.error);
    }
    downloads.shutdown().await;
    std::fs::remove_dir_all(dir)?;
    Ok(elapsed)
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
