//! The real `corral` binary as a child process, for the tests that run it end to end against a
//! real llama-server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A file named by an environment variable that `scripts/test.sh` sets; missing, the test fails.
pub fn required_file(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests through scripts/test.sh"));
    assert!(path.is_file(), "{var}={} does not exist", path.display());
    path
}

/// `corral serve` on a random port over `data_dir`, its llama.cpp backend `llama_server`,
/// instance ports from `ports`, and `env` added; returns the child and its base URL.
pub async fn spawn_corral(
    data_dir: &Path,
    llama_server: &Path,
    ports: (u16, u16),
    env: &[(&str, &str)],
) -> (Child, String) {
    let config = data_dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "backends:\n  llama-cpp:\n    command: {}\ninstances:\n  port_range: [{}, {}]\n  stop_grace_seconds: 5\n",
            llama_server.display(),
            ports.0,
            ports.1
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn corral");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.split(" on http://").nth(1) {
                return format!("http://{}", rest.trim());
            }
        }
        panic!("corral exited before printing its address");
    })
    .await
    .expect("corral did not start within 60 s");
    // Keep draining stdout so the engine never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}
