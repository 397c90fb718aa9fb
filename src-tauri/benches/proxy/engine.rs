//! Corral under test: engines started in-process with `corral::Engine::start`, the instances
//! they serve, and the `corral serve` binary as a child for memory readings.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use corral::config::{Config, Overrides};
use corral::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How a `llama_cpp` instance is launched: the executable and the arguments before Corral's own.
pub struct Backend {
    pub command: PathBuf,
    pub args: Vec<String>,
    /// Added to the backend's environment, by Corral and by the direct runs alike.
    pub env: Vec<(String, String)>,
}

/// Starts an engine over `data_dir` whose llama.cpp backend is `backend`, with auth off so every
/// path in the comparison carries the same headers.
pub async fn start_engine(
    data_dir: &Path,
    backend: &Backend,
    ports: (u16, u16),
) -> anyhow::Result<Engine> {
    start_engine_as(data_dir, "llama-cpp", backend, ports).await
}

/// [`start_engine`] with `backend` as the engine's `key` backend (`llama-cpp`, `mlx`, `vllm`).
pub async fn start_engine_as(
    data_dir: &Path,
    key: &str,
    backend: &Backend,
    ports: (u16, u16),
) -> anyhow::Result<Engine> {
    let config_file = data_dir.join("config.yaml");
    let env: serde_json::Map<String, Value> = backend
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let yaml = format!(
        "backends:\n  {key}:\n    command: {}\n    args: {}\n    environment: {}\ninstances:\n  port_range: [{}, {}]\n  stop_grace_seconds: 10\n  on_demand_start_timeout: 600\nauth:\n  require_management_auth: false\n  require_inference_auth: false\n",
        serde_json::to_string(&backend.command.display().to_string())?,
        serde_json::to_string(&backend.args)?,
        Value::Object(env),
        ports.0,
        ports.1
    );
    std::fs::write(&config_file, yaml)?;
    let config = Config::load(&Overrides {
        config_file: Some(config_file),
        host: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        port: Some(0),
        data_dir: Some(data_dir.to_path_buf()),
    })
    .context("loading the bench engine's configuration")?;
    Ok(Engine::start(config).await?)
}

/// The management API of one engine.
pub struct Management {
    pub base: String,
    http: reqwest::Client,
}

impl Management {
    pub fn new(base: String) -> Management {
        Management {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn create(&self, name: &str, backend_options: Value) -> anyhow::Result<Value> {
        self.create_as(name, "llama_cpp", backend_options).await
    }

    /// Creates an on-demand instance of `backend_type` (`llama_cpp`, `mlx_lm`, `vllm`).
    pub async fn create_as(
        &self,
        name: &str,
        backend_type: &str,
        backend_options: Value,
    ) -> anyhow::Result<Value> {
        let body = json!({
            "backend_type": backend_type,
            "on_demand_start": true,
            "backend_options": backend_options,
        });
        let (status, value) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/instances/{name}"),
                Some(body),
            )
            .await?;
        if status != 201 {
            bail!("creating {name}: {status} {value}");
        }
        Ok(value)
    }

    pub async fn stop(&self, name: &str) -> anyhow::Result<()> {
        let (status, value) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/instances/{name}/stop"),
                None,
            )
            .await?;
        if status != 200 {
            bail!("stopping {name}: {status} {value}");
        }
        self.wait_for(name, |v| v["status"] == "stopped").await?;
        Ok(())
    }

    /// Polls the instance until `check` holds, for at most two minutes.
    pub async fn wait_for(
        &self,
        name: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (_, value) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/instances/{name}"),
                    None,
                )
                .await?;
            if check(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("gave up waiting on {name}: {value}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn is_ready(v: &Value) -> bool {
    v["status"] == "running" && v["health"] == "ready"
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A memory figure of `/proc/<pid>/status` in KiB: `VmRSS` (now) or `VmHWM` (the peak so far).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no {field} in /proc/<pid>/status"))
}

/// `corral serve` as a child, auth off, on a free loopback port.
pub struct Serve {
    child: tokio::process::Child,
    pub pid: u32,
    pub management: Management,
}

impl Serve {
    /// Starts `corral serve` over `data_dir` with `args` and `env` added, once it printed its
    /// address; only warnings are logged, and dropped.
    pub async fn start(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Serve> {
        Self::start_logging(data_dir, args, env, None).await
    }

    /// [`Serve::start`]; with `log`, as users run it: the default log level (a line per
    /// request), its log (stderr) written to that file.
    pub async fn start_logging(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> anyhow::Result<Serve> {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("CORRAL_REQUIRE_MANAGEMENT_AUTH", "false")
            .env("CORRAL_REQUIRE_INFERENCE_AUTH", "false")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        match log {
            Some(log) => {
                let file = std::fs::File::create(log).context("creating the engine's log file")?;
                command.env_remove("RUST_LOG").stderr(file);
            }
            None => {
                command.env("RUST_LOG", "warn").stderr(Stdio::null());
            }
        }
        let mut child = command
            .envs(env.iter().copied())
            .spawn()
            .context("starting corral serve")?;
        let stdout = child.stdout.take().context("corral's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split(" on http://").nth(1) {
                    return Ok(format!("http://{}", rest.trim()));
                }
            }
            bail!("corral exited before printing its address")
        })
        .await
        .context("corral did not start within 60 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let pid = child.id().context("corral's pid")?;
        Ok(Serve {
            child,
            pid,
            management: Management::new(base),
        })
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// RSS of `corral serve` over `data_dir` once it has loaded `expected` instances and settled.
pub async fn serve_rss_kib(data_dir: &Path, expected: usize) -> anyhow::Result<u64> {
    let serve = Serve::start(data_dir, &[], &[]).await?;
    let (status, list) = serve
        .management
        .call(reqwest::Method::GET, "/api/v1/instances", None)
        .await?;
    let loaded = list.as_array().map_or(0, Vec::len);
    if status != 200 || loaded != expected {
        bail!("corral serve loaded {loaded} instances, expected {expected} ({status})");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib(serve.pid)?;
    serve.stop().await;
    Ok(rss)
}

/// Writes `count` stopped instance definitions, as Corral persists them, into `data_dir`.
pub fn write_definitions(data_dir: &Path, count: usize) -> anyhow::Result<()> {
    let dir = data_dir.join("instances");
    std::fs::create_dir_all(&dir)?;
    for i in 0..count {
        let name = format!("model-{i:03}");
        let record = json!({
            "name": name,
            "status": "stopped",
            "created": 1_700_000_000 + i,
            "options": {
                "backend_type": "llama_cpp",
                "on_demand_start": true,
                "idle_timeout": 10,
                "backend_options": {
                    "model": format!("/models/{name}.gguf"),
                    "port": 40000 + i,
                    "ctx_size": 4096,
                    "gpu_layers": 99
                }
            }
        });
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec(&record)?,
        )?;
    }
    Ok(())
}
