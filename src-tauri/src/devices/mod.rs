//! What hardware this machine has and what the backends see: the system report behind
//! `GET /api/v1/system` (OS, CPU, RAM, accelerators), the per-instance resource sampler and the
//! GGUF fit check.
//!
//! Every accelerator probe is optional: a missing driver or tool is reported as "not present", a
//! failing or hanging one as a failed probe with its error, and the report is answered anyway.
//! The probes read the filesystem under [`ProbeEnv::root`] and run programs through a
//! [`CommandRunner`], so tests replay recorded sysfs trees and command outputs.

mod amd;
mod apple;
mod drm;
pub mod fit;
pub mod gguf;
mod host;
mod intel;
mod llama;
mod nvidia;
mod processes;
pub mod runner;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::backends::BackendType;
use crate::config::BackendCommand;
pub use processes::{ResourceMonitor, Resources};
pub use runner::{CommandRunner, RunError, SystemRunner};

/// How long the whole report is reused: polling it every second costs one probe round.
const REPORT_TTL: Duration = Duration::from_secs(1);
/// How long the output of a slow, mostly static command (`llama-server --list-devices`,
/// `rocm-smi`, `sysctl`, `system_profiler`) is reused.
const STATIC_COMMAND_TTL: Duration = Duration::from_secs(60);
/// One probe's time limit; `--list-devices` initialises every GPU backend, which is the slowest.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The machine as `GET /api/v1/system` reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemReport {
    pub os: OsInfo,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    /// GPUs and other accelerators, from the hardware probes and from the backends' own view
    /// (`source` tells which); empty on a machine without any.
    pub accelerators: Vec<Accelerator>,
    /// What each probe found or why it failed.
    pub probes: Vec<ProbeReport>,
    /// The backend a new instance should default to here: `mlx_lm` on Apple Silicon, else
    /// `llama_cpp`.
    pub suggested_backend: BackendType,
    pub engine: EngineInfo,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OsInfo {
    /// `Debian GNU/Linux`, `Darwin`, `Windows`.
    pub name: Option<String>,
    pub version: Option<String>,
    pub kernel: Option<String>,
    /// `x86_64`, `arm64`.
    pub arch: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CpuInfo {
    pub model: Option<String>,
    /// Physical cores, when the OS says.
    pub cores: Option<usize>,
    /// Logical CPUs.
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// What can still be handed out without swapping (page cache counts as available).
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    Nvidia,
    Amd,
    Intel,
    Apple,
    Other,
}

/// One GPU or accelerator. Unknown values are null.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Accelerator {
    pub vendor: Vendor,
    pub name: String,
    /// Where this entry comes from: `nvml`, `nvidia-smi`, `sysfs`, `system_profiler`, or
    /// `llama-server` (its `--list-devices`).
    pub source: String,
    /// The device's id in its source: `0` (NVML/nvidia-smi index), `card1` (DRM card),
    /// `CUDA0`/`Vulkan0`/`MTL0` (llama.cpp's device name).
    pub id: String,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    /// Driver name and version, e.g. `550.54.14` (NVIDIA), `amdgpu`, `i915`.
    pub driver: Option<String>,
    /// Busy percentage of the GPU engine.
    pub utilization_percent: Option<f32>,
    pub temperature_c: Option<f32>,
    /// Shares the system's RAM (Apple Silicon, integrated GPUs): its memory is the machine's.
    pub unified: bool,
    /// GPU cores (Apple Silicon).
    pub cores: Option<u32>,
}

impl Accelerator {
    fn new(vendor: Vendor, name: impl Into<String>, source: &str, id: impl Into<String>) -> Self {
        Self {
            vendor,
            name: name.into(),
            source: source.to_owned(),
            id: id.into(),
            memory_total_bytes: None,
            memory_used_bytes: None,
            memory_free_bytes: None,
            driver: None,
            utilization_percent: None,
            temperature_c: None,
            unified: false,
            cores: None,
        }
    }

    /// Fills used or free from the other and the total.
    fn complete_memory(&mut self) {
        match (
            self.memory_total_bytes,
            self.memory_used_bytes,
            self.memory_free_bytes,
        ) {
            (Some(total), Some(used), None) => {
                self.memory_free_bytes = Some(total.saturating_sub(used))
            }
            (Some(total), None, Some(free)) => {
                self.memory_used_bytes = Some(total.saturating_sub(free))
            }
            _ => {}
        }
    }
}

/// What one probe did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProbeReport {
    /// `host`, `nvidia`, `amd`, `intel`, `apple`, `llama-server`.
    pub name: String,
    /// False only when the probe failed or timed out; a missing driver or tool is fine.
    pub ok: bool,
    /// Whether what it looks for is on this machine (a driver, a tool, a device).
    pub present: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it used or why nothing is there, e.g. "nvidia-smi is not installed".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub millis: u64,
}

/// About the engine answering.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EngineInfo {
    pub version: String,
    pub pid: u32,
    /// Seconds since the engine started.
    pub uptime_seconds: u64,
    /// The configured llama-server command.
    pub llama_server: String,
}

/// What a probe hands back when it ran.
#[derive(Debug, Default)]
struct Found {
    accelerators: Vec<Accelerator>,
    present: bool,
    detail: Option<String>,
}

impl Found {
    fn absent(detail: impl Into<String>) -> Self {
        Self {
            accelerators: Vec::new(),
            present: false,
            detail: Some(detail.into()),
        }
    }

    fn devices(accelerators: Vec<Accelerator>, detail: impl Into<String>) -> Self {
        Self {
            present: !accelerators.is_empty(),
            accelerators,
            detail: Some(detail.into()),
        }
    }
}

/// Where the probes look: the filesystem root (`/` for real, a fixture tree in tests), the way
/// programs are run, and the llama-server to ask.
#[derive(Clone)]
pub struct ProbeEnv {
    /// `/sys/class/drm`, `/usr/share/misc/pci.ids` and the rest are read below this.
    pub root: PathBuf,
    pub runner: Arc<dyn CommandRunner>,
    /// The configured llama-server; None to skip its view.
    pub llama_server: Option<BackendCommand>,
    /// Load NVML (the real driver library); off in tests, where nvidia-smi's recording answers.
    pub use_nvml: bool,
    /// Probe for Apple Silicon (true on macOS).
    pub apple: bool,
    pub timeout: Duration,
}

impl ProbeEnv {
    /// This machine, as it is.
    pub fn system(llama_server: &BackendCommand) -> Self {
        Self {
            root: PathBuf::from("/"),
            runner: Arc::new(SystemRunner),
            llama_server: Some(llama_server.clone()),
            use_nvml: true,
            apple: cfg!(target_os = "macos"),
            timeout: PROBE_TIMEOUT,
        }
    }
}

/// The system report with its caches: the report is reused for [`REPORT_TTL`], the outputs of
/// slow static commands for [`STATIC_COMMAND_TTL`].
pub struct Devices {
    env: ProbeEnv,
    started: Instant,
    /// A tokio Mutex on purpose: held across the probes, so concurrent readers of a stale report
    /// wait for one refresh instead of each starting their own.
    report: tokio::sync::Mutex<Option<(Instant, SystemReport)>>,
    /// Outputs of slow commands by command line. A std Mutex: only looked up and stored, never
    /// held across an await.
    commands: Mutex<HashMap<String, CommandAnswer>>,
}

/// When a command answered, and what.
type CommandAnswer = (Instant, Result<String, RunError>);

impl Devices {
    pub fn new(env: ProbeEnv) -> Self {
        Self {
            env,
            started: Instant::now(),
            report: tokio::sync::Mutex::new(None),
            commands: Mutex::new(HashMap::new()),
        }
    }

    /// The report, at most [`REPORT_TTL`] old.
    pub async fn report(&self) -> SystemReport {
        let mut cached = self.report.lock().await;
        if let Some((at, report)) = cached.as_ref() {
            if at.elapsed() < REPORT_TTL {
                return report.clone();
            }
        }
        let report = self.collect().await;
        *cached = Some((Instant::now(), report.clone()));
        report
    }

    /// Free memory for the fit check, from the (cached) report.
    pub async fn available(&self) -> fit::Available {
        available_from(&self.report().await)
    }

    /// Free memory for placing a start, and whether the GPU shares the RAM (Apple Silicon).
    pub async fn placement_memory(&self) -> (fit::Available, bool) {
        let report = self.report().await;
        let unified = report.accelerators.iter().any(|a| a.unified);
        (available_from(&report), unified)
    }

    async fn collect(&self) -> SystemReport {
        let host = timed(host::probe());
        let nvidia = self.probe("nvidia", nvidia::probe(self));
        let amd = self.probe("amd", amd::probe(self));
        let intel = self.probe("intel", intel::probe(self));
        let apple = async {
            if self.env.apple {
                Some(self.probe("apple", apple::probe(self)).await)
            } else {
                None
            }
        };
        let llama = self.probe("llama-server", llama::probe(self));
        let (host, nvidia, amd, intel, apple, llama) =
            tokio::join!(host, nvidia, amd, intel, apple, llama);
        let mut results = vec![nvidia, amd, intel];
        results.extend(apple);
        results.push(llama);

        let ((os, cpu, memory), host_millis) = host;
        let mut probes = vec![ProbeReport {
            name: "host".into(),
            ok: true,
            present: true,
            error: None,
            detail: None,
            millis: host_millis,
        }];
        let mut accelerators = Vec::new();
        for (report, found) in results {
            probes.push(report);
            accelerators.extend(found.accelerators);
        }
        for accelerator in &mut accelerators {
            if accelerator.unified && accelerator.memory_free_bytes.is_none() {
                accelerator.memory_total_bytes =
                    accelerator.memory_total_bytes.or(Some(memory.total_bytes));
                accelerator.memory_free_bytes = Some(memory.available_bytes);
            }
            accelerator.complete_memory();
        }
        let apple_silicon = accelerators
            .iter()
            .any(|a| a.vendor == Vendor::Apple && a.source != "llama-server")
            || (cfg!(all(target_os = "macos", target_arch = "aarch64")) && self.env.apple);
        SystemReport {
            os,
            cpu,
            memory,
            accelerators,
            probes,
            suggested_backend: if apple_silicon {
                BackendType::MlxLm
            } else {
                BackendType::LlamaCpp
            },
            engine: EngineInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                uptime_seconds: self.started.elapsed().as_secs(),
                llama_server: self
                    .env
                    .llama_server
                    .as_ref()
                    .map(|command| command.command.clone())
                    .unwrap_or_default(),
            },
        }
    }

    /// Runs one accelerator probe under the time limit; its failure becomes its report.
    async fn probe(
        &self,
        name: &str,
        probe: impl std::future::Future<Output = Result<Found, String>>,
    ) -> (ProbeReport, Found) {
        // A quarter more than the commands get: a command that hangs ends by its own timeout
        // first, and that answer is cached like any other, so a hanging llama-server is not
        // started again on every poll.
        let limit = self.env.timeout + self.env.timeout / 4;
        let (outcome, millis) = timed(tokio::time::timeout(limit, probe)).await;
        let outcome = outcome
            .unwrap_or_else(|_| Err(format!("did not finish within {} s", limit.as_secs_f32())));
        match outcome {
            Ok(found) => (
                ProbeReport {
                    name: name.to_owned(),
                    ok: true,
                    present: found.present,
                    error: None,
                    detail: found.detail.clone(),
                    millis,
                },
                found,
            ),
            Err(error) => (
                ProbeReport {
                    name: name.to_owned(),
                    ok: false,
                    present: false,
                    error: Some(error),
                    detail: None,
                    millis,
                },
                Found::default(),
            ),
        }
    }

    /// Runs a program through the runner, reusing an answer younger than `ttl`.
    async fn run(&self, program: &str, args: &[&str], ttl: Duration) -> Result<String, RunError> {
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        self.run_with(program, &args, &[], ttl).await
    }

    async fn run_with(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        ttl: Duration,
    ) -> Result<String, RunError> {
        let key = format!("{program} {}", args.join(" "));
        if let Some((at, answer)) = self
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            if at.elapsed() < ttl {
                return answer.clone();
            }
        }
        let answer = self
            .env
            .runner
            .run(program, args, env, self.env.timeout)
            .await;
        if !ttl.is_zero() {
            self.commands
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, (Instant::now(), answer.clone()));
        }
        answer
    }
}

/// A small sysfs file, trimmed; None when it is missing, unreadable or empty.
fn read_trimmed(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

/// A sysfs file holding one unsigned number.
fn read_u64(path: &std::path::Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Free memory of the GPUs and RAM in a report: the hardware probes' GPUs when they know their
/// free memory, else the backends' view of them.
pub fn available_from(report: &SystemReport) -> fit::Available {
    let gpus = |from_backend: bool| -> Vec<fit::GpuMemory> {
        report
            .accelerators
            .iter()
            .filter(|a| (a.source == "llama-server") == from_backend)
            .filter_map(|a| {
                Some(fit::GpuMemory {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    free_bytes: a.memory_free_bytes?,
                })
            })
            .collect()
    };
    // A llama-server that answered with no device is a CPU-only build: no layer goes to a GPU,
    // whatever the machine has.
    let backend_is_cpu_only = report
        .probes
        .iter()
        .any(|probe| probe.name == "llama-server" && probe.ok && !probe.present);
    fit::Available {
        gpus: if backend_is_cpu_only {
            Vec::new()
        } else {
            let hardware = gpus(false);
            if hardware.is_empty() {
                gpus(true)
            } else {
                hardware
            }
        },
        ram_bytes: report.memory.available_bytes,
    }
}

/// Measures how long `future` takes, in milliseconds.
async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, u64) {
    let start = Instant::now();
    let value = future.await;
    (
        value,
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    )
}

/// Blocking probe work (sysfs walks, NVML calls) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("the probe panicked: {e}"))
}
