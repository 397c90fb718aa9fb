//! What a model's own files say about it — a GGUF header, a Hugging Face `config.json`, the
//! headers of its safetensors — and the fit verdict that follows: will it load on the GPU, on
//! the CPU only, or not at all, with the memory free now.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Serialize;

use super::scan::{split_part, Found, FoundKind};
use super::{Format, ModelFile};
use crate::backends::BackendType;
use crate::devices::fit::{self, Available};
use crate::devices::gguf::{self, Header, Value};

/// The context the fit is judged at when the model's own is longer: what a user starts with
/// (LM Studio's and Ollama's defaults are 4k-8k), not a 128k training context few load.
pub const FIT_CONTEXT: u64 = 8192;
/// Strings in a GGUF header longer than this (chat templates, licences) are not kept.
const KEPT_STRING: usize = 256;
/// A safetensors header larger than this is not one (real ones are a few hundred KiB).
const MAX_SAFETENSORS_HEADER: u64 = 64 * 1024 * 1024;

/// What one file says, kept between scans.
#[derive(Debug)]
pub enum FileFacts {
    Gguf {
        /// Its metadata (long strings dropped) and sizes; no tensor list.
        header: Header,
        parameters: u64,
        /// What the memory estimate needs, read while the tensor list was there.
        shape: fit::Shape,
    },
    /// A Hugging Face `config.json`.
    Config(serde_json::Value),
    Safetensors {
        parameters: u64,
        /// The dtype most of the weights have (`BF16`).
        dtype: Option<String>,
    },
    Unreadable(String),
}

impl FileFacts {
    pub fn unreadable(path: &Path, error: &std::io::Error) -> Self {
        FileFacts::Unreadable(format!("cannot read {}: {error}", path.display()))
    }

    /// Reads what `path` says, by its name: `.gguf` (or an Ollama blob), `config.json`,
    /// `.safetensors`.
    pub fn read(path: &Path) -> Self {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "config.json" {
            return match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(config) => FileFacts::Config(config),
                    Err(e) => FileFacts::Unreadable(format!("{} is not JSON: {e}", path.display())),
                },
                Err(e) => FileFacts::unreadable(path, &e),
            };
        }
        if name.ends_with(".safetensors") {
            return safetensors(path).unwrap_or_else(FileFacts::Unreadable);
        }
        match gguf::read_header(path) {
            Ok(mut header) => {
                let parameters = header
                    .tensors
                    .iter()
                    .map(|t| t.dims.iter().product::<u64>())
                    .fold(0u64, u64::saturating_add);
                let shape = fit::Shape::of(&header);
                header.tensors = Vec::new();
                header
                    .metadata
                    .retain(|_, value| !matches!(value, Value::String(s) if s.len() > KEPT_STRING));
                FileFacts::Gguf {
                    header,
                    parameters,
                    shape,
                }
            }
            Err(e) => FileFacts::Unreadable(e.to_string()),
        }
    }
}

/// The parameter count and main dtype from a safetensors file's header: an 8-byte length, then
/// JSON `{name: {dtype, shape, data_offsets}}`.
fn safetensors(path: &Path) -> Result<FileFacts, String> {
    let io = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut file = File::open(path).map_err(io)?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(io)?;
    let length = u64::from_le_bytes(length);
    if length > MAX_SAFETENSORS_HEADER {
        return Err(format!("{} is not a safetensors file", path.display()));
    }
    let mut header = Vec::new();
    file.take(length).read_to_end(&mut header).map_err(io)?;
    let tensors: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("{} has a damaged header: {e}", path.display()))?;
    let mut parameters = 0u64;
    let mut by_dtype: std::collections::BTreeMap<String, u64> = Default::default();
    for (name, tensor) in &tensors {
        if name == "__metadata__" {
            continue;
        }
        let count = tensor["shape"]
            .as_array()
            .map(|dims| dims.iter().filter_map(|d| d.as_u64()).product::<u64>())
            .unwrap_or(0);
        parameters = parameters.saturating_add(count);
        if let Some(dtype) = tensor["dtype"].as_str() {
            *by_dtype.entry(dtype.to_owned()).or_default() += count;
        }
    }
    let dtype = by_dtype
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .map(|(dtype, _)| dtype);
    Ok(FileFacts::Safetensors { parameters, dtype })
}

/// Where a model will run, judged against the memory free now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// All of it fits in the free memory of one GPU (`gpus` names those it fits on).
    Gpu,
    /// No GPU holds it alone, but all of them together do, as llama.cpp's default layer split
    /// spreads a model over every GPU.
    GpuSplit,
    /// It fits in RAM only (no GPU, or too little GPU memory for all of it).
    Cpu,
    /// It fits nowhere.
    None,
    /// Its files could not be read.
    Unknown,
}

/// One GPU's free memory, and whether the whole model fits in it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceFit {
    /// The device's id in its source: `0` (NVIDIA's index), `card1` (DRM), `CUDA0` (llama.cpp).
    pub id: String,
    pub name: String,
    pub free_bytes: u64,
    pub fits: bool,
}

/// The fit verdict with its numbers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Fit {
    pub verdict: Verdict,
    /// The context (tokens) the KV cache and the buffers were sized for: the one asked for, or
    /// the model's own, at most [`FIT_CONTEXT`].
    pub context: u64,
    /// Weights + KV cache + buffers (+ a paired projector). The backend's own runtime (the CUDA
    /// or Metal context, a few hundred MiB) is not counted.
    pub needed_bytes: u64,
    /// The weights' bytes, a paired projector's included.
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    /// llama.cpp's compute buffer for one micro-batch and its logits' buffer (GGUF models; 0
    /// for folders, whose backends size theirs at load).
    pub buffers_bytes: u64,
    /// Every GPU whose free memory is known.
    pub devices: Vec<DeviceFit>,
    /// The ids of the GPUs the verdict puts it on: those it fits on alone (`gpu`), or all of
    /// them (`gpu_split`); empty otherwise.
    pub gpus: Vec<String>,
    pub ram_free_bytes: u64,
    pub detail: String,
}

/// A model as its files describe it.
pub struct Described {
    pub name: String,
    pub format: Format,
    pub architecture: Option<String>,
    pub parameters: Option<u64>,
    pub quantization: Option<String>,
    pub context_length: Option<u64>,
    pub backends: Vec<BackendType>,
    pub error: Option<String>,
    weights_bytes: u64,
    /// A folder's KV cache bytes per token of context; None when the files do not say.
    kv_bytes_per_token: Option<u64>,
    /// A GGUF model's shape, for llama.cpp's estimate.
    shape: Option<fit::Shape>,
    unreadable: bool,
}

impl Described {
    /// `facts` are those of the model's GGUF parts in order, or of a folder's config.json and
    /// safetensors files.
    pub fn from_facts(
        found: &Found,
        facts: &[std::sync::Arc<FileFacts>],
        files: &[ModelFile],
        mmproj_bytes: u64,
    ) -> Self {
        let error = facts.iter().find_map(|f| match f.as_ref() {
            FileFacts::Unreadable(e) => Some(e.clone()),
            _ => None,
        });
        let mut described = match found.kind {
            FoundKind::Gguf => gguf_model(found, facts, files),
            FoundKind::Folder => folder_model(found, facts, files),
        };
        described.weights_bytes = described.weights_bytes.saturating_add(mmproj_bytes);
        described.unreadable = error.is_some() && described.architecture.is_none();
        described.error = error;
        described
    }

    /// The verdict against `available` at `context` tokens (None: the model's own, at most
    /// [`FIT_CONTEXT`]), with llama-server's defaults otherwise.
    pub fn fit(&self, available: &Available, context: Option<u64>) -> Fit {
        let context = context.unwrap_or_else(|| {
            self.context_length
                .map_or(FIT_CONTEXT, |c| c.clamp(1, FIT_CONTEXT))
        });
        let (kv, buffers) = match &self.shape {
            Some(shape) => {
                let estimate =
                    fit::estimate_shape(shape, &fit::Params::with_context(context), false);
                (
                    estimate.kv_cache_bytes,
                    estimate.compute_bytes.saturating_add(estimate.output_bytes),
                )
            }
            None => (
                self.kv_bytes_per_token
                    .map_or(0, |per_token| per_token.saturating_mul(context)),
                0,
            ),
        };
        let needed = self
            .weights_bytes
            .saturating_add(kv)
            .saturating_add(buffers);
        let devices: Vec<DeviceFit> = available
            .gpus
            .iter()
            .map(|gpu| DeviceFit {
                id: gpu.id.clone(),
                name: gpu.name.clone(),
                free_bytes: gpu.free_bytes,
                fits: needed <= gpu.free_bytes,
            })
            .collect();
        let on_one: Vec<String> = devices
            .iter()
            .filter(|gpu| gpu.fits)
            .map(|gpu| gpu.id.clone())
            .collect();
        let pooled = available.gpu_pool().map_or(0, |(_, free)| free);
        let (verdict, gpus) = if self.unreadable {
            (Verdict::Unknown, Vec::new())
        } else if !on_one.is_empty() {
            (Verdict::Gpu, on_one)
        } else if devices.len() > 1 && needed <= pooled {
            let all = devices.iter().map(|gpu| gpu.id.clone()).collect();
            (Verdict::GpuSplit, all)
        } else if needed <= available.ram_bytes {
            (Verdict::Cpu, Vec::new())
        } else {
            (Verdict::None, Vec::new())
        };
        let mut detail = format!(
            "needs about {} (weights {}",
            fit::gib(needed),
            fit::gib(self.weights_bytes)
        );
        if self.shape.is_some() || self.kv_bytes_per_token.is_some() {
            detail.push_str(&format!(
                " + KV cache {} for {context} tokens",
                fit::gib(kv)
            ));
        }
        if buffers > 0 {
            detail.push_str(&format!(" + buffers {}", fit::gib(buffers)));
        }
        detail.push(')');
        for gpu in &devices {
            detail.push_str(&format!(
                "; {} ({}) has {} free",
                gpu.name,
                gpu.id,
                fit::gib(gpu.free_bytes)
            ));
        }
        detail.push_str(&format!("; RAM has {} free", fit::gib(available.ram_bytes)));
        if self.unreadable {
            detail = "the model's files could not be read".to_owned();
        }
        Fit {
            verdict,
            context,
            needed_bytes: needed,
            weights_bytes: self.weights_bytes,
            kv_cache_bytes: kv,
            buffers_bytes: buffers,
            devices,
            gpus,
            ram_free_bytes: available.ram_bytes,
            detail,
        }
    }
}

fn gguf_model(
    found: &Found,
    facts: &[std::sync::Arc<FileFacts>],
    files: &[ModelFile],
) -> Described {
    let size_bytes: u64 = files.iter().map(|f| f.size_bytes).sum();
    let file_name = found
        .files
        .first()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let stem = split_part(file_name)
        .map_or_else(|| file_name.trim_end_matches(".gguf"), |split| split.prefix)
        .to_owned();
    let mut described = Described {
        name: match (&found.repo, &found.tag) {
            // Ollama's blobs have no names of their own.
            (Some(repo), Some(tag)) => format!("{repo}:{tag}"),
            _ => stem.clone(),
        },
        format: Format::Gguf,
        architecture: None,
        parameters: None,
        quantization: quantization_in_name(&stem),
        context_length: None,
        backends: vec![BackendType::LlamaCpp],
        error: None,
        weights_bytes: size_bytes,
        kv_bytes_per_token: None,
        shape: None,
        unreadable: false,
    };
    let mut parameters = 0u64;
    let mut first = None;
    for fact in facts {
        if let FileFacts::Gguf {
            header,
            parameters: p,
            shape,
        } = fact.as_ref()
        {
            parameters = parameters.saturating_add(*p);
            first.get_or_insert((header, shape));
        }
    }
    let Some((header, shape)) = first else {
        return described;
    };
    if found.tag.is_none() {
        if let Some(Value::String(name)) = header.metadata.get("general.name") {
            if !name.trim().is_empty() {
                described.name = name.trim().to_owned();
            }
        }
    }
    described.architecture = header.architecture().map(str::to_owned);
    described.parameters = (parameters > 0).then_some(parameters);
    described.quantization = match header.metadata.get("general.file_type") {
        Some(Value::Int(file_type)) => file_type_name(*file_type).map(str::to_owned),
        _ => None,
    }
    .or(described.quantization);
    described.context_length = header.arch_uint("context_length").filter(|c| *c > 0);
    described.shape = (shape.layers > 0).then(|| shape.clone());
    // The header's own bytes are not loaded; for split models each part has one, a few KiB.
    described.weights_bytes = size_bytes.saturating_sub(header.data_offset);
    described
}

fn folder_model(
    found: &Found,
    facts: &[std::sync::Arc<FileFacts>],
    files: &[ModelFile],
) -> Described {
    let folder = found.model_path();
    let folder_name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_owned();
    let config = facts.iter().find_map(|f| match f.as_ref() {
        FileFacts::Config(config) => Some(config),
        _ => None,
    });
    let (mut parameters, mut dtypes) = (0u64, Vec::new());
    for fact in facts {
        if let FileFacts::Safetensors {
            parameters: p,
            dtype,
        } = fact.as_ref()
        {
            parameters = parameters.saturating_add(*p);
            dtypes.extend(dtype.clone());
        }
    }
    let empty = serde_json::Value::Null;
    let config = config.unwrap_or(&empty);
    // Multimodal configs nest the language model's settings.
    let text = config.get("text_config").unwrap_or(config);
    let field = |name: &str| {
        text.get(name)
            .or_else(|| config.get(name))
            .and_then(|v| v.as_u64())
    };
    let quantized = config
        .get("quantization")
        .or_else(|| config.get("quantization_config"));
    let mlx = config
        .get("quantization")
        .is_some_and(|q| q.get("group_size").is_some())
        || found
            .repo
            .as_deref()
            .is_some_and(|repo| repo.to_ascii_lowercase().contains("mlx"));
    let quantization = match quantized {
        Some(q) => q
            .get("bits")
            .and_then(|b| b.as_u64())
            .map(|bits| format!("{bits}bit"))
            .or_else(|| {
                q.get("quant_method")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            }),
        None => dtypes.first().cloned().or_else(|| {
            config
                .get("torch_dtype")
                .and_then(|d| d.as_str())
                .map(str::to_owned)
        }),
    };
    let layers = field("num_hidden_layers");
    let heads = field("num_attention_heads");
    let kv_heads = field("num_key_value_heads").or(heads);
    let head_dim =
        field("head_dim").or_else(|| Some(field("hidden_size")? / heads.filter(|h| *h > 0)?));
    // K and V, 2 bytes each (the backends' default f16/bf16 cache).
    let kv_bytes_per_token = match (layers, kv_heads, head_dim) {
        (Some(l), Some(k), Some(d)) => Some(2 * 2 * l * k * d),
        _ => None,
    };
    Described {
        name: found
            .repo
            .as_deref()
            .and_then(|repo| repo.rsplit('/').next())
            .map_or(folder_name, str::to_owned),
        format: if mlx {
            Format::Mlx
        } else {
            Format::Safetensors
        },
        architecture: config
            .get("model_type")
            .and_then(|t| t.as_str())
            .map(str::to_owned),
        // A quantised MLX model's packed weights do not count parameters one to one.
        parameters: (parameters > 0 && quantized.is_none()).then_some(parameters),
        quantization,
        context_length: field("max_position_embeddings"),
        backends: if mlx {
            vec![BackendType::MlxLm]
        } else {
            vec![BackendType::Vllm, BackendType::MlxLm]
        },
        error: None,
        weights_bytes: files
            .iter()
            .filter(|f| f.path.extension().is_some_and(|e| e == "safetensors"))
            .map(|f| f.size_bytes)
            .sum(),
        kv_bytes_per_token,
        shape: None,
        unreadable: config.is_null(),
    }
}

/// llama.cpp's `llama_ftype` names (`general.file_type`).
fn file_type_name(file_type: i128) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// A quantisation named in a file name (`...-Q4_K_M`, `.IQ3_XS`, `-f16`), for files whose header
/// does not say. Quant names contain `_`, so the name is split on `-` and `.` only.
pub fn quantization_in_name(stem: &str) -> Option<String> {
    let upper = stem.to_ascii_uppercase();
    upper
        .split(['-', '.'])
        .rev()
        .find(|part| {
            let digit_at = |i: usize| part.as_bytes().get(i).is_some_and(u8::is_ascii_digit);
            matches!(*part, "F16" | "F32" | "BF16")
                || (part.starts_with('Q') && digit_at(1))
                || ((part.starts_with("IQ") || part.starts_with("TQ")) && digit_at(2))
        })
        .map(str::to_owned)
}
