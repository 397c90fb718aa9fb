//! The memory an instance is expected to take before it starts: the scheduler places starts by
//! it. Once an instance runs, what it really takes (the RSS of its process tree, its VRAM)
//! replaces the estimate, and the next start of that instance uses the measured figure.
//!
//! - llama.cpp, GGUF: the fit check's estimate (`devices::fit`: weights and KV cache on GPU and
//!   CPU by the layers offloaded, the compute buffer with the output layer, the logits in RAM).
//! - Hugging Face and MLX folders: the weights' bytes (the `.safetensors` files, stored in the
//!   dtype they load in) and a fifth more for the KV cache and activations; vLLM's on the GPU
//!   when there is one, MLX's in (unified) RAM.
//! - A model given as a Hugging Face repo id, or a file Corral cannot read: unknown, so memory
//!   does not hold the first start back; its measured footprint counts from then on.

use std::path::Path;

use super::placement::Footprint;
use crate::backends::{BackendOptions, BackendType};
use crate::devices::{fit, gguf};

/// Expected footprint of a start with `options`; `has_gpu` says whether a GPU will take layers
/// left to llama.cpp's choice. Reads files: call it off the async workers.
pub(super) fn estimate(options: &BackendOptions, has_gpu: bool) -> Option<Footprint> {
    let model = Path::new(options.model()?);
    match options.backend_type() {
        BackendType::LlamaCpp => llama(model, options, has_gpu),
        BackendType::Vllm => folder(model).map(|bytes| place(bytes, has_gpu)),
        BackendType::MlxLm => folder(model).map(|bytes| place(bytes, false)),
    }
}

fn llama(model: &Path, options: &BackendOptions, has_gpu: bool) -> Option<Footprint> {
    let header = gguf::read_header(model).ok()?;
    let estimate = fit::estimate(&header, options, has_gpu);
    Some(Footprint {
        ram_bytes: estimate.ram_bytes(),
        gpu_bytes: estimate.gpu_bytes(),
    })
}

/// The weights' bytes of a model folder, plus a fifth; `None` if it is not a readable folder
/// with weights.
fn folder(model: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(model).ok()?;
    let weights: u64 = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .path()
                .extension()
                .is_some_and(|ext| ext == "safetensors")
        })
        // Hugging Face caches link snapshots to blobs: the size of what the link points at.
        .filter_map(|entry| std::fs::metadata(entry.path()).ok())
        .map(|meta| meta.len())
        .sum();
    (weights > 0).then(|| weights.saturating_add(weights / 5))
}

fn place(bytes: u64, on_gpu: bool) -> Footprint {
    if on_gpu {
        Footprint {
            ram_bytes: 0,
            gpu_bytes: bytes,
        }
    } else {
        Footprint {
            ram_bytes: bytes,
            gpu_bytes: 0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    fn options(backend: BackendType, value: serde_json::Value) -> BackendOptions {
        BackendOptions::from_json(backend, &value).unwrap()
    }

    #[test]
    fn a_folder_counts_its_safetensors_and_a_fifth_more_on_the_device_its_backend_uses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let model = dir.path().to_string_lossy().into_owned();
        let vllm = options(BackendType::Vllm, json!({ "model": model }));
        assert_eq!(
            estimate(&vllm, true),
            Some(Footprint {
                ram_bytes: 0,
                gpu_bytes: 1200
            })
        );
        assert_eq!(
            estimate(&vllm, false),
            Some(Footprint {
                ram_bytes: 1200,
                gpu_bytes: 0
            })
        );
        let mlx = options(BackendType::MlxLm, json!({ "model": model }));
        assert_eq!(estimate(&mlx, true).unwrap().ram_bytes, 1200);
    }

    #[test]
    fn a_repo_id_or_an_unreadable_file_is_unknown() {
        let repo = options(
            BackendType::MlxLm,
            json!({ "model": "mlx-community/Qwen3-0.6B-4bit" }),
        );
        assert_eq!(estimate(&repo, false), None);
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.gguf");
        std::fs::write(&broken, b"not a gguf").unwrap();
        let llama = options(
            BackendType::LlamaCpp,
            json!({ "model": broken.to_string_lossy() }),
        );
        assert_eq!(estimate(&llama, false), None);
    }
}
