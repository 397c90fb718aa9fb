//! The real `corral` binary as a child process, for the tests that run it end to end against a
//! real llama-server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

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

/// A folder named by an environment variable that a test script sets; missing, the test fails.
pub fn required_dir(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests through scripts/test.sh"));
    assert!(path.is_dir(), "{var}={} is not a folder", path.display());
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
    let config = format!(
        "backends:\n  llama-cpp:\n    command: {}\ninstances:\n  port_range: [{}, {}]\n  stop_grace_seconds: 5\n",
        llama_server.display(),
        ports.0,
        ports.1
    );
    spawn_corral_with_config(data_dir, &config, env).await
}

/// `corral serve` on a random port over `data_dir` with `config` (YAML) as its config file and
/// `env` added; returns the child and its base URL.
pub async fn spawn_corral_with_config(
    data_dir: &Path,
    config: &str,
    env: &[(&str, &str)],
) -> (Child, String) {
    let config_path = data_dir.join("config.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let config = config_path;
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

/// One `corral serve` child and a client for its API, with the management key `key`.
pub struct Corral {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
    key: String,
}

impl Corral {
    /// `corral serve` with `config` (YAML) and `env`; `key` is one of its management keys.
    pub async fn start(data_dir: &Path, config: &str, env: &[(&str, &str)], key: &str) -> Corral {
        let (child, base) = spawn_corral_with_config(data_dir, config, env).await;
        Corral::over(child, base, key)
    }

    /// A client for an engine already spawned (e.g. by [`spawn_corral`]).
    pub fn over(child: Child, base: String, key: &str) -> Corral {
        Corral {
            child,
            base,
            http: reqwest::Client::new(),
            key: key.to_owned(),
        }
    }

    /// The engine dies at once, as in a crash: nothing of it runs its shutdown.
    pub async fn sigkill(mut self) {
        self.child.kill().await.expect("SIGKILL corral");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// POSTs `body` as JSON with no key, as an inference client of an engine whose inference
    /// auth is off; answers the status and the whole body.
    pub async fn post_unkeyed(&self, path: &str, body: Value) -> (u16, String) {
        let resp = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.call(method, path, body).await;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn instance(&self, name: &str) -> Value {
        let (status, v) = self
            .json(
                reqwest::Method::GET,
                &format!("/api/v1/instances/{name}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls the instance until `check` holds; panics with the last state after `limit`.
    pub async fn wait_for(
        &self,
        name: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.instance(name).await;
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting; last state: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, and the engine must exit cleanly within 30 s.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("corral pid");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM corral");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("corral did not exit within 30 s of SIGTERM")
            .expect("wait");
        assert!(status.success(), "corral exited with {status}");
    }
}

pub fn pid_of(v: &Value) -> i32 {
    v["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {v}")) as i32
}

pub fn ready(v: &Value) -> bool {
    v["status"] == "running" && v["health"] == "ready"
}

/// Whether `pid` runs (a zombie does not count).
pub fn alive(pid: i32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        return !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'));
    }
    kill(Pid::from_raw(pid), None).is_ok()
}

pub async fn wait_gone(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every process whose environment carries `CORRAL_SUPERVISOR_TOKEN` starting with
/// `<instance>-`: what Corral started for that instance, children included.
pub fn processes_of(instance: &str) -> Vec<i32> {
    let prefix = format!("CORRAL_SUPERVISOR_TOKEN={instance}-");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|var| var.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}

/// Every live process in process group `group` (Corral starts each backend as the leader of its
/// own group). Found by the group, not the environment: vLLM's engine processes rename
/// themselves with setproctitle, which overwrites what /proc shows of their environment.
pub fn processes_in_group(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // After the `(comm)` field: state, ppid, pgrp.
                stat.rsplit(") ")
                    .next()
                    .and_then(|rest| rest.split(' ').nth(2))
                    .is_some_and(|pgrp| pgrp == group.to_string())
            })
        })
        .collect()
}
