#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::devices::fit::GpuMemory;
use crate::devices::gguf::writer::{gguf, Meta};

/// A small llama GGUF: 4 layers, 256 wide, 4 KV heads of 64, trained for `context`.
pub(crate) fn tiny_gguf(name: &str, context: u32, file_type: u32, data_bytes: u64) -> Vec<u8> {
    gguf(
        &[
            ("general.architecture", Meta::Str("llama")),
            ("general.name", Meta::Str(name)),
            ("general.file_type", Meta::U32(file_type)),
            ("llama.block_count", Meta::U32(4)),
            ("llama.context_length", Meta::U32(context)),
            ("llama.embedding_length", Meta::U32(256)),
            ("llama.attention.head_count", Meta::U32(4)),
            ("llama.attention.head_count_kv", Meta::U32(4)),
        ],
        &[
            ("token_embd.weight", &[256, 1000], 0),
            ("output.weight", &[256, 24], 0),
        ],
        data_bytes,
    )
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// `file` in a Hugging Face snapshot, as a symlink to its blob as huggingface_hub writes it.
fn hub_file(hub: &Path, repo: &str, file: &str, bytes: &[u8]) -> PathBuf {
    let repo_dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let blob = repo_dir
        .join("blobs")
        .join(format!("{:x}", bytes.len() * 7919 + file.len()));
    write(&blob, bytes);
    let link = repo_dir.join("snapshots/abc123").join(file);
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    let depth = file.matches('/').count() + 2;
    let target = PathBuf::from("../".repeat(depth))
        .join("blobs")
        .join(blob.file_name().unwrap());
    std::os::unix::fs::symlink(target, &link).unwrap();
    write(&repo_dir.join("refs/main"), b"abc123");
    link
}

fn safetensors(tensors: &[(&str, &[u64])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<u64>() * 2;
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.resize(out.len() + offset as usize, 0);
    out
}

const HF_CONFIG: &str = r#"{"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "hidden_size": 64, "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}"#;

/// One model in every source layout, and a broken file.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sources: Vec<Source>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let hub = root.join("hub");
    hub_file(
        &hub,
        "org/Tiny-GGUF",
        "tiny-Q8_0.gguf",
        &tiny_gguf("Tiny", 4096, 7, 1000),
    );
    hub_file(
        &hub,
        "org/Tiny-GGUF",
        "tiny-Q4_K_M.gguf",
        &tiny_gguf("Tiny", 4096, 15, 500),
    );
    hub_file(
        &hub,
        "org/Tiny-GGUF",
        "mmproj-tiny-f16.gguf",
        &tiny_gguf("proj", 0, 1, 300),
    );
    // As ggml-org lays out repos: the projector at the top, each quantisation in its folder.
    hub_file(
        &hub,
        "org/Big-GGUF",
        "mmproj-big-f16.gguf",
        &tiny_gguf("proj", 0, 1, 300),
    );
    for part in 1..=2 {
        let name = format!("Q4_K_M/big-Q4_K_M-0000{part}-of-00002.gguf");
        hub_file(
            &hub,
            "org/Big-GGUF",
            &name,
            &tiny_gguf("Big", 32768, 15, 2000),
        );
    }
    hub_file(&hub, "org/tiny-hf", "config.json", HF_CONFIG.as_bytes());
    hub_file(
        &hub,
        "org/tiny-hf",
        "model.safetensors",
        &safetensors(&[("embed", &[100, 64]), ("lm_head", &[100, 64])]),
    );
    hub_file(&hub, "org/tiny-hf", "tokenizer.json", b"{}");
    let mlx_config = HF_CONFIG.replace(
        r#""torch_dtype""#,
        r#""quantization": {"group_size": 64, "bits": 4}, "torch_dtype""#,
    );
    hub_file(
        &hub,
        "mlx-community/tiny-4bit",
        "config.json",
        mlx_config.as_bytes(),
    );
    hub_file(
        &hub,
        "mlx-community/tiny-4bit",
        "model.safetensors",
        &safetensors(&[("embed", &[100, 8])]),
    );

    write(
        &root.join("llama/org_Tiny-GGUF_tiny-Q4_0.gguf"),
        &tiny_gguf("FromLlama", 2048, 2, 100),
    );
    write(
        &root.join("lmstudio/publisher/Model-GGUF/model-Q6_K.gguf"),
        &tiny_gguf("FromLmStudio", 2048, 18, 100),
    );

    let blob = tiny_gguf("FromOllama", 8192, 15, 100);
    let hex = format!("{:0>64}", "1f");
    write(&root.join(format!("ollama/blobs/sha256-{hex}")), &blob);
    let manifest = serde_json::json!({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{hex}"), "size": blob.len()},
        {"mediaType": "application/vnd.ollama.image.template", "digest": format!("sha256:{:0>64}", "2"), "size": 10},
    ]});
    write(
        &root.join("ollama/manifests/registry.ollama.ai/library/tiny/1b"),
        manifest.to_string().as_bytes(),
    );

    write(&root.join("mine/broken.gguf"), b"not a gguf at all");
    write(&root.join("mine/notes.txt"), b"not a model");

    let sources = vec![
        Source {
            kind: SourceKind::Huggingface,
            dir: hub,
        },
        Source {
            kind: SourceKind::LlamaCpp,
            dir: root.join("llama"),
        },
        Source {
            kind: SourceKind::LmStudio,
            dir: root.join("lmstudio"),
        },
        Source {
            kind: SourceKind::Ollama,
            dir: root.join("ollama"),
        },
        Source {
            kind: SourceKind::ModelsDir,
            dir: root.join("mine"),
        },
        Source {
            kind: SourceKind::ModelsDir,
            dir: root.join("missing"),
        },
    ];
    Fixture {
        _dir: dir,
        root,
        sources,
    }
}

fn gpu(id: &str, name: &str, free_bytes: u64) -> GpuMemory {
    GpuMemory {
        id: id.to_owned(),
        name: name.to_owned(),
        free_bytes,
    }
}

fn plenty() -> Available {
    Available {
        gpus: vec![gpu("0", "Test GPU", 1 << 40)],
        ram_bytes: 1 << 40,
    }
}

fn by_name<'a>(entries: &'a [ModelEntry], name: &str) -> &'a ModelEntry {
    entries.iter().find(|e| e.name == name).unwrap_or_else(|| {
        panic!(
            "no {name} in {:?}",
            entries.iter().map(|e| &e.name).collect::<Vec<_>>()
        )
    })
}

#[test]
fn every_layout_is_listed_with_what_its_files_say() {
    let fixture = fixture();
    let entries = Library::new().list(&fixture.sources, &plenty(), None, &HashMap::new());
    let names: Vec<(&str, SourceKind)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.source))
        .collect();
    assert_eq!(
        names,
        [
            ("Big", SourceKind::Huggingface),
            ("Tiny", SourceKind::Huggingface),
            ("Tiny", SourceKind::Huggingface),
            ("tiny-4bit", SourceKind::Huggingface),
            ("tiny-hf", SourceKind::Huggingface),
            ("FromLlama", SourceKind::LlamaCpp),
            ("FromLmStudio", SourceKind::LmStudio),
            ("tiny:1b", SourceKind::Ollama),
            ("broken", SourceKind::ModelsDir),
        ]
    );

    let q8 = entries
        .iter()
        .find(|e| e.tag.as_deref() == Some("Q8_0"))
        .unwrap();
    assert_eq!(q8.repo.as_deref(), Some("org/Tiny-GGUF"));
    assert_eq!(q8.format, Format::Gguf);
    assert_eq!(q8.quantization.as_deref(), Some("Q8_0"));
    assert_eq!(q8.architecture.as_deref(), Some("llama"));
    assert_eq!(q8.parameters, Some(256 * 1000 + 256 * 24));
    assert_eq!(q8.context_length, Some(4096));
    assert_eq!(q8.backends, [BackendType::LlamaCpp]);
    assert!(q8.path.ends_with("snapshots/abc123/tiny-Q8_0.gguf"));
    assert!(q8
        .mmproj
        .as_ref()
        .unwrap()
        .ends_with("mmproj-tiny-f16.gguf"));
    assert_eq!(q8.size_bytes, fs::metadata(&q8.path).unwrap().len());
    assert_eq!(q8.error, None);

    // The two parts are one model, started from the first; the projector is no model of its own.
    let big = by_name(&entries, "Big");
    assert_eq!(big.files.len(), 2);
    assert!(big.path.ends_with("big-Q4_K_M-00001-of-00002.gguf"));
    assert_eq!(
        big.size_bytes,
        big.files.iter().map(|f| f.size_bytes).sum::<u64>()
    );
    assert_eq!(big.parameters, Some(2 * (256 * 1000 + 256 * 24)));
    assert!(big
        .mmproj
        .as_ref()
        .unwrap()
        .ends_with("models--org--Big-GGUF/snapshots/abc123/mmproj-big-f16.gguf"));
    assert!(!entries.iter().any(|e| e.name == "proj"));

    let hf = by_name(&entries, "tiny-hf");
    assert_eq!(hf.format, Format::Safetensors);
    assert!(hf.path.ends_with("snapshots/abc123"));
    assert_eq!(hf.backends, [BackendType::Vllm, BackendType::MlxLm]);
    assert_eq!(hf.parameters, Some(2 * 100 * 64));
    assert_eq!(hf.quantization.as_deref(), Some("BF16"));
    assert_eq!(hf.context_length, Some(2048));
    assert_eq!(hf.files.len(), 3);

    let mlx = by_name(&entries, "tiny-4bit");
    assert_eq!(mlx.format, Format::Mlx);
    assert_eq!(mlx.backends, [BackendType::MlxLm]);
    assert_eq!(mlx.quantization.as_deref(), Some("4bit"));

    let ollama = by_name(&entries, "tiny:1b");
    assert_eq!(
        (ollama.repo.as_deref(), ollama.tag.as_deref()),
        (Some("tiny"), Some("1b"))
    );
    assert!(ollama.path.starts_with(fixture.root.join("ollama/blobs")));
    assert_eq!(ollama.quantization.as_deref(), Some("Q4_K_M"));

    assert_eq!(
        by_name(&entries, "FromLmStudio").repo.as_deref(),
        Some("publisher/Model-GGUF")
    );

    let broken = by_name(&entries, "broken");
    assert!(
        broken.error.as_deref().unwrap().contains("not a GGUF file"),
        "{broken:?}"
    );
    assert_eq!(broken.fit.verdict, Verdict::Unknown);
}

#[test]
fn the_fit_verdict_counts_weights_kv_cache_and_buffers_at_the_capped_context() {
    let fixture = fixture();
    let library = Library::new();
    let list =
        |available: &Available| library.list(&fixture.sources, available, None, &HashMap::new());
    let entries = list(&plenty());
    let big = by_name(&entries, "Big");
    // Trained for 32k; judged at 8k: 4 layers × 8192 tokens × (K + V: 4 heads × 64 × 2 bytes).
    assert_eq!(big.fit.context, FIT_CONTEXT);
    let kv = 4 * 8192 * 2 * 4 * 64 * 2;
    assert_eq!(big.fit.kv_cache_bytes, kv);
    assert!(big.fit.buffers_bytes > 0, "{:?}", big.fit);
    assert_eq!(
        big.fit.needed_bytes,
        big.fit.weights_bytes + kv + big.fit.buffers_bytes
    );
    let projector = fs::metadata(big.mmproj.as_ref().unwrap()).unwrap().len();
    assert!(big.fit.weights_bytes < big.size_bytes + projector);
    assert_eq!(big.fit.verdict, Verdict::Gpu);
    assert_eq!(big.fit.gpus, ["0"]);
    assert!(
        big.fit.detail.contains("Test GPU (0)"),
        "{}",
        big.fit.detail
    );

    let needed = big.fit.needed_bytes;
    let small_gpu = Available {
        gpus: vec![gpu("0", "Small GPU", needed - 1)],
        ram_bytes: needed,
    };
    assert_eq!(by_name(&list(&small_gpu), "Big").fit.verdict, Verdict::Cpu);
    let nothing = Available {
        gpus: Vec::new(),
        ram_bytes: needed - 1,
    };
    let entries = list(&nothing);
    let big = by_name(&entries, "Big");
    assert_eq!(big.fit.verdict, Verdict::None);
    assert!(big.fit.devices.is_empty() && big.fit.gpus.is_empty());
    assert_eq!(big.fit.ram_free_bytes, needed - 1);

    // A projector loads with its model, so it counts.
    let q8 = entries
        .iter()
        .find(|e| e.tag.as_deref() == Some("Q8_0"))
        .unwrap();
    let q8_alone = fs::metadata(&q8.path).unwrap().len();
    assert!(q8.fit.needed_bytes > q8_alone, "{:?}", q8.fit);
}

#[test]
fn the_fit_verdict_names_each_gpu_and_a_split_over_them() {
    let fixture = fixture();
    let library = Library::new();
    let list =
        |available: &Available| library.list(&fixture.sources, available, None, &HashMap::new());
    let needed = by_name(&list(&plenty()), "Big").fit.needed_bytes;

    // Only the second GPU holds it.
    let one_of_two = Available {
        gpus: vec![gpu("0", "Small", needed - 1), gpu("1", "Large", needed)],
        ram_bytes: 0,
    };
    let fit = by_name(&list(&one_of_two), "Big").fit.clone();
    assert_eq!(fit.verdict, Verdict::Gpu);
    assert_eq!(fit.gpus, ["1"]);
    let fits: Vec<(&str, u64, bool)> = fit
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.free_bytes, d.fits))
        .collect();
    assert_eq!(fits, [("0", needed - 1, false), ("1", needed, true)]);
    assert!(
        fit.detail.contains("Small (0)") && fit.detail.contains("Large (1)"),
        "{}",
        fit.detail
    );

    // Neither does alone; the layer split over both does.
    let halves = Available {
        gpus: vec![gpu("0", "A", needed / 2 + 1), gpu("1", "B", needed / 2 + 1)],
        ram_bytes: 0,
    };
    let fit = by_name(&list(&halves), "Big").fit.clone();
    assert_eq!(fit.verdict, Verdict::GpuSplit);
    assert_eq!(fit.gpus, ["0", "1"]);
    assert!(fit.devices.iter().all(|d| !d.fits));
    // One GPU that small is not a split: RAM then, or nothing.
    let alone = Available {
        gpus: vec![gpu("0", "A", needed / 2 + 1)],
        ram_bytes: 0,
    };
    assert_eq!(by_name(&list(&alone), "Big").fit.verdict, Verdict::None);
}

#[test]
fn the_fit_is_judged_at_the_context_asked_for() {
    let fixture = fixture();
    let library = Library::new();
    let at = |context| library.list(&fixture.sources, &plenty(), context, &HashMap::new());
    let capped = by_name(&at(None), "Big").fit.clone();
    let short = by_name(&at(Some(1024)), "Big").fit.clone();
    let long = by_name(&at(Some(32768)), "Big").fit.clone();
    assert_eq!((short.context, long.context), (1024, 32768));
    assert_eq!(short.kv_cache_bytes, 4 * 1024 * 2 * 4 * 64 * 2);
    assert_eq!(long.kv_cache_bytes, 4 * capped.kv_cache_bytes);
    // The attention mask grows with the context too.
    assert!(
        short.buffers_bytes < capped.buffers_bytes && capped.buffers_bytes < long.buffers_bytes
    );
    assert_eq!(short.weights_bytes, long.weights_bytes);
}

#[test]
fn a_second_scan_reads_only_files_that_changed() {
    let fixture = fixture();
    let library = Library::new();
    let sources = &fixture.sources[3..4]; // Ollama's blob: a plain file
    let first = library.list(sources, &plenty(), None, &HashMap::new());
    assert_eq!(first[0].context_length, Some(8192));

    // Same size and modification time: the cached reading stands, nothing is read.
    let blob = first[0].path.clone();
    let modified = fs::metadata(&blob).unwrap().modified().unwrap();
    let size = fs::metadata(&blob).unwrap().len() as usize;
    let other = tiny_gguf("FromOllama", 1024, 15, 100);
    assert_eq!(other.len(), size);
    fs::write(&blob, &other).unwrap();
    fs::File::options()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let second = library.list(sources, &plenty(), None, &HashMap::new());
    assert_eq!(second[0].context_length, Some(8192));

    // A newer modification time: read again.
    fs::File::options()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_modified(modified + std::time::Duration::from_secs(5))
        .unwrap();
    let third = library.list(sources, &plenty(), None, &HashMap::new());
    assert_eq!(third[0].context_length, Some(1024));
}

#[test]
fn a_model_reached_twice_is_listed_once_and_downloads_are_marked() {
    let fixture = fixture();
    let mut sources = fixture.sources.clone();
    // A models.dirs entry that is inside the hub cache.
    sources.push(Source {
        kind: SourceKind::ModelsDir,
        dir: fixture.root.join("hub"),
    });
    let first = Library::new().list(&sources[..1], &plenty(), None, &HashMap::new());
    let downloaded: HashMap<PathBuf, Option<String>> = first
        .iter()
        .take(1)
        .map(|e| (e.path.clone(), Some("asked-as".to_owned())))
        .collect();
    let entries = Library::new().list(&sources, &plenty(), None, &downloaded);
    assert_eq!(entries.len(), 9);
    let mine: Vec<&ModelEntry> = entries.iter().filter(|e| e.downloaded).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        mine[0].tag.as_deref(),
        Some("asked-as"),
        "the tag it was downloaded by"
    );
}

#[test]
fn a_symlink_loop_ends_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("a/model-Q4_0.gguf"),
        &tiny_gguf("Looped", 512, 2, 10),
    );
    std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("a/again")).unwrap();
    let sources = [Source {
        kind: SourceKind::ModelsDir,
        dir: dir.path().to_path_buf(),
    }];
    let entries = Library::new().list(&sources, &plenty(), None, &HashMap::new());
    assert_eq!(entries.len(), 1);
}

#[test]
fn quantisations_are_read_from_file_names() {
    use describe::quantization_in_name as q;
    assert_eq!(q("Qwen3-8B-Q4_K_M").as_deref(), Some("Q4_K_M"));
    assert_eq!(q("model.IQ3_XS").as_deref(), Some("IQ3_XS"));
    assert_eq!(q("gemma-2b-f16").as_deref(), Some("F16"));
    assert_eq!(q("Qwen3-8B"), None);
}

#[test]
fn a_projector_pairs_with_models_below_it_only_inside_one_repo() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("mmproj-a-f16.gguf"),
        &tiny_gguf("proj", 0, 1, 10),
    );
    write(
        &dir.path().join("sub/model-Q4_0.gguf"),
        &tiny_gguf("Below", 512, 2, 10),
    );
    let sources = [Source {
        kind: SourceKind::ModelsDir,
        dir: dir.path().to_path_buf(),
    }];
    let entries = Library::new().list(&sources, &plenty(), None, &HashMap::new());
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].mmproj, None, "a models folder is not one repo");
}
