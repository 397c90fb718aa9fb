//! The probes against recorded sysfs trees and command outputs (`tests/fixtures/devices/`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::runner::{CommandRunner, RunError, RunFuture};
use super::*;
use crate::config::BackendCommand;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/devices")
}

fn recorded(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("commands").join(name)).unwrap()
}

/// Answers command lines with recorded outputs; a program it does not know is not installed.
#[derive(Default)]
struct Recorded {
    answers: HashMap<String, Result<String, RunError>>,
    /// Programs that never answer.
    hanging: Vec<String>,
    calls: AtomicUsize,
}

impl Recorded {
    fn answer(mut self, command_line: &str, output: Result<String, RunError>) -> Self {
        self.answers.insert(command_line.to_owned(), output);
        self
    }
}

impl CommandRunner for Recorded {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        _env: &'a [(String, String)],
        _timeout: Duration,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hanging.iter().any(|hanging| hanging == program) {
                std::future::pending::<()>().await;
            }
            let line = format!("{program} {}", args.join(" "));
            self.answers
                .get(&line)
                .cloned()
                .unwrap_or_else(|| Err(RunError::NotPresent(program.to_owned())))
        })
    }
}

const NVIDIA_SMI: &str = "nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu,driver_version --format=csv,noheader,nounits";
const LIST_DEVICES: &str = "llama-server --list-devices";

fn env(root: &str, runner: Recorded) -> ProbeEnv {
    ProbeEnv {
        root: fixtures().join(root),
        runner: Arc::new(runner),
        llama_server: Some(BackendCommand {
            command: "llama-server".into(),
            args: Vec::new(),
            environment: Default::default(),
        }),
        use_nvml: false,
        apple: false,
        timeout: Duration::from_secs(5),
    }
}

async fn report(env: ProbeEnv) -> SystemReport {
    Devices::new(env).report().await
}

fn probe<'a>(report: &'a SystemReport, name: &str) -> &'a ProbeReport {
    report
        .probes
        .iter()
        .find(|probe| probe.name == name)
        .unwrap_or_else(|| panic!("no probe {name} in {:?}", report.probes))
}

#[tokio::test]
async fn a_machine_without_gpus_answers_with_its_cpu_and_no_accelerators() {
    let report = report(env("empty", Recorded::default())).await;
    assert!(report.accelerators.is_empty(), "{:?}", report.accelerators);
    assert!(report.cpu.threads > 0);
    assert!(report.memory.total_bytes > 0);
    assert!(report.memory.available_bytes <= report.memory.total_bytes);
    assert!(!report.os.arch.is_empty());
    for name in ["host", "nvidia", "amd", "intel", "llama-server"] {
        let probe = probe(&report, name);
        assert!(probe.ok, "{probe:?}");
        assert_eq!(probe.present, name == "host", "{probe:?}");
        assert!(probe.error.is_none());
    }
    assert!(probe(&report, "nvidia")
        .detail
        .as_deref()
        .unwrap()
        .contains("nvidia-smi is not installed"));
    assert_eq!(report.suggested_backend, BackendType::LlamaCpp);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["accelerators"], serde_json::json!([]));
    assert_eq!(json["suggested_backend"], "llama_cpp");
}

#[tokio::test]
async fn nvidia_smi_reports_each_gpu_with_memory_use_and_temperature() {
    let runner = Recorded::default().answer(NVIDIA_SMI, Ok(recorded("nvidia-smi.csv")));
    let report = report(env("empty", runner)).await;
    let gpus: Vec<&Accelerator> = report
        .accelerators
        .iter()
        .filter(|a| a.source == "nvidia-smi")
        .collect();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].vendor, Vendor::Nvidia);
    assert_eq!(gpus[0].name, "NVIDIA GeForce RTX 4090");
    assert_eq!(gpus[0].memory_total_bytes, Some(24564 * MIB));
    assert_eq!(gpus[0].memory_used_bytes, Some(1877 * MIB));
    assert_eq!(gpus[0].memory_free_bytes, Some(22325 * MIB));
    assert_eq!(gpus[0].utilization_percent, Some(7.0));
    assert_eq!(gpus[0].temperature_c, Some(43.0));
    assert_eq!(gpus[0].driver.as_deref(), Some("550.54.14"));
    // `[N/A]` is unknown, not zero.
    assert_eq!(gpus[1].name, "NVIDIA A100-SXM4-80GB");
    assert_eq!(gpus[1].temperature_c, None);
    assert!(probe(&report, "nvidia").present);
}

#[tokio::test]
async fn amdgpu_sysfs_gives_vram_busy_and_temperature_named_by_rocm_smi() {
    let runner = Recorded::default().answer(
        "rocm-smi --showproductname",
        Ok(recorded("rocm-smi-showproductname.txt")),
    );
    let report = report(env("amdgpu", runner)).await;
    assert_eq!(report.accelerators.len(), 1, "{:?}", report.accelerators);
    let gpu = &report.accelerators[0];
    assert_eq!(gpu.vendor, Vendor::Amd);
    assert_eq!(gpu.id, "card0");
    assert_eq!(gpu.name, "Navi 31 [Radeon RX 7900 XT/7900 XTX]");
    assert_eq!(gpu.memory_total_bytes, Some(25_753_026_560));
    assert_eq!(gpu.memory_used_bytes, Some(1_384_120_320));
    assert_eq!(gpu.memory_free_bytes, Some(25_753_026_560 - 1_384_120_320));
    assert_eq!(gpu.utilization_percent, Some(12.0));
    assert_eq!(gpu.temperature_c, Some(52.0));
    assert_eq!(gpu.driver.as_deref(), Some("amdgpu"));
    assert!(!gpu.unified);
}

#[tokio::test]
async fn without_rocm_smi_an_amd_gpu_is_named_from_the_pci_ids() {
    let report = report(env("amdgpu", Recorded::default())).await;
    assert_eq!(
        report.accelerators[0].name,
        "Navi 31 [Radeon RX 7900 XT/7900 XTX/7900 GRE/7900M]"
    );
}

#[tokio::test]
async fn intel_integrated_gpus_share_ram_and_discrete_ones_have_vram() {
    let report = report(env("intel", Recorded::default())).await;
    assert_eq!(report.accelerators.len(), 2, "{:?}", report.accelerators);
    let integrated = &report.accelerators[0];
    assert_eq!(integrated.vendor, Vendor::Intel);
    assert_eq!(integrated.name, "Raptor Lake-P [Iris Xe Graphics]");
    assert_eq!(integrated.driver.as_deref(), Some("i915"));
    assert!(integrated.unified);
    assert_eq!(
        integrated.memory_total_bytes,
        Some(report.memory.total_bytes)
    );
    assert!(integrated.memory_free_bytes.is_some());
    let discrete = &report.accelerators[1];
    assert_eq!(discrete.name, "DG2 [Arc A770]");
    assert_eq!(discrete.driver.as_deref(), Some("xe"));
    assert!(!discrete.unified);
    assert_eq!(discrete.memory_total_bytes, Some(17_163_091_968));
    assert_eq!(discrete.temperature_c, Some(48.0));
}

#[test]
fn list_devices_outputs_of_cuda_metal_vulkan_and_cpu_builds_parse() {
    let cuda = llama::parse_list_devices(&recorded("list-devices-cuda.txt")).unwrap();
    assert_eq!(cuda.len(), 2);
    assert_eq!(cuda[0].id, "CUDA0");
    assert_eq!(cuda[0].name, "NVIDIA GeForce RTX 4090");
    assert_eq!(cuda[0].vendor, Vendor::Nvidia);
    assert_eq!(cuda[0].memory_total_bytes, Some(24080 * MIB));
    assert_eq!(cuda[0].memory_free_bytes, Some(22325 * MIB));
    assert_eq!(cuda[0].driver.as_deref(), Some("CUDA"));
    assert_eq!(cuda[1].id, "CUDA1");

    let metal = llama::parse_list_devices(&recorded("list-devices-metal.txt")).unwrap();
    assert_eq!(metal.len(), 1);
    assert_eq!(metal[0].vendor, Vendor::Apple);
    assert_eq!(metal[0].name, "Apple M2 Pro");
    assert!(metal[0].unified);
    assert_eq!(metal[0].memory_total_bytes, Some(21845 * MIB));
    assert_eq!(metal[0].driver.as_deref(), Some("Metal"));

    let vulkan = llama::parse_list_devices(&recorded("list-devices-vulkan.txt")).unwrap();
    assert_eq!(vulkan.len(), 1);
    // Parentheses inside the name stay in the name.
    assert_eq!(vulkan[0].name, "AMD Radeon RX 7900 XTX (RADV NAVI31)");
    assert_eq!(vulkan[0].vendor, Vendor::Amd);
    assert_eq!(vulkan[0].memory_free_bytes, Some(23968 * MIB));
    assert_eq!(vulkan[0].driver.as_deref(), Some("Vulkan"));

    let cpu = llama::parse_list_devices(&recorded("list-devices-cpu.txt")).unwrap();
    assert!(cpu.is_empty(), "{cpu:?}");

    assert!(llama::parse_list_devices("error: unknown argument: --list-devices").is_err());
}

#[tokio::test]
async fn the_backends_view_joins_the_list_and_a_cpu_only_build_keeps_models_off_the_gpu() {
    let runner = Recorded::default()
        .answer(NVIDIA_SMI, Ok(recorded("nvidia-smi.csv")))
        .answer(LIST_DEVICES, Ok(recorded("list-devices-cuda.txt")));
    let with_cuda = report(env("empty", runner)).await;
    let from_backend: Vec<&str> = with_cuda
        .accelerators
        .iter()
        .filter(|a| a.source == "llama-server")
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(from_backend, ["CUDA0", "CUDA1"]);
    let available = available_from(&with_cuda);
    // The hardware probe's numbers win over the backend's.
    let gpus: Vec<(&str, u64)> = available
        .gpus
        .iter()
        .map(|gpu| (gpu.id.as_str(), gpu.free_bytes))
        .collect();
    assert_eq!(gpus, [("0", 22325 * MIB), ("1", 81050 * MIB)]);
    let (name, free) = available.gpu_pool().unwrap();
    assert_eq!(free, (22325 + 81050) * MIB);
    assert!(name.contains("RTX 4090") && name.contains("A100"), "{name}");

    let runner = Recorded::default()
        .answer(NVIDIA_SMI, Ok(recorded("nvidia-smi.csv")))
        .answer(LIST_DEVICES, Ok(recorded("list-devices-cpu.txt")));
    let cpu_build = report(env("empty", runner)).await;
    assert!(probe(&cpu_build, "llama-server").ok);
    assert!(!probe(&cpu_build, "llama-server").present);
    assert!(available_from(&cpu_build).gpus.is_empty());
}

#[tokio::test]
async fn apple_silicon_reports_chip_gpu_cores_unified_memory_and_suggests_mlx() {
    let runner = Recorded::default()
        .answer(
            "sysctl -n machdep.cpu.brand_string hw.memsize",
            Ok(recorded("sysctl.txt")),
        )
        .answer(
            "system_profiler SPDisplaysDataType -json",
            Ok(recorded("system_profiler-SPDisplaysDataType.json")),
        )
        .answer(LIST_DEVICES, Ok(recorded("list-devices-metal.txt")));
    let mut apple = env("empty", runner);
    apple.apple = true;
    let report = report(apple).await;
    let chip = report
        .accelerators
        .iter()
        .find(|a| a.source == "system_profiler")
        .unwrap();
    assert_eq!(chip.vendor, Vendor::Apple);
    assert_eq!(chip.name, "Apple M2 Pro");
    assert_eq!(chip.cores, Some(19));
    assert!(chip.unified);
    assert_eq!(chip.memory_total_bytes, Some(32 * GIB));
    assert_eq!(report.suggested_backend, BackendType::MlxLm);
    let metal = report
        .accelerators
        .iter()
        .find(|a| a.source == "llama-server")
        .unwrap();
    assert_eq!(metal.id, "MTL0");

    assert_eq!(
        apple::parse_sysctl("Intel(R) Core(TM) i9\n"),
        (Some("Intel(R) Core(TM) i9".into()), None)
    );
    assert_eq!(apple::parse_gpu_cores("{}"), None);
}

#[test]
fn rocm_smi_names_fall_back_to_the_model_and_skip_bare_ids() {
    let names = amd::parse_rocm_product_names(
        "GPU[0]\t\t: Card series: \t\tRadeon RX 6800\nGPU[1]\t\t: Card model: \t\tRadeon Pro W6800\nGPU[2]\t\t: Card model: \t\t0x73a3\n",
    );
    assert_eq!(
        names,
        [
            Some("Radeon RX 6800".to_owned()),
            Some("Radeon Pro W6800".to_owned()),
            None
        ]
    );
    // An index is not a size: a huge one is skipped, not allocated for.
    let names = amd::parse_rocm_product_names(&format!(
        "GPU[{}]\t\t: Card series: \t\tHuge\nGPU[0]\t\t: Card series: \t\tRadeon\n",
        usize::MAX
    ));
    assert_eq!(names, [Some("Radeon".to_owned())]);
}

#[tokio::test]
async fn a_hanging_or_failing_probe_is_reported_and_the_rest_still_answers() {
    let runner = Recorded {
        hanging: vec!["llama-server".into()],
        ..Recorded::default()
    }
    .answer(
        NVIDIA_SMI,
        Err(RunError::Failed {
            program: "nvidia-smi".into(),
            status: "exit status: 9".into(),
            output: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
                .into(),
        }),
    );
    let mut env = env("amdgpu", runner);
    env.timeout = Duration::from_millis(300);
    let report = report(env).await;
    let llama = probe(&report, "llama-server");
    assert!(!llama.ok);
    assert!(
        llama.error.as_deref().unwrap().contains("did not finish"),
        "{llama:?}"
    );
    let nvidia = probe(&report, "nvidia");
    assert!(!nvidia.ok);
    assert!(nvidia
        .error
        .as_deref()
        .unwrap()
        .contains("couldn't communicate"));
    // The AMD card is still there.
    assert_eq!(report.accelerators.len(), 1);
    assert!(probe(&report, "amd").ok);
}

#[tokio::test]
async fn the_report_is_reused_for_a_second_and_static_commands_for_longer() {
    let runner = Arc::new(
        Recorded::default()
            .answer(NVIDIA_SMI, Ok(recorded("nvidia-smi.csv")))
            .answer(LIST_DEVICES, Ok(recorded("list-devices-cuda.txt"))),
    );
    let mut env = env("empty", Recorded::default());
    env.runner = runner.clone();
    let devices = Devices::new(env);
    devices.report().await;
    let after_first = runner.calls.load(Ordering::SeqCst);
    assert_eq!(after_first, 2);
    devices.report().await;
    assert_eq!(runner.calls.load(Ordering::SeqCst), after_first);
    tokio::time::sleep(REPORT_TTL + Duration::from_millis(100)).await;
    devices.report().await;
    // nvidia-smi again (live memory), llama-server not (its list is static).
    assert_eq!(runner.calls.load(Ordering::SeqCst), after_first + 1);
}

#[cfg(unix)]
#[tokio::test]
async fn a_hanging_llama_server_times_out_once_and_is_not_started_on_every_poll() {
    let mut env = env("empty", Recorded::default());
    env.runner = Arc::new(SystemRunner);
    // `sh -c 'sleep 30' --list-devices`: a llama-server that never answers.
    env.llama_server = Some(BackendCommand {
        command: "sh".into(),
        args: vec!["-c".into(), "sleep 30".into()],
        environment: Default::default(),
    });
    env.timeout = Duration::from_millis(300);
    let devices = Devices::new(env);
    let first = devices.report().await;
    let llama = probe(&first, "llama-server");
    assert!(!llama.ok);
    assert!(
        llama.error.as_deref().unwrap().contains("did not finish"),
        "{llama:?}"
    );
    tokio::time::sleep(REPORT_TTL + Duration::from_millis(100)).await;
    let second = devices.report().await;
    let again = probe(&second, "llama-server");
    assert!(!again.ok);
    // The cached failure answers at once instead of waiting for another timeout.
    assert!(again.millis < 250, "{again:?}");
}
