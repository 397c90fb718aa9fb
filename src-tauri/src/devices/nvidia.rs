//! NVIDIA GPUs: NVML (the driver's library, loaded at run time, so a machine without the driver
//! runs the same binary), else `nvidia-smi`'s CSV. Also the GPU memory of each process, which
//! only NVML reports cheaply enough to sample every second.

use std::collections::HashMap;
use std::time::Duration;

use super::{Accelerator, Devices, Found, RunError, Vendor};

/// The query `nvidia-smi` answers, one GPU per line, in this order.
const SMI_FIELDS: &str = "index,name,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu,driver_version";

pub(super) async fn probe(devices: &Devices) -> Result<Found, String> {
    let nvml_absent = if devices.env.use_nvml {
        match super::blocking(nvml::gpus).await? {
            Ok(gpus) => return Ok(Found::devices(gpus, "NVML")),
            Err(nvml::Unavailable::Absent(why)) => why,
            Err(nvml::Unavailable::Failed(error)) => return Err(error),
        }
    } else {
        "NVML not used".to_owned()
    };
    let query = format!("--query-gpu={SMI_FIELDS}");
    match devices
        .run(
            "nvidia-smi",
            &[&query, "--format=csv,noheader,nounits"],
            Duration::ZERO,
        )
        .await
    {
        Ok(csv) => parse_smi(&csv).map(|gpus| Found::devices(gpus, "nvidia-smi")),
        Err(RunError::NotPresent(_)) => Ok(Found::absent(format!(
            "no NVIDIA driver: {nvml_absent}, and nvidia-smi is not installed"
        ))),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses `nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits` (MiB, %, °C).
pub(super) fn parse_smi(csv: &str) -> Result<Vec<Accelerator>, String> {
    let mut gpus = Vec::new();
    for line in csv.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        // The name may itself hold commas: it is everything between the index and the last six.
        if fields.len() < 8 {
            return Err(format!("unexpected nvidia-smi line: {line}"));
        }
        let tail = &fields[fields.len() - 6..];
        let name = fields[1..fields.len() - 6].join(", ");
        let mib = |value: &str| number(value).map(|mib: u64| mib * 1024 * 1024);
        let mut gpu = Accelerator::new(Vendor::Nvidia, name, "nvidia-smi", fields[0]);
        gpu.memory_total_bytes = mib(tail[0]);
        gpu.memory_used_bytes = mib(tail[1]);
        gpu.memory_free_bytes = mib(tail[2]);
        gpu.utilization_percent = number(tail[3]);
        gpu.temperature_c = number(tail[4]);
        gpu.driver = Some(tail[5])
            .filter(|v| !v.is_empty() && !v.starts_with('['))
            .map(str::to_owned);
        gpus.push(gpu);
    }
    Ok(gpus)
}

/// A number, or None for `[N/A]`, `[Not Supported]` and the like.
fn number<T: std::str::FromStr>(value: &str) -> Option<T> {
    value.trim().parse().ok()
}

/// GPU memory per pid on NVIDIA GPUs; None when NVML is not there.
pub(super) fn process_memory() -> Option<HashMap<u32, u64>> {
    nvml::process_memory()
}

#[cfg(any(target_os = "linux", target_os = "windows"))]
mod nvml {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::enums::device::UsedGpuMemory;
    use nvml_wrapper::error::NvmlError;
    use nvml_wrapper::Nvml;

    use super::super::{Accelerator, Vendor};

    pub(super) enum Unavailable {
        /// No driver: normal.
        Absent(String),
        Failed(String),
    }

    /// Loaded once: initialising NVML takes tens of milliseconds, and a driver installed later
    /// needs an engine restart anyway.
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();

    fn handle() -> Result<&'static Nvml, Unavailable> {
        NVML.get_or_init(|| {
            Nvml::init().map_err(|e| match e {
                NvmlError::LibloadingError(_) => "the NVML library is not installed".to_owned(),
                NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".to_owned(),
                NvmlError::NoPermission => "no permission to use NVML".to_owned(),
                other => format!("NVML failed to start: {other}"),
            })
        })
        .as_ref()
        .map_err(|why| Unavailable::Absent(why.clone()))
    }

    pub(super) fn gpus() -> Result<Vec<Accelerator>, Unavailable> {
        let nvml = handle()?;
        let failed = |e: NvmlError| Unavailable::Failed(format!("NVML: {e}"));
        let driver = nvml.sys_driver_version().ok();
        let count = nvml.device_count().map_err(failed)?;
        let mut gpus = Vec::new();
        for index in 0..count {
            let device = nvml.device_by_index(index).map_err(failed)?;
            let name = device.name().unwrap_or_else(|_| "NVIDIA GPU".to_owned());
            let mut gpu = Accelerator::new(Vendor::Nvidia, name, "nvml", index.to_string());
            if let Ok(memory) = device.memory_info() {
                gpu.memory_total_bytes = Some(memory.total);
                gpu.memory_used_bytes = Some(memory.used);
                gpu.memory_free_bytes = Some(memory.free);
            }
            gpu.utilization_percent = device.utilization_rates().ok().map(|u| u.gpu as f32);
            gpu.temperature_c = device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .map(|t| t as f32);
            gpu.driver.clone_from(&driver);
            gpus.push(gpu);
        }
        Ok(gpus)
    }

    pub(super) fn process_memory() -> Option<HashMap<u32, u64>> {
        let nvml = handle().ok()?;
        let mut used: HashMap<u32, u64> = HashMap::new();
        for index in 0..nvml.device_count().ok()? {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            for process in device.running_compute_processes().unwrap_or_default() {
                if let UsedGpuMemory::Used(bytes) = process.used_gpu_memory {
                    *used.entry(process.pid).or_default() += bytes;
                }
            }
        }
        Some(used)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "windows")))]
mod nvml {
    use std::collections::HashMap;

    use super::super::Accelerator;

    pub(super) enum Unavailable {
        Absent(String),
        #[allow(dead_code)] // only NVML's platforms fail
        Failed(String),
    }

    pub(super) fn gpus() -> Result<Vec<Accelerator>, Unavailable> {
        Err(Unavailable::Absent(
            "NVML does not exist on this OS".to_owned(),
        ))
    }

    pub(super) fn process_memory() -> Option<HashMap<u32, u64>> {
        None
    }
}
