//! Apple Silicon: the chip (`sysctl machdep.cpu.brand_string`), its unified memory
//! (`hw.memsize`) and GPU cores (`system_profiler SPDisplaysDataType -json`). Runs on macOS only;
//! the parsers are plain functions tested everywhere. Metal's recommended working set, what a
//! model may really use, comes from llama-server's own view (its Metal device's total).

use super::{Accelerator, Devices, Found, RunError, Vendor, STATIC_COMMAND_TTL};

pub(super) async fn probe(devices: &Devices) -> Result<Found, String> {
    let sysctl = match devices
        .run(
            "sysctl",
            &["-n", "machdep.cpu.brand_string", "hw.memsize"],
            STATIC_COMMAND_TTL,
        )
        .await
    {
        Ok(text) => text,
        Err(RunError::NotPresent(_)) => return Ok(Found::absent("sysctl is not available")),
        Err(e) => return Err(e.to_string()),
    };
    let (chip, memory) = parse_sysctl(&sysctl);
    let Some(chip) = chip.filter(|chip| chip.starts_with("Apple")) else {
        return Ok(Found::absent("not an Apple Silicon Mac"));
    };
    // The GPU cores are a nicety: without system_profiler the chip is still reported.
    let cores = devices
        .run(
            "system_profiler",
            &["SPDisplaysDataType", "-json"],
            STATIC_COMMAND_TTL,
        )
        .await
        .ok()
        .and_then(|json| parse_gpu_cores(&json));
    let mut gpu = Accelerator::new(Vendor::Apple, chip, "system_profiler", "0");
    gpu.memory_total_bytes = memory;
    gpu.unified = true;
    gpu.cores = cores;
    gpu.driver = Some("Metal".to_owned());
    Ok(Found::devices(vec![gpu], "sysctl, system_profiler"))
}

/// `sysctl -n machdep.cpu.brand_string hw.memsize`: the chip's name, then the memory in bytes.
pub(super) fn parse_sysctl(text: &str) -> (Option<String>, Option<u64>) {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let chip = lines.next().map(str::to_owned);
    let memory = lines.next().and_then(|line| line.parse().ok());
    (chip, memory)
}

/// GPU cores of the first Apple GPU in `system_profiler SPDisplaysDataType -json`
/// (`sppci_cores`, a string such as `"19"`).
pub(super) fn parse_gpu_cores(json: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value
        .get("SPDisplaysDataType")?
        .as_array()?
        .iter()
        .filter(|gpu| {
            gpu.get("sppci_vendor")
                .and_then(serde_json::Value::as_str)
                .is_none_or(|vendor| vendor.contains("Apple"))
        })
        .find_map(|gpu| match gpu.get("sppci_cores")? {
            serde_json::Value::String(cores) => cores.trim().parse().ok(),
            serde_json::Value::Number(cores) => cores.as_u64().and_then(|c| u32::try_from(c).ok()),
            _ => None,
        })
}
