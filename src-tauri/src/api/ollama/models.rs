//! Instances described as Ollama models: the entries of `/api/tags` and `/api/ps` and the
//! answer of `/api/show`, from the instance definition and the model file on disk.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::instances::InstanceView;

/// What `expires_at` says for an instance that is never stopped for idleness (Ollama's
/// `keep_alive: -1` also answers a date centuries away).
const NEVER_EXPIRES_YEARS: i64 = 100;

/// One `/api/tags` entry.
pub fn tag(view: &InstanceView) -> Value {
    let model = model_path(view);
    let file = model.as_deref().map(Path::new).filter(|p| p.exists());
    let modified = file
        .and_then(|path| std::fs::metadata(path).ok())
        .and_then(|meta| meta.modified().ok())
        .map(DateTime::<Utc>::from)
        .or_else(|| DateTime::from_timestamp(view.created, 0))
        .unwrap_or_else(Utc::now);
    json!({
        "name": view.name,
        "model": view.name,
        "modified_at": modified.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "size": file.map(size_on_disk).unwrap_or(0),
        "digest": digest(view, model.as_deref()),
        "details": details(view, model.as_deref()),
    })
}

/// One `/api/ps` entry: a tag plus when the instance will be stopped for idleness.
///
/// Corral does not expose when the instance was last used, so `expires_at` is counted from
/// now: the latest the idle stop can happen if no request comes. GPU memory is not measured:
/// `size_vram` is 0.
pub fn running(view: &InstanceView) -> Value {
    let mut entry = tag(view);
    let expires = expires_at(Utc::now(), view.options.idle_timeout);
    entry["expires_at"] = json!(expires.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    entry["size_vram"] = json!(0);
    if let Some(context) = context_length(view) {
        entry["context_length"] = json!(context);
    }
    entry
}

/// When an instance idle from `now` on is stopped, for an `idle_timeout` of `minutes` (0 =
/// never). A timeout past what a date can hold reads as never, rather than overflowing.
fn expires_at(now: DateTime<Utc>, minutes: u64) -> DateTime<Utc> {
    let never = || now + Duration::days(365 * NEVER_EXPIRES_YEARS);
    if minutes == 0 {
        return never();
    }
    i64::try_from(minutes)
        .ok()
        .and_then(Duration::try_minutes)
        .filter(|idle| *idle < Duration::days(365 * NEVER_EXPIRES_YEARS))
        .and_then(|idle| now.checked_add_signed(idle))
        .unwrap_or_else(never)
}

/// The `/api/show` answer.
pub fn show(view: &InstanceView) -> Value {
    let model = model_path(view);
    let tag = tag(view);
    let parameters = context_length(view)
        .map(|n| format!("num_ctx                        {n}"))
        .unwrap_or_default();
    let mut model_info = Map::new();
    if let Some(context) = context_length(view) {
        model_info.insert("context_length".into(), json!(context));
    }
    json!({
        "modelfile": format!(
            "# Served by Corral: instance {} ({})\nFROM {}\n",
            view.name,
            view.options.backend_type.as_str(),
            model.as_deref().unwrap_or("")
        ),
        "parameters": parameters,
        "template": "",
        "details": tag["details"],
        "model_info": model_info,
        "capabilities": capabilities(view),
        "modified_at": tag["modified_at"],
    })
}

fn option<'a>(view: &'a InstanceView, name: &str) -> Option<&'a Value> {
    view.options.backend_options.get(name)
}

fn model_path(view: &InstanceView) -> Option<String> {
    option(view, "model")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn context_length(view: &InstanceView) -> Option<u64> {
    option(view, "ctx_size")
        .or_else(|| option(view, "max_model_len"))
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
}

/// What Ollama-aware editors check before offering a model for chat, tools or embeddings.
fn capabilities(view: &InstanceView) -> Vec<&'static str> {
    let flag = |name| option(view, name).and_then(Value::as_bool) == Some(true);
    let pooling_runner = ["runner", "task"].iter().any(|name| {
        option(view, name)
            .and_then(Value::as_str)
            .is_some_and(|v| matches!(v, "pooling" | "embed" | "embedding"))
    });
    if flag("embedding") || pooling_runner {
        return vec!["embedding"];
    }
    let mut capabilities = vec!["completion"];
    if view.options.backend_type.descriptor().renders_tools {
        capabilities.push("tools");
        if option(view, "mmproj").is_some() {
            capabilities.push("vision");
        }
    }
    capabilities
}

fn details(view: &InstanceView, model: Option<&str>) -> Value {
    let file_name = model
        .and_then(|m| Path::new(m).file_name())
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let format = if file_name.to_ascii_lowercase().ends_with(".gguf") {
        "gguf"
    } else {
        view.options.backend_type.descriptor().model_format
    };
    let (parameter_size, quantization_level) = name_hints(file_name);
    json!({
        "parent_model": "",
        "format": format,
        "family": "",
        "families": null,
        "parameter_size": parameter_size,
        "quantization_level": quantization_level,
    })
}

/// Parameter count and quantization as model files conventionally spell them in their name
/// (`Qwen2.5-0.5B-Instruct-Q4_K_M.gguf`, `llama-2-7b.Q5_K_S.gguf`); empty when absent.
fn name_hints(file_name: &str) -> (String, String) {
    let stem = file_name
        .strip_suffix(".gguf")
        .or_else(|| file_name.strip_suffix(".GGUF"))
        .unwrap_or(file_name);
    let dashed: Vec<&str> = stem.split('-').collect();
    let dotted = dashed.iter().flat_map(|part| part.split('.'));
    let is_size = |t: &&str| {
        let Some(number) = t.strip_suffix(['B', 'b', 'M', 'm']) else {
            return false;
        };
        !number.is_empty() && number.parse::<f64>().is_ok()
    };
    let size = dashed
        .iter()
        .copied()
        .find(is_size)
        .or_else(|| dotted.clone().find(is_size))
        .map(str::to_ascii_uppercase)
        .unwrap_or_default();
    let is_quant = |t: &&str| {
        let upper = t.to_ascii_uppercase();
        let rest = upper.strip_prefix("IQ").or_else(|| upper.strip_prefix('Q'));
        rest.is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            || matches!(upper.as_str(), "F16" | "BF16" | "F32" | "FP16")
    };
    let quant = dotted
        .clone()
        .find(is_quant)
        .map(str::to_ascii_uppercase)
        .unwrap_or_default();
    (size, quant)
}

/// Bytes of the model: the file, or the files directly in a model folder (safetensors shards).
fn size_on_disk(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| entry.metadata().ok())
                    .filter(|meta| meta.is_file())
                    .map(|meta| meta.len())
                    .sum()
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// A stable 64-hex identifier of the instance definition (name, model, creation), standing in
/// for Ollama's manifest digest: clients show its first characters as the model's id. It is
/// not a hash of the file's contents (that would mean reading gigabytes on every listing).
fn digest(view: &InstanceView, model: Option<&str>) -> String {
    (0u8..4)
        .map(|round| {
            let mut hasher = DefaultHasher::new();
            (round, &view.name, model, view.created).hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_at_is_a_date_for_every_idle_timeout_however_large() {
        let now = Utc::now();
        assert_eq!(expires_at(now, 5), now + Duration::minutes(5));
        let never = now + Duration::days(365 * NEVER_EXPIRES_YEARS);
        for minutes in [
            0,
            1 << 40,
            i64::MAX as u64 / 60_000,
            i64::MAX as u64,
            u64::MAX,
        ] {
            assert_eq!(expires_at(now, minutes), never, "{minutes}");
        }
    }

    #[test]
    fn size_and_quantization_are_read_from_conventional_file_names() {
        let hints = |name: &str| name_hints(name);
        assert_eq!(
            hints("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"),
            ("0.5B".into(), "Q4_K_M".into())
        );
        assert_eq!(
            hints("llama-2-7b.Q5_K_S.gguf"),
            ("7B".into(), "Q5_K_S".into())
        );
        assert_eq!(
            hints("gemma-3-270m-it-iq4_xs.gguf"),
            ("270M".into(), "IQ4_XS".into())
        );
        assert_eq!(hints("phi-3-mini-f16.gguf"), (String::new(), "F16".into()));
        assert_eq!(hints("tiny-llama.gguf"), (String::new(), String::new()));
    }
}
