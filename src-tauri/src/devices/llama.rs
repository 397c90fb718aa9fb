//! The backends' own view: `llama-server --list-devices` of the configured command, parsed into
//! accelerators. It shows what llama.cpp will really use (CUDA, Metal, Vulkan, ROCm, SYCL...) and,
//! on Apple Silicon, Metal's recommended working set as the device's memory.

use super::{Accelerator, Devices, Found, RunError, Vendor, STATIC_COMMAND_TTL};

pub(super) async fn probe(devices: &Devices) -> Result<Found, String> {
    let Some(command) = devices.env.llama_server.as_ref() else {
        return Ok(Found::absent("no llama-server configured"));
    };
    let mut args = command.args.clone();
    args.push("--list-devices".to_owned());
    let env: Vec<(String, String)> = command
        .environment
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    match devices
        .run_with(&command.command, &args, &env, STATIC_COMMAND_TTL)
        .await
    {
        Ok(text) => {
            let gpus = parse_list_devices(&text)?;
            let detail = if gpus.is_empty() {
                "llama-server sees no GPU: it runs on the CPU".to_owned()
            } else {
                format!("{} --list-devices", command.command)
            };
            Ok(Found {
                present: !gpus.is_empty(),
                accelerators: gpus,
                detail: Some(detail),
            })
        }
        Err(RunError::NotPresent(program)) => Ok(Found::absent(format!(
            "{program} is not installed (backends.llama-cpp.command)"
        ))),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses the device list after `Available devices:`, one per line:
/// `  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23664 MiB free)`. A CPU-only build lists
/// nothing (or `(none)`).
pub(super) fn parse_list_devices(text: &str) -> Result<Vec<Accelerator>, String> {
    let Some((_, list)) = text.split_once("Available devices:") else {
        return Err("llama-server --list-devices printed no device list".to_owned());
    };
    let mut devices = Vec::new();
    for line in list.lines().map(str::trim) {
        let Some((id, rest)) = line.split_once(": ") else {
            // Backends print their own lines after the list on some versions; the list ends at
            // the first line that is not a device.
            if line.is_empty() || line == "(none)" {
                continue;
            }
            break;
        };
        if id.contains(' ') {
            break;
        }
        let (name, total, free) = split_memory(rest);
        let mut device = Accelerator::new(vendor(id, &name), name, "llama-server", id);
        device.memory_total_bytes = total;
        device.memory_free_bytes = free;
        device.unified = id.starts_with("MTL") || id.starts_with("Metal");
        device.driver = Some(backend_of(id).to_owned());
        devices.push(device);
    }
    Ok(devices)
}

/// `NAME (T MiB, F MiB free)` -> name and sizes in bytes; the name itself may hold parentheses.
fn split_memory(rest: &str) -> (String, Option<u64>, Option<u64>) {
    let rest = rest.trim();
    let parsed = rest.strip_suffix(')').and_then(|body| {
        let open = body.rfind('(')?;
        let (total, free) = body[open + 1..].split_once(',')?;
        let mib = |text: &str, suffix: &str| -> Option<u64> {
            let number: u64 = text.trim().strip_suffix(suffix)?.trim().parse().ok()?;
            Some(number * 1024 * 1024)
        };
        Some((
            body[..open].trim().to_owned(),
            mib(total, "MiB")?,
            mib(free, "MiB free")?,
        ))
    });
    match parsed {
        Some((name, total, free)) => (name, Some(total), Some(free)),
        None => (rest.to_owned(), None, None),
    }
}

/// The ggml backend a device id belongs to: `CUDA0` -> `CUDA`.
fn backend_of(id: &str) -> &str {
    match id {
        _ if id.starts_with("MTL") => "Metal",
        _ => id.trim_end_matches(|c: char| c.is_ascii_digit()),
    }
}

fn vendor(id: &str, name: &str) -> Vendor {
    let name = name.to_ascii_lowercase();
    if id.starts_with("CUDA") || name.contains("nvidia") || name.contains("geforce") {
        Vendor::Nvidia
    } else if id.starts_with("ROCm") || name.contains("amd") || name.contains("radeon") {
        Vendor::Amd
    } else if id.starts_with("SYCL") || name.contains("intel") {
        Vendor::Intel
    } else if id.starts_with("MTL") || id.starts_with("Metal") || name.contains("apple") {
        Vendor::Apple
    } else {
        Vendor::Other
    }
}
