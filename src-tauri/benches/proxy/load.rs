//! Load runs with wrk: a fixed POST body over keep-alive connections, bounded in time.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    pub requests_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Non-2xx answers plus socket errors: any makes the run suspect.
    pub errors: u64,
}

/// Writes the wrk script that sends `body` as a JSON POST.
pub fn write_script(dir: &Path, body: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("post.lua");
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = [[{body}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    std::fs::write(&path, lua).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One wrk run against `url` with `connections` keep-alive connections for `duration`.
pub async fn run(
    url: &str,
    script: &Path,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let out = tokio::process::Command::new("wrk")
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(script)
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .context("running wrk (scripts/bench-deps.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse(text: &str) -> anyhow::Result<LoadResult> {
    let mut requests_per_s = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0u64;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => requests_per_s = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = parse_duration(v),
            (Some("99%"), Some(v)) => p99 = parse_duration(v),
            (Some("Non-2xx"), _) => {
                errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(1)
            }
            (Some("Socket"), Some("errors:")) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                errors += line
                    .split(',')
                    .filter_map(|part| part.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    match (requests_per_s, p50, p99) {
        (Some(requests_per_s), Some(p50), Some(p99)) => Ok(LoadResult {
            requests_per_s,
            p50,
            p99,
            errors,
        }),
        _ => bail!("no throughput or latency percentiles found"),
    }
}

/// wrk's `123.45us`, `1.02ms`, `1.50s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// User plus system CPU time the processes `pids` (all their threads) have used so far, from
/// `/proc/<pid>/stat`; processes that are gone count as zero.
pub fn cpu_time(pids: &[u32]) -> Duration {
    // Linux reports these in USER_HZ, which its ABI fixes at 100 on every architecture we run.
    let ticks_per_second = 100.0;
    let ticks: u64 = pids
        .iter()
        .filter_map(|&pid| {
            let fields = stat_fields(pid)?;
            // utime and stime are the 14th and 15th fields.
            let utime: u64 = fields.get(13)?.parse().ok()?;
            let stime: u64 = fields.get(14)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_second)
}

/// The fields of `/proc/<pid>/stat` from the 3rd on, numbered as in proc(5) (index 2 is the
/// state); `None` when the process is gone.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (2nd field) may hold spaces and parentheses; the last ')' closes it.
    let after = stat.rsplit_once(')')?.1;
    Some(
        ["", ""]
            .into_iter()
            .map(str::to_owned)
            .chain(after.split_whitespace().map(str::to_owned))
            .collect(),
    )
}
