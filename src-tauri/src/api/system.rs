//! `/api/v1/system`: the machine's report (OS, CPU, RAM, accelerators, the backends' view), and
//! the GGUF fit check that create, update and start answer with.

use axum::extract::State;
use axum::Json;

use super::Api;
use crate::backends::{BackendOptions, BackendType};
use crate::devices::{fit, Resources, SystemReport};

/// What this machine has: OS, CPU, memory, GPUs and other accelerators (from NVML or
/// nvidia-smi, amdgpu and i915/xe sysfs, Apple's sysctl and system_profiler, and llama-server's
/// `--list-devices`), and how each probe went. A probe that fails is reported in `probes`, never
/// as an error. Cached for a second.
#[utoipa::path(get, path = "/api/v1/system", tag = "system",
    responses((status = 200, description = "The system report", body = SystemReport)))]
pub async fn system(State(api): State<Api>) -> Json<SystemReport> {
    Json(api.devices.report().await)
}

/// Warnings for starting a llama.cpp backend with `backend` options now: empty when its GGUF model fits
/// in the free memory of the device it will load on, or when there is nothing to check (another
/// backend, a model from a hub). `running` is what the instance uses now, if it runs: a restart
/// gives that memory back first.
pub(super) async fn fit_warnings(
    api: &Api,
    backend: &BackendOptions,
    running: Option<Resources>,
) -> Vec<String> {
    if backend.backend_type() != BackendType::LlamaCpp {
        return Vec::new();
    }
    let Some(model) = backend.model().map(std::path::PathBuf::from) else {
        return Vec::new();
    };
    let mut available = api.devices.available().await;
    if let Some(running) = running {
        available.ram_bytes = available.ram_bytes.saturating_add(running.rss_bytes);
        // A restart frees what the instance holds; its VRAM is counted once, on the first GPU,
        // as the check pools the GPUs anyway.
        if let (Some(gpu), Some(vram)) = (available.gpus.first_mut(), running.vram_bytes) {
            gpu.free_bytes = gpu.free_bytes.saturating_add(vram);
        }
    }
    let backend = backend.clone();
    tokio::task::spawn_blocking(move || fit::check(&model, &backend, &available))
        .await
        .unwrap_or_else(|e| vec![format!("fit check skipped: {e}")])
}
