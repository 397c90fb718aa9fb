//! `cargo bench -p corral --no-default-features --bench models`: the model library's scan of
//! 1,000 model files across every source layout, cold (nothing read yet: every header is read)
//! and warm (the second scan: folders listed and files stat'ed, nothing read), each with the JSON
//! `GET /api/v1/models` answers. Prints a table; docs/benchmarks.md records the figures.
//!
//! Every GGUF carries a 32,000-token vocabulary in its header, as real llama models do, so the
//! cold figure pays for the pass over it. `CORRAL_BENCH_ROUNDS` (default 5) sets the rounds;
//! each round scans a new fixture's library cold, then warm.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use corral::devices::fit::Available;
use corral::devices::gguf::writer::{gguf, Meta};
use corral::models::{Library, Source, SourceKind};

const VOCABULARY: usize = 32_000;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("CORRAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let dir = tempfile::tempdir()?;
    let (sources, files) = fixture(dir.path())?;
    let available = Available {
        gpus: Vec::new(),
        ram_bytes: 16 << 30,
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut listed = 0;
    for _ in 0..rounds {
        let library = Library::new();
        let start = Instant::now();
        let entries = library.list(&sources, &available, None, &HashMap::new());
        let json = serde_json::to_vec(&entries)?;
        cold.push(start.elapsed());
        let start = Instant::now();
        let entries = library.list(&sources, &available, None, &HashMap::new());
        let json_again = serde_json::to_vec(&entries)?;
        warm.push(start.elapsed());
        anyhow::ensure!(json == json_again, "the warm scan listed something else");
        listed = entries.len();
    }
    println!("model library scan: {files} model files, {listed} models, {rounds} rounds (median, min, max)");
    println!("| scan | median | min | max |");
    println!("|---|---|---|---|");
    for (name, times) in [
        ("cold (every header read)", &mut cold),
        ("warm (cached)", &mut warm),
    ] {
        times.sort();
        println!(
            "| {name} | {} | {} | {} |",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A llama GGUF header with a real-sized vocabulary and `data` bytes of weights.
fn model(name: &str, vocabulary: &[&str], data: u64) -> Vec<u8> {
    gguf(
        &[
            ("general.architecture", Meta::Str("llama")),
            ("general.name", Meta::Str(name)),
            ("general.file_type", Meta::U32(15)),
            ("llama.block_count", Meta::U32(32)),
            ("llama.context_length", Meta::U32(8192)),
            ("llama.embedding_length", Meta::U32(4096)),
            ("llama.attention.head_count", Meta::U32(32)),
            ("llama.attention.head_count_kv", Meta::U32(8)),
            ("tokenizer.ggml.tokens", Meta::StrArray(vocabulary)),
        ],
        &[
            ("token_embd.weight", &[4096, 32000], 12),
            ("output.weight", &[4096, 32000], 12),
        ],
        data,
    )
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::create_dir_all(path.parent().context("no parent")?)?;
    fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

/// 1,000 model files: 400 GGUF in the Hugging Face cache (snapshot symlinks to blobs), 100
/// safetensors folders there, 200 in LM Studio's folders, 100 flat in llama.cpp's cache, 100
/// Ollama blobs with manifests, and 100 in a models folder, 40 of them the parts of 20 split
/// models. Answers the sources and the number of model files.
fn fixture(root: &Path) -> anyhow::Result<(Vec<Source>, usize)> {
    let words: Vec<String> = (0..VOCABULARY).map(|i| format!("tok{i}")).collect();
    let vocabulary: Vec<&str> = words.iter().map(String::as_str).collect();
    let bytes = model("bench", &vocabulary, 1024);
    let mut files = 0;

    let hub = root.join("hub");
    for i in 0..400 {
        let repo = hub.join(format!("models--org{}--model{i}-GGUF", i % 40));
        write(&repo.join(format!("blobs/{i:064x}")), &bytes)?;
        let snapshot = repo.join("snapshots/0123456789abcdef");
        fs::create_dir_all(&snapshot)?;
        std::os::unix::fs::symlink(
            format!("../../blobs/{i:064x}"),
            snapshot.join(format!("model{i}-Q4_K_M.gguf")),
        )?;
        write(&repo.join("refs/main"), b"0123456789abcdef")?;
        files += 1;
    }
    let config = br#"{"model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "hidden_size": 4096, "max_position_embeddings": 8192}"#;
    let header = br#"{"embed": {"dtype": "BF16", "shape": [32000, 4096], "data_offsets": [0, 0]}}"#;
    let mut safetensors = (header.len() as u64).to_le_bytes().to_vec();
    safetensors.extend_from_slice(header);
    for i in 0..100 {
        let snapshot = hub.join(format!("models--org--hf{i}/snapshots/abc"));
        write(&snapshot.join("config.json"), config)?;
        write(&snapshot.join("model.safetensors"), &safetensors)?;
        write(&snapshot.join("tokenizer.json"), b"{}")?;
        files += 1;
    }
    for i in 0..200 {
        let path = root.join(format!(
            "lmstudio/pub{}/model{i}-GGUF/model{i}-Q4_K_M.gguf",
            i % 20
        ));
        write(&path, &bytes)?;
        files += 1;
    }
    for i in 0..100 {
        write(
            &root.join(format!("llama/org_model{i}_model{i}-Q4_K_M.gguf")),
            &bytes,
        )?;
        files += 1;
    }
    for i in 0..100 {
        let digest = format!("{i:064x}");
        write(&root.join(format!("ollama/blobs/sha256-{digest}")), &bytes)?;
        let manifest = serde_json::json!({"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{digest}")}]});
        write(
            &root.join(format!(
                "ollama/manifests/registry.ollama.ai/library/model{i}/latest"
            )),
            manifest.to_string().as_bytes(),
        )?;
        files += 1;
    }
    for i in 0..60 {
        write(
            &root.join(format!("mine/dir{}/model{i}-Q8_0.gguf", i % 6)),
            &bytes,
        )?;
        files += 1;
    }
    for i in 0..20 {
        for part in 1..=2 {
            let name = format!("mine/split/big{i}-Q4_K_M-0000{part}-of-00002.gguf");
            write(&root.join(name), &bytes)?;
            files += 1;
        }
    }
    let source = |kind, dir: PathBuf| Source { kind, dir };
    Ok((
        vec![
            source(SourceKind::Huggingface, hub),
            source(SourceKind::LlamaCpp, root.join("llama")),
            source(SourceKind::LmStudio, root.join("lmstudio")),
            source(SourceKind::Ollama, root.join("ollama")),
            source(SourceKind::ModelsDir, root.join("mine")),
        ],
        files,
    ))
}
