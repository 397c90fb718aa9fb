//! The model library against the real `corral serve` and the real llama-server: the generated
//! tiny model laid out as each tool keeps its models (the Hugging Face cache, llama.cpp's cache,
//! LM Studio's folders, Ollama's store, a `models.dirs` folder) is listed from every one, and an
//! instance created from a library entry — an Ollama blob, which has no `.gguf` name — answers
//! chat. Also `GET /api/v1/backends` over the real llama-server and a missing backend.
//!
//! Needs `CORRAL_LLAMA_SERVER` and `CORRAL_TEST_MODEL` (set by `scripts/test.sh`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::binary::{ready, required_file, Corral};
use reqwest::Method;
use serde_json::{json, Value};

const KEY: &str = "sk-models-management";

fn copy(model: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(model, to).unwrap();
    to.to_path_buf()
}

/// The tiny model in every layout below `home`; `mine` is the `models.dirs` folder.
fn lay_out(model: &Path, home: &Path, mine: &Path) {
    let repo = home.join(".cache/huggingface/hub/models--corral--tiny-GGUF");
    copy(model, &repo.join("blobs/0123abcd"));
    let snapshot = repo.join("snapshots/c0ffee");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink("../../blobs/0123abcd", snapshot.join("tiny-F32.gguf")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "c0ffee").unwrap();

    copy(
        model,
        &home.join(".cache/llama.cpp/corral_tiny-GGUF_tiny-F32.gguf"),
    );
    copy(
        model,
        &home.join(".lmstudio/models/corral/tiny-GGUF/tiny-F32.gguf"),
    );

    let ollama = home.join(".ollama/models");
    let digest = format!("{:0>64}", "7e57");
    copy(model, &ollama.join(format!("blobs/sha256-{digest}")));
    let manifest = json!({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{digest}")}]});
    let manifest_path = ollama.join("manifests/registry.ollama.ai/library/tiny/latest");
    std::fs::create_dir_all(manifest_path.parent().unwrap()).unwrap();
    std::fs::write(manifest_path, manifest.to_string()).unwrap();

    copy(model, &mine.join("nested/tiny.gguf"));
    std::fs::write(mine.join("truncated.gguf"), b"GGUF\x03\x00").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_lists_every_layout_and_an_entry_starts_and_chats() {
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mine = tempfile::tempdir().unwrap();
    lay_out(&model, home.path(), mine.path());

    let config = format!(
        "backends:\n  llama-cpp:\n    command: {}\n  mlx:\n    command: {}\n\
         instances:\n  port_range: [11700, 11719]\n  stop_grace_seconds: 5\n\
         models:\n  dirs: [{}]\n",
        llama_server.display(),
        home.path().join("no-such-mlx_lm.server").display(),
        mine.path().display(),
    );
    let home_dir = home.path().to_str().unwrap();
    let cache = format!("{home_dir}/.cache");
    // Every tool's location follows HOME; the variables that would move them are pinned to it.
    let env = [
        ("CORRAL_REQUIRE_INFERENCE_AUTH", "false"),
        ("CORRAL_MANAGEMENT_KEYS", KEY),
        ("HOME", home_dir),
        ("XDG_CACHE_HOME", cache.as_str()),
        ("HF_HOME", &format!("{cache}/huggingface")),
        ("HF_HUB_CACHE", &format!("{cache}/huggingface/hub")),
        ("LLAMA_CACHE", &format!("{cache}/llama.cpp")),
        ("OLLAMA_MODELS", &format!("{home_dir}/.ollama/models")),
    ];
    let corral = Corral::start(data.path(), &config, &env, KEY).await;

    // The library is the management API's: no key, no list.
    let anonymous = reqwest::get(corral.url("/api/v1/models")).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let (status, models) = corral.json(Method::GET, "/api/v1/models", None).await;
    assert_eq!(status, 200, "{models}");
    let models = models.as_array().unwrap();
    let sources: Vec<&str> = models
        .iter()
        .map(|m| m["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            "huggingface",
            "llama_cpp",
            "lm_studio",
            "ollama",
            "models_dir",
            "models_dir"
        ],
        "{models:#?}"
    );
    let size = std::fs::metadata(&model).unwrap().len();
    for entry in models.iter().filter(|m| m["error"].is_null()) {
        assert_eq!(entry["format"], "gguf", "{entry}");
        assert_eq!(entry["architecture"], "llama", "{entry}");
        assert_eq!(entry["size_bytes"], size, "{entry}");
        assert_eq!(entry["backends"], json!(["llama_cpp"]), "{entry}");
        assert!(entry["context_length"].as_u64().unwrap() > 0, "{entry}");
        assert!(entry["parameters"].as_u64().unwrap() > 0, "{entry}");
        let verdict = entry["fit"]["verdict"].as_str().unwrap();
        assert!(
            verdict == "gpu" || verdict == "cpu",
            "a 5 MB model fits: {entry}"
        );
    }
    // The fit at a context of the caller's choosing: the real model's KV cache and buffers
    // grow with it, its weights do not; a context that is not one changes nothing and says why.
    let (status, long) = corral
        .json(Method::GET, "/api/v1/models?context=65536", None)
        .await;
    assert_eq!(status, 200, "{long}");
    let (short, long) = (&models[0]["fit"], &long[0]["fit"]);
    assert_eq!(long["context"], 65536, "{long}");
    assert_eq!(short["weights_bytes"], long["weights_bytes"]);
    let grew = |field: &str| short[field].as_u64().unwrap() < long[field].as_u64().unwrap();
    assert!(
        grew("kv_cache_bytes") && grew("buffers_bytes") && grew("needed_bytes"),
        "{short} {long}"
    );
    for bad in ["0", "abc", "-5", "16777217", "1.5"] {
        let (status, body) = corral
            .json(Method::GET, &format!("/api/v1/models?context={bad}"), None)
            .await;
        assert_eq!(status, 400, "context={bad}: {body}");
        assert_eq!(body["error"], "invalid_context", "{body}");
    }

    let hub = &models[0];
    assert_eq!(hub["repo"], "corral/tiny-GGUF");
    assert!(hub["path"]
        .as_str()
        .unwrap()
        .ends_with("snapshots/c0ffee/tiny-F32.gguf"));
    assert_eq!(models[2]["repo"], "corral/tiny-GGUF");
    let ollama = &models[3];
    assert_eq!(
        (&ollama["name"], &ollama["tag"]),
        (&json!("tiny:latest"), &json!("latest"))
    );
    let truncated = models
        .iter()
        .find(|m| m["path"].as_str().unwrap().ends_with("truncated.gguf"))
        .unwrap();
    assert!(
        truncated["error"]
            .as_str()
            .unwrap()
            .contains("truncated.gguf"),
        "{truncated}"
    );
    assert_eq!(truncated["fit"]["verdict"], "unknown");

    // An instance from the Ollama entry: llama-server loads the blob as it is.
    let (status, created) = corral
        .json(
            Method::POST,
            "/api/v1/instances/from-library",
            Some(json!({
                "backend_type": "llama_cpp",
                "backend_options": {"model": ollama["path"], "ctx_size": 256, "gpu_layers": 0}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    corral
        .wait_for("from-library", Duration::from_secs(60), ready)
        .await;
    let (status, answer) = corral
        .post_unkeyed(
            "/v1/chat/completions",
            json!({"model": "from-library", "max_tokens": 4,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert!(answer["choices"][0]["message"].is_object(), "{answer}");

    // The backends: the real llama-server found with its version and devices; mlx-lm missing,
    // with advice.
    let (status, backends) = corral.json(Method::GET, "/api/v1/backends", None).await;
    assert_eq!(status, 200, "{backends}");
    let llama = &backends[0];
    assert_eq!(llama["backend"], "llama_cpp");
    assert_eq!(llama["installed"], true, "{llama}");
    assert_eq!(llama["path"], json!(llama_server));
    assert!(!llama["version"].as_str().unwrap().is_empty(), "{llama}");
    assert!(!llama["devices"].as_array().unwrap().is_empty(), "{llama}");
    let mlx = &backends[1];
    assert_eq!(
        (&mlx["backend"], &mlx["installed"]),
        (&json!("mlx_lm"), &json!(false))
    );
    assert!(
        mlx["error"].as_str().unwrap().contains("does not exist"),
        "{mlx}"
    );
    assert!(
        !mlx["install"]["commands"].as_array().unwrap().is_empty(),
        "{mlx}"
    );
    corral.terminate().await;
}
