//! The fit check before a llama.cpp start, and the model library's verdict: estimates the memory
//! a GGUF model will take with the instance's options and compares it with the free memory of
//! the devices it can load on.
//!
//! The estimate follows what llama-server allocates, checked against the sizes it logs
//! (`tests/fit_real.rs` runs it); the CUDA/Metal context itself (a few hundred MiB) is not
//! counted, so a warning means "will not fit", not "will fit":
//! - weights: the file's tensor data, as mapped;
//! - KV cache: `cells × layers × (k_width × bytes(cache_type_k) + v_width × bytes(cache_type_v))`,
//!   `k_width = key_length × head_count_kv` (key_length defaults to embedding_length / head_count,
//!   per-layer head counts take their largest entry). `cells` is `ctx_size` (the model's context
//!   length when unset or 0), shared by the slots: with a unified cache (llama-server's choice
//!   when `parallel` is auto) any slot may use all of it, otherwise each slot gets
//!   `ctx_size / parallel`. `kv_unified_per_slot N` without a `ctx_size` makes it `slots × N`;
//! - compute buffer: one micro-batch (`ubatch_size`, at most `batch_size`; 512) through the
//!   graph: the attention mask (f16, a slot's cells × micro-batch), without flash attention the
//!   f32 scores of every head too, and the activations, a few embedding and feed-forward widths
//!   per token. Flash attention's `auto` counts as on, as llama-server picks it where it can;
//! - output buffer: one row of logits (`vocab` floats) per slot, in host memory;
//! - device: `gpu_layers` > 0 puts that share of the layers (and of the cache) on the GPUs, the
//!   rest in RAM; 0 keeps everything in RAM; unset (llama.cpp's "auto") offloads everything when
//!   a GPU exists. The compute buffer sits with the output layer: on the GPU only when every
//!   layer is.

use std::path::Path;

use super::gguf::{self, Header};
use crate::backends::{BackendOptions, OptionValue};

/// llama-server's defaults for what it is not told.
const DEFAULT_UBATCH: u64 = 512;
const DEFAULT_BATCH: u64 = 2048;
/// Slots when `parallel` is auto.
const AUTO_SLOTS: u64 = 4;

/// What the model needs, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    /// The compute buffer of one micro-batch.
    pub compute_bytes: u64,
    /// The logits' buffer, always in RAM.
    pub output_bytes: u64,
    /// Context length in tokens (all slots together).
    pub context: u64,
    /// Tokens the KV cache holds in all.
    pub kv_cells: u64,
    /// Layers offloaded to the GPU, out of `layers`.
    pub gpu_layers: u64,
    pub layers: u64,
}

impl Estimate {
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes
            .saturating_add(self.kv_cache_bytes)
            .saturating_add(self.compute_bytes)
            .saturating_add(self.output_bytes)
    }

    fn all_on_gpu(&self) -> bool {
        self.layers > 0 && self.gpu_layers >= self.layers
    }

    /// The share of the model on the GPUs.
    pub fn gpu_bytes(&self) -> u64 {
        if self.layers == 0 {
            return 0;
        }
        let layered = share(
            self.weights_bytes.saturating_add(self.kv_cache_bytes),
            self.gpu_layers.min(self.layers),
            self.layers,
        );
        if self.all_on_gpu() {
            layered.saturating_add(self.compute_bytes)
        } else {
            layered
        }
    }

    pub fn ram_bytes(&self) -> u64 {
        self.total_bytes() - self.gpu_bytes()
    }
}

/// Free memory of one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuMemory {
    /// The device's id in its source (`0`, `card1`, `CUDA0`).
    pub id: String,
    pub name: String,
    pub free_bytes: u64,
}

/// Free memory of the devices a model can load on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Available {
    /// The GPUs whose free memory is known; empty without one, or when the backend cannot use
    /// them.
    pub gpus: Vec<GpuMemory>,
    /// RAM the system can still hand out.
    pub ram_bytes: u64,
}

impl Available {
    /// The GPUs as one pool, as llama.cpp's default layer split spreads a model over all of
    /// them: their names joined and their free memory summed.
    pub fn gpu_pool(&self) -> Option<(String, u64)> {
        if self.gpus.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.gpus.iter().map(|gpu| gpu.name.as_str()).collect();
        let free = self
            .gpus
            .iter()
            .fold(0u64, |sum, gpu| sum.saturating_add(gpu.free_bytes));
        Some((names.join(" + "), free))
    }
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

fn positive_option(options: &BackendOptions, name: &str) -> Option<u64> {
    int_option(options, name)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
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

/// What of a model's shape the estimate needs, from its GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub layers: u64,
    /// The model's own context length (0 when the file does not say).
    pub context_length: u64,
    embedding: u64,
    feed_forward: u64,
    heads: u64,
    kv_heads: u64,
    key_length: u64,
    value_length: u64,
    vocab: u64,
    weights_bytes: u64,
}

impl Shape {
    pub fn of(header: &Header) -> Shape {
        let embedding = header.arch_uint("embedding_length").unwrap_or(0);
        let heads = header.arch_uint("attention.head_count").unwrap_or(0);
        let default_width = embedding.checked_div(heads).unwrap_or(0);
        let vocab = header
            .tensors
            .iter()
            .find(|t| t.name == "output.weight" || t.name == "token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .unwrap_or(0);
        Shape {
            layers: header.arch_uint("block_count").unwrap_or(0),
            context_length: header.arch_uint("context_length").unwrap_or(0),
            embedding,
            feed_forward: header.arch_uint("feed_forward_length").unwrap_or(0),
            heads,
            kv_heads: header.arch_uint("attention.head_count_kv").unwrap_or(heads),
            key_length: header
                .arch_uint("attention.key_length")
                .unwrap_or(default_width),
            value_length: header
                .arch_uint("attention.value_length")
                .unwrap_or(default_width),
            vocab,
            weights_bytes: header.tensor_data_bytes(),
        }
    }
}

/// The llama-server options the estimate reads, with its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// `ctx_size`; None for the model's own.
    ctx_size: Option<u64>,
    slots: u64,
    unified: bool,
    per_slot: Option<u64>,
    ubatch: u64,
    flash_attention: bool,
    k_bytes: f64,
    v_bytes: f64,
    /// `gpu_layers`; None for llama.cpp's automatic choice.
    gpu_layers: Option<u64>,
}

impl Params {
    pub fn of(options: &BackendOptions) -> Params {
        let parallel = positive_option(options, "parallel");
        let cache_bytes =
            |name| cache_type_bytes(string_option(options, name).unwrap_or("f16")).unwrap_or(2.0);
        Params {
            ctx_size: positive_option(options, "ctx_size"),
            slots: parallel.unwrap_or(AUTO_SLOTS),
            unified: flag(options, "kv_unified")
                || (parallel.is_none() && !flag(options, "no_kv_unified")),
            per_slot: positive_option(options, "kv_unified_per_slot"),
            ubatch: positive_option(options, "ubatch_size")
                .unwrap_or(DEFAULT_UBATCH)
                .min(positive_option(options, "batch_size").unwrap_or(DEFAULT_BATCH)),
            flash_attention: !string_option(options, "flash_attn")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("off")),
            k_bytes: cache_bytes("cache_type_k"),
            v_bytes: cache_bytes("cache_type_v"),
            gpu_layers: int_option(options, "gpu_layers").and_then(|n| u64::try_from(n).ok()),
        }
    }

    /// llama-server's defaults with a context of `context` tokens.
    pub fn with_context(context: u64) -> Params {
        Params {
            ctx_size: (context > 0).then_some(context),
            slots: AUTO_SLOTS,
            unified: true,
            per_slot: None,
            ubatch: DEFAULT_UBATCH,
            flash_attention: true,
            k_bytes: 2.0,
            v_bytes: 2.0,
            gpu_layers: None,
        }
    }
}

/// Estimates the memory of `header`'s model under the llama.cpp `options`; `has_gpu` decides
/// where an unset `gpu_layers` puts the layers.
pub fn estimate(header: &Header, options: &BackendOptions, has_gpu: bool) -> Estimate {
    estimate_shape(&Shape::of(header), &Params::of(options), has_gpu)
}

pub fn estimate_shape(shape: &Shape, params: &Params, has_gpu: bool) -> Estimate {
    let layers = shape.layers;
    let context = params.ctx_size.unwrap_or(shape.context_length);
    let kv_cells = match (params.ctx_size, params.per_slot) {
        (None, Some(per_slot)) => params.slots.saturating_mul(per_slot),
        _ => context,
    };
    // The cells one slot's attention spans: all of them in a unified cache.
    let slot_cells = if params.unified {
        kv_cells
    } else {
        kv_cells / params.slots.max(1)
    };
    // f64 keeps quantised types' fractional bytes, and cannot overflow on a file's absurd
    // numbers (the casts saturate); any real model stays far below 2^53.
    let kv_heads = shape.kv_heads as f64;
    let per_cell_per_layer = shape.key_length as f64 * kv_heads * params.k_bytes
        + shape.value_length as f64 * kv_heads * params.v_bytes;
    let kv_cache_bytes = (per_cell_per_layer * layers as f64 * kv_cells as f64).ceil() as u64;

    // Per cell and token of the micro-batch: the f16 mask, and without flash attention 4 bytes
    // a head and 4 beside (the scores in f32 and what the softmax works in: 20 bytes with the
    // test model's 4 heads, as llama-server reported them).
    let per_cell = if params.flash_attention {
        2.0
    } else {
        shape.heads as f64 * 4.0 + 4.0
    };
    let activations = 4.0 * (4.0 * shape.embedding as f64 + 3.0 * shape.feed_forward as f64);
    let compute_bytes =
        (params.ubatch as f64 * (per_cell * slot_cells as f64 + activations)).ceil() as u64;
    let output_bytes = shape.vocab.saturating_mul(4).saturating_mul(params.slots);

    let gpu_layers = match params.gpu_layers {
        Some(n) => n.min(layers),
        None if has_gpu => layers,
        None => 0,
    };
    Estimate {
        weights_bytes: shape.weights_bytes,
        kv_cache_bytes,
        compute_bytes,
        output_bytes,
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
        &estimate(&header, options, !available.gpus.is_empty()),
        available,
    )
}

/// The warnings for an estimate against what is free.
pub fn warnings(estimate: &Estimate, available: &Available) -> Vec<String> {
    let mut warnings = Vec::new();
    let gpu_bytes = estimate.gpu_bytes();
    if gpu_bytes > 0 {
        if let Some((name, free)) = available.gpu_pool() {
            if gpu_bytes > free {
                warnings.push(format!(
                    "the model needs about {} of GPU memory ({}) but {name} has {} free: lower gpu_layers or ctx_size, or use a smaller quantisation",
                    gib(gpu_bytes),
                    breakdown(estimate, true),
                    gib(free)
                ));
            }
        }
    }
    let ram_bytes = estimate.ram_bytes();
    if ram_bytes > available.ram_bytes {
        warnings.push(format!(
            "the model needs about {} of RAM ({}) but only {} is available: lower ctx_size, offload layers to a GPU, or use a smaller quantisation",
            gib(ram_bytes),
            breakdown(estimate, false),
            gib(available.ram_bytes)
        ));
    }
    warnings
}

/// What the GPUs' or the RAM's part of the estimate is made of: the layers' share of weights
/// and KV cache, and the buffers that sit whole on one side.
fn breakdown(estimate: &Estimate, on_gpu: bool) -> String {
    let part = |whole: u64| {
        let gpu = if estimate.layers == 0 {
            0
        } else {
            share(
                whole,
                estimate.gpu_layers.min(estimate.layers),
                estimate.layers,
            )
        };
        if on_gpu {
            gpu
        } else {
            whole - gpu
        }
    };
    let mut parts = vec![
        format!("weights {}", gib(part(estimate.weights_bytes))),
        format!(
            "KV cache {} for {} tokens",
            gib(part(estimate.kv_cache_bytes)),
            estimate.kv_cells
        ),
    ];
    if on_gpu == estimate.all_on_gpu() {
        parts.push(format!("compute buffer {}", gib(estimate.compute_bytes)));
    }
    if !on_gpu {
        parts.push(format!("output {}", gib(estimate.output_bytes)));
    }
    parts.join(" + ")
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

        // The slots share ctx_size: three of them do not make the cache larger, but without a
        // unified cache each one's attention spans a third of it, and so does the mask.
        let slots = estimate(
            &h,
            &options(json!({"ctx_size": 1536, "parallel": 3})),
            false,
        );
        assert_eq!(slots.kv_cells, 1536);
        assert_eq!(slots.kv_cache_bytes, 1536 * 4096);
        let unified = estimate(
            &h,
            &options(json!({"ctx_size": 1536, "parallel": 3, "kv_unified": true})),
            false,
        );
        assert_eq!(unified.kv_cells, 1536);
        // 512 tokens × 2 bytes × (1536 cells, or 512 a slot), over the same activations
        assert_eq!(
            unified.compute_bytes - slots.compute_bytes,
            512 * 2 * (1536 - 512)
        );
        // One row of logits a slot: the model's 1000 tokens in f32.
        assert_eq!(slots.output_bytes, 3 * 1000 * 4);
        assert_eq!(default.output_bytes, 4 * 1000 * 4);

        let per_slot = estimate(
            &h,
            &options(json!({"parallel": 2, "kv_unified_per_slot": 300})),
            false,
        );
        assert_eq!(per_slot.kv_cells, 600);

        let quantised = estimate(
            &h,
            &options(json!({"ctx_size": 1024, "cache_type_k": "q8_0", "cache_type_v": "q4_0"})),
            false,
        );
        // 8 × 1024 × 128 × (34/32 + 18/32)
        assert_eq!(quantised.kv_cache_bytes, 8 * 1024 * 128 * 52 / 32);
    }

    #[test]
    fn the_compute_buffer_follows_the_micro_batch_context_and_flash_attention() {
        let dir = tempfile::tempdir().unwrap();
        let h = header(&model(&dir, MIB));
        // 512 tokens × (2 bytes × 4096 cells of mask + 4 × 4 × 512 of activations)
        let flash = estimate(&h, &options(json!({})), false);
        assert_eq!(flash.compute_bytes, 512 * (2 * 4096 + 16 * 512));
        let auto = estimate(&h, &options(json!({"flash_attn": "auto"})), false);
        assert_eq!(auto.compute_bytes, flash.compute_bytes);
        // Without flash attention each of the 8 heads scores every cell in f32.
        let scores = estimate(&h, &options(json!({"flash_attn": "off"})), false);
        assert_eq!(scores.compute_bytes, 512 * ((8 * 4 + 4) * 4096 + 16 * 512));
        // The micro-batch is ubatch_size, and never more than batch_size.
        let small = estimate(&h, &options(json!({"ubatch_size": 128})), false);
        assert_eq!(small.compute_bytes * 4, flash.compute_bytes);
        let capped = estimate(&h, &options(json!({"batch_size": 128})), false);
        assert_eq!(capped.compute_bytes, small.compute_bytes);
    }

    #[test]
    fn a_model_larger_than_free_gpu_memory_warns_and_a_smaller_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = model(&dir, 40 * MIB);
        let gpu = |free| Available {
            gpus: vec![GpuMemory {
                id: "0".into(),
                name: "Test GPU".into(),
                free_bytes: free,
            }],
            ram_bytes: 1 << 40,
        };
        // 40 MiB of weights + 16 MiB of KV cache for 4096 tokens + an 8 MiB compute buffer.
        let on_gpu = options(json!({"gpu_layers": 99}));
        let warned = check(&path, &on_gpu, &gpu(50 * MIB));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains("Test GPU has 50.0 MiB free"),
            "{}",
            warned[0]
        );
        assert!(
            warned[0].contains(
                "64.0 MiB of GPU memory (weights 40.0 MiB + KV cache 16.0 MiB for 4096 tokens + compute buffer 8.0 MiB)"
            ),
            "{}",
            warned[0]
        );
        assert!(check(&path, &on_gpu, &gpu(70 * MIB)).is_empty());
        // A shorter context makes it fit.
        let short = options(json!({"gpu_layers": 99, "ctx_size": 512}));
        assert!(check(&path, &short, &gpu(50 * MIB)).is_empty());
        // Half the layers on the GPU need half of weights and cache there; the compute buffer
        // stays with the output layer, in RAM.
        let half = options(json!({"gpu_layers": 4}));
        assert!(check(&path, &half, &gpu(30 * MIB)).is_empty());
        let two = Available {
            gpus: vec![
                GpuMemory {
                    id: "0".into(),
                    name: "A".into(),
                    free_bytes: 40 * MIB,
                },
                GpuMemory {
                    id: "1".into(),
                    name: "B".into(),
                    free_bytes: 40 * MIB,
                },
            ],
            ram_bytes: 1 << 40,
        };
        // The layer split spreads a start over both.
        assert!(check(&path, &on_gpu, &two).is_empty());
        assert_eq!(two.gpu_pool(), Some(("A + B".to_owned(), 80 * MIB)));
    }

    #[test]
    fn without_gpu_layers_the_model_is_checked_against_ram() {
        let dir = tempfile::tempdir().unwrap();
        let path = model(&dir, 40 * MIB);
        let ram_only = |ram_bytes| Available {
            gpus: Vec::new(),
            ram_bytes,
        };
        let warned = check(&path, &options(json!({})), &ram_only(20 * MIB));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("of RAM"), "{}", warned[0]);
        assert!(check(&path, &options(json!({})), &ram_only(100 * MIB)).is_empty());
        // gpu_layers 0 keeps it in RAM even with a GPU.
        let gpu_too = Available {
            gpus: vec![GpuMemory {
                id: "0".into(),
                name: "Test GPU".into(),
                free_bytes: 1 << 40,
            }],
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
                gpus: Vec::new(),
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
                gpus: Vec::new(),
                ram_bytes: 10 * size,
            }
        )
        .is_empty());
    }
}
