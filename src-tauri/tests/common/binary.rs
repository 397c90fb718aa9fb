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

/// A `corral serve` child whose output the test reads: stdout (the banner) line by line and
/// stderr (the engine's log) whole.
pub struct Serve {
    pub child: Child,
    pub base: String,
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Ends when stderr closes: the log is complete then.
    log_reader: tokio::task::JoinHandle<()>,
}

impl Serve {
    /// `corral serve --port 0` with `args` after it, `env` added and the key settings of the
    /// test's own environment removed.
    pub async fn start(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Serve {
        let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
        command.args(["serve", "--port", "0"]).args(args);
        for var in [
            "CORRAL_MANAGEMENT_KEYS",
            "CORRAL_INFERENCE_KEYS",
            "CORRAL_REQUIRE_MANAGEMENT_AUTH",
            "CORRAL_REQUIRE_INFERENCE_AUTH",
            "RUST_LOG",
        ] {
            command.env_remove(var);
        }
        let mut child = command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn corral");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = stderr.clone();
        let log_reader = tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut log = log.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let banner = stdout.clone();
        let (address, found) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut address = Some(address);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split(" on http://").nth(1) {
                    if let Some(address) = address.take() {
                        let _ = address.send(format!("http://{}", rest.trim()));
                    }
                }
                banner.lock().expect("banner").push(line);
            }
        });
        let base = tokio::time::timeout(Duration::from_secs(60), found)
            .await
            .expect("corral did not start within 60 s")
            .unwrap_or_else(|_| {
                panic!(
                    "corral exited before printing its address:\n{}",
                    stderr.lock().expect("log")
                )
            });
        Serve {
            child,
            base,
            stdout,
            stderr,
            log_reader,
        }
    }

    /// The first banner line containing `needle`, waiting for it.
    pub async fn banner_line(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self
                .stdout
                .lock()
                .expect("banner")
                .iter()
                .find(|line| line.contains(needle))
            {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no banner line with {needle:?}: {:?}",
                self.stdout.lock().expect("banner")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the engine as Ctrl-C would (it writes out its log) and answers its log.
    pub async fn stop(mut self) -> String {
        #[cfg(unix)]
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let _ = self.child.kill().await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.log_reader).await;
        let log = self.stderr.lock().expect("log").clone();
        log
    }
}
