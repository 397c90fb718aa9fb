//! The fit check before a llama.cpp start: estimates the memory a GGUF model will take (weights +
//! KV cache) with the instance's options and compares it with the free memory of the device it
//! will load on.
//!
//! The estimate is deliberately simple, and a lower bound: compute buffers and the CUDA/Metal
//! context (a few hundred MiB) are not counted, so a warning means "will not fit", not "will fit".
//! - weights: the file's tensor data, as mapped;
//! - KV cache: `cells × layers × (k_width × bytes(cache_type_k) + v_width × bytes(cache_type_v))`,
//!   `k_width = key_length × head_count_kv` (key_length defaults to embedding_length / head_count,
//!   per-layer head counts take their largest entry);
//! - cells, as llama-server sizes its cache: `ctx_size` (the model's context length when unset or
//!   0) for a unified KV cache, which is what it uses when `parallel` is unset or -1 (auto) or
//!   `kv_unified` is set; with an explicit `parallel N` and no unified cache, every slot gets its
//!   own `ctx_size` cells, so N × ctx_size;
//! - device: `gpu_layers` > 0 puts that share of the layers (and of the cache) on the GPUs (their
//!   free memory summed, as the default layer split spreads them), the rest in RAM; 0 keeps
//!   everything in RAM; unset (llama.cpp's "auto") offloads everything when a GPU exists.

use std::path::Path;

use super::gguf::{self, Header};
use crate::backends::{BackendOptions, OptionValue};

/// What the model needs, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    /// Context length in tokens (per slot).
    pub context: u64,
    /// Tokens the KV cache holds in all.
    pub kv_cells: u64,
    /// Layers offloaded to the GPU, out of `layers`.
    pub gpu_layers: u64,
    pub layers: u64,
}

impl Estimate {
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes.saturating_add(self.kv_cache_bytes)
    }

    /// The share of the model on the GPUs.
    pub fn gpu_bytes(&self) -> u64 {
        if self.layers == 0 {
            return 0;
        }
        share(
            self.total_bytes(),
            self.gpu_layers.min(self.layers),
            self.layers,
        )
    }

    pub fn ram_bytes(&self) -> u64 {
        self.total_bytes() - self.gpu_bytes()
    }
}

/// Free memory of the devices a model can load on.
#[derive(Debug, Clone, PartialEq)]
pub struct Available {
    /// The GPUs' names and their free memory summed; None without a GPU whose free memory is known.
    pub gpu: Option<(String, u64)>,
    /// RAM the system can still hand out.
    pub ram_bytes: u64,
}

/// Bytes per element of a KV cache type (ggml's block sizes); None for a type llama.cpp lacks.
fn cache_type_bytes(cache_type: &str) -> Option<f64> {
    let (block_bytes, block_elements) = match cache_type.trim().to_ascii_lowercase().as_str() {
        "f32" => (4.0, 1.0),
        "f16" | "bf16" => (2.0, 1.0),
        "q8_0" => (34.0, 32.0),
        "q4_0" | "iq4_nl" => (18.0, 32.0),
        "q4_1" => (20.0, 32.0),
        "q5_0" => (22.0, 32.0),
        "q5_1" => (24.0, 32.0),
        _ => return None,
    };
    Some(block_bytes / block_elements)
}

fn int_option(options: &BackendOptions, name: &str) -> Option<i64> {
    match options.get(name) {
        Some(OptionValue::Int(value)) => Some(*value),
        _ => None,
    }
}

fn flag(options: &BackendOptions, name: &str) -> bool {
    matches!(options.get(name), Some(OptionValue::Bool(true)))
}

fn string_option<'a>(options: &'a BackendOptions, name: &str) -> Option<&'a str> {
    match options.get(name) {
        Some(OptionValue::String(value)) => Some(value),
        _ => None,
    }
}

/// Estimates the memory of `header`'s model under the llama.cpp `options`; `has_gpu` decides
/// where an unset `gpu_layers` puts the layers.
pub fn estimate(header: &Header, options: &BackendOptions, has_gpu: bool) -> Estimate {
    let layers = header.arch_uint("block_count").unwrap_or(0);
    let model_context = header.arch_uint("context_length").unwrap_or(0);
    let context = int_option(options, "ctx_size")
        .and_then(|ctx| u64::try_from(ctx).ok())
        .filter(|ctx| *ctx > 0)
        .unwrap_or(model_context);
    let parallel = int_option(options, "parallel").filter(|n| *n >= 1);
    let unified =
        flag(options, "kv_unified") || (parallel.is_none() && !flag(options, "no_kv_unified"));
    // llama-server's automatic slot count.
    let slots = parallel.map_or(4, |n| n.unsigned_abs());
    let per_slot = int_option(options, "kv_unified_per_slot")
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0);
    let kv_cells = match (int_option(options, "ctx_size").filter(|c| *c > 0), per_slot) {
        (None, Some(per_slot)) => slots.saturating_mul(per_slot),
        _ if unified => context,
        _ => context.saturating_mul(slots),
    };

    let embedding = header.arch_uint("embedding_length").unwrap_or(0);
    let heads = header.arch_uint("attention.head_count").unwrap_or(0);
    let kv_heads = header.arch_uint("attention.head_count_kv").unwrap_or(heads);
    let default_width = embedding.checked_div(heads).unwrap_or(0);
    let key_length = header
        .arch_uint("attention.key_length")
        .unwrap_or(default_width);
    let value_length = header
        .arch_uint("attention.value_length")
        .unwrap_or(default_width);
    let k_bytes =
        cache_type_bytes(string_option(options, "cache_type_k").unwrap_or("f16")).unwrap_or(2.0);
    let v_bytes =
        cache_type_bytes(string_option(options, "cache_type_v").unwrap_or("f16")).unwrap_or(2.0);
    // f64 keeps quantised types' fractional bytes, and cannot overflow on a file's absurd
    // numbers (the cast saturates); any real model stays far below 2^53.
    let per_cell_per_layer = key_length as f64 * kv_heads as f64 * k_bytes
        + value_length as f64 * kv_heads as f64 * v_bytes;
    let kv_cache_bytes = (per_cell_per_layer * layers as f64 * kv_cells as f64).ceil() as u64;

    let gpu_layers = match int_option(options, "gpu_layers") {
        Some(n) if n >= 0 => n.unsigned_abs().min(layers),
        _ if has_gpu => layers,
        _ => 0,
    };
    Estimate {
        weights_bytes: header.tensor_data_bytes(),
        kv_cache_bytes,
        context,
        kv_cells,
        gpu_layers,
        layers,
    }
}

/// Warnings for a start of the llama.cpp model at `model` with `options`, given what is free;
/// empty when it fits. A file that cannot be read is a warning too: the start will fail on it.
pub fn check(model: &Path, options: &BackendOptions, available: &Available) -> Vec<String> {
    let header = match gguf::read_header(model) {
        Ok(header) => header,
        Err(e) => return vec![format!("fit check skipped: {e}")],
    };
    warnings(
        &estimate(&header, options, available.gpu.is_some()),
        available,
    )
}

/// The warnings for an estimate against what is free.
pub fn warnings(estimate: &Estimate, available: &Available) -> Vec<String> {
    let mut warnings = Vec::new();
    let needs = |bytes: u64, place: &str| {
        format!(
            "the model needs about {} {place} (weights {} + KV cache {} for {} tokens)",
            gib(bytes),
            gib(share(estimate.weights_bytes, bytes, estimate.total_bytes())),
            gib(share(
                estimate.kv_cache_bytes,
                bytes,
                estimate.total_bytes()
            )),
            estimate.kv_cells,
        )
    };
    let gpu_bytes = estimate.gpu_bytes();
    if gpu_bytes > 0 {
        if let Some((name, free)) = &available.gpu {
            if gpu_bytes > *free {
                warnings.push(format!(
                    "{} but {name} has {} free: lower gpu_layers or ctx_size, or use a smaller quantisation",
                    needs(gpu_bytes, "of GPU memory"),
                    gib(*free)
                ));
            }
        }
    }
    let ram_bytes = estimate.ram_bytes();
    if ram_bytes > available.ram_bytes {
        warnings.push(format!(
            "{} but only {} is available: lower ctx_size, offload layers to a GPU, or use a smaller quantisation",
            needs(ram_bytes, "of RAM"),
            gib(available.ram_bytes)
        ));
    }
    warnings
}

/// `part × of / whole`, without overflow.
fn share(part: u64, of: u64, whole: u64) -> u64 {
    let share = u128::from(part) * u128::from(of) / u128::from(whole.max(1));
    u64::try_from(share).unwrap_or(u64::MAX)
}

pub fn gib(bytes: u64) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib >= 10.0 {
        format!("{gib:.0} GiB")
    } else if gib >= 0.1 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::super::gguf::writer::{gguf, Meta};
    use super::*;
    use crate::backends::BackendType;
    use serde_json::json;

    const MIB: u64 = 1 << 20;

    fn options(value: serde_json::Value) -> BackendOptions {
        BackendOptions::from_json(BackendType::LlamaCpp, &value).unwrap()
    }

    /// An 8-layer model: 512-wide embeddings, 8 heads, 2 KV heads (key width 64 × 2 = 128),
    /// a 4096-token context, and `weights` bytes of tensor data.
    fn model(dir: &tempfile::TempDir, weights: u64) -> std::path::PathBuf {
        let bytes = gguf(
            &[
                ("general.architecture", Meta::Str("llama")),
                ("llama.block_count", Meta::U32(8)),
                ("llama.context_length", Meta::U32(4096)),
                ("llama.embedding_length", Meta::U32(512)),
                ("llama.attention.head_count", Meta::U32(8)),
                ("llama.attention.head_count_kv", Meta::U32(2)),
            ],
            &[("token_embd.weight", &[512, 1000], 1)],
            weights,
        );
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn header(path: &Path) -> Header {
        gguf::read_header(path).unwrap()
    }

    #[test]
    fn kv_cache_follows_context_parallel_and_cache_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = model(&dir, 3 * MIB);
        let h = header(&path);
        // per token: 8 layers × (128 + 128) × 2 bytes = 4 KiB
        let default = estimate(&h, &options(json!({})), false);
        assert_eq!(default.weights_bytes, 3 * MIB);
        assert_eq!(default.context, 4096);
        assert_eq!(default.kv_cache_bytes, 4096 * 4096);

        let small = estimate(&h, &options(json!({"ctx_size": 1024})), false);
        assert_eq!(small.kv_cache_bytes, 1024 * 4096);

        let slots = estimate(
            &h,
            &options(json!({"ctx_size": 1024, "parallel": 3})),
            false,
        );
        assert_eq!(slots.kv_cells, 3 * 1024);
        assert_eq!(slots.kv_cache_bytes, 3 * 1024 * 4096);

        let unified = estimate(
            &h,
            &options(json!({"ctx_size": 1024, "parallel": 3, "kv_unified": true})),
            false,
        );
        assert_eq!(unified.kv_cells, 1024);

        let quantised = estimate(
            &h,
            &options(json!({"ctx_size": 1024, "cache_type_k": "q8_0", "cache_type_v": "q4_0"})),
            false,
        );
        // 8 × 1024 × 128 × (34/32 + 18/32)
        assert_eq!(quantised.kv_cache_bytes, 8 * 1024 * 128 * 52 / 32);
    }

    #[test]
    fn a_model_larger_than_free_gpu_memory_warns_and_a_smaller_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = model(&dir, 40 * MIB);
        let gpu = |free| Available {
            gpu: Some(("Test GPU".into(), free)),
            ram_bytes: 1 << 40,
        };
        // 40 MiB of weights + 16 MiB of KV cache for 4096 tokens.
        let on_gpu = options(json!({"gpu_layers": 99}));
        let warned = check(&path, &on_gpu, &gpu(50 * MIB));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains("Test GPU has 50.0 MiB free"),
            "{}",
            warned[0]
        );
        assert!(
            warned[0].contains("56.0 MiB of GPU memory"),
            "{}",
            warned[0]
        );
        assert!(check(&path, &on_gpu, &gpu(60 * MIB)).is_empty());
        // A shorter context makes it fit.
        let short = options(json!({"gpu_layers": 99, "ctx_size": 512}));
        assert!(check(&path, &short, &gpu(50 * MIB)).is_empty());
        // Half the layers on the GPU need half the memory there, the rest in RAM.
        let half = options(json!({"gpu_layers": 4}));
        assert!(check(&path, &half, &gpu(30 * MIB)).is_empty());
    }

    #[test]
    fn without_gpu_layers_the_model_is_checked_against_ram() {
        let dir = tempfile::tempdir().unwrap();
        let path = model(&dir, 40 * MIB);
        let ram_only = |ram_bytes| Available {
            gpu: None,
            ram_bytes,
        };
        let warned = check(&path, &options(json!({})), &ram_only(20 * MIB));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("of RAM"), "{}", warned[0]);
        assert!(check(&path, &options(json!({})), &ram_only(100 * MIB)).is_empty());
        // gpu_layers 0 keeps it in RAM even with a GPU.
        let gpu_too = Available {
            gpu: Some(("Test GPU".into(), 1 << 40)),
            ram_bytes: 20 * MIB,
        };
        assert_eq!(
            check(&path, &options(json!({"gpu_layers": 0})), &gpu_too).len(),
            1
        );
        // Unset gpu_layers with a GPU offloads everything.
        assert!(check(&path, &options(json!({})), &gpu_too).is_empty());
    }

    #[test]
    fn an_unreadable_model_is_a_warning_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.gguf");
        let warned = check(
            &path,
            &options(json!({})),
            &Available {
                gpu: None,
                ram_bytes: 1 << 40,
            },
        );
        assert_eq!(warned.len(), 1);
        assert!(warned[0].starts_with("fit check skipped"), "{}", warned[0]);
    }

    #[test]
    fn the_real_tiny_model_fits_in_a_megabyte_of_kv_cache() {
        let model = std::env::var("CORRAL_TEST_MODEL")
            .expect("CORRAL_TEST_MODEL is not set: run the tests through scripts/test.sh");
        let h = header(Path::new(&model));
        let e = estimate(&h, &options(json!({})), false);
        // 2 layers × (16 × 2 + 16 × 2) × 2 bytes × 512 tokens
        assert_eq!(e.kv_cache_bytes, 2 * 64 * 2 * 512);
        let size = std::fs::metadata(&model).unwrap().len();
        assert!(e.weights_bytes < size && e.weights_bytes > size / 2);
        assert!(check(
            Path::new(&model),
            &options(json!({})),
            &Available {
                gpu: None,
                ram_bytes: 10 * size,
            }
        )
        .is_empty());
    }
}
