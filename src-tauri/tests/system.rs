//! `/api/v1/system`, the instances' `resources`, and the fit check's `warnings`, over a real
//! listener with `tests/fixtures/fake_backend.py` as the backend.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

/// A GGUF file with llama metadata and `data_bytes` of (zero) tensor data, laid out as
/// llama.cpp's gguf.c writes it.
fn write_gguf(path: &Path, layers: u32, context: u32, embedding: u32, data_bytes: usize) {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let uints = [
        ("llama.block_count", layers),
        ("llama.context_length", context),
        ("llama.embedding_length", embedding),
        ("llama.attention.head_count", 8),
    ];
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // tensors
    out.extend_from_slice(&(1 + uints.len() as u64).to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    string(&mut out, "llama");
    for (key, value) in uints {
        string(&mut out, key);
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out.resize(out.len() + data_bytes, 0);
    std::fs::write(path, out).unwrap();
}

fn with_model(model: &Path) -> Value {
    json!({
        "backend_type": "llama_cpp",
        "backend_options": {"model": model.display().to_string()},
    })
}

#[tokio::test]
async fn system_reports_os_cpu_memory_probes_and_the_backends_view() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    // Behind management auth like every /api/v1 route.
    assert_eq!(engine.get("/api/v1/system").await.status(), 401);
    let response = engine
        .client
        .get(engine.url("/api/v1/system"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert!(report["cpu"]["threads"].as_u64().unwrap() > 0, "{report}");
    let memory = &report["memory"];
    assert!(memory["total_bytes"].as_u64().unwrap() > 0);
    assert!(memory["available_bytes"].as_u64().unwrap() <= memory["total_bytes"].as_u64().unwrap());
    assert!(!report["os"]["arch"].as_str().unwrap().is_empty());
    let probes: Vec<&str> = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|probe| probe["name"].as_str().unwrap())
        .collect();
    for name in ["host", "nvidia", "amd", "intel", "llama-server"] {
        assert!(probes.contains(&name), "{name} missing from {probes:?}");
    }
    // The fake llama-server lists one device; it shows up as the backend's view.
    let from_backend: Vec<&Value> = report["accelerators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["source"] == "llama-server")
        .collect();
    assert_eq!(from_backend.len(), 1, "{report}");
    assert_eq!(from_backend[0]["id"], "FAKE0");
    assert_eq!(from_backend[0]["name"], "fake device");
    assert!(["llama_cpp", "mlx_lm"].contains(&report["suggested_backend"].as_str().unwrap()));
    assert_eq!(report["engine"]["version"], env!("CARGO_PKG_VERSION"));
    engine.stop().await;
}

#[tokio::test]
async fn a_missing_llama_server_is_a_probe_that_found_nothing_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.backends.llama_cpp.command = "/nonexistent/llama-server".into();
    let engine = Engine::start(config).await;
    let response = engine.get("/api/v1/system").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let probe = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|probe| probe["name"] == "llama-server")
        .unwrap()
        .clone();
    assert_eq!(probe["ok"], true, "{probe}");
    assert_eq!(probe["present"], false);
    assert!(probe["detail"].as_str().unwrap().contains("not installed"));
    engine.stop().await;
}

#[tokio::test]
async fn a_running_instance_reports_its_cpu_and_memory_and_a_stopped_one_null() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("busy", llama(json!({}))).await;
    engine.wait_ready("busy").await;
    // The fake backend is a Python process: several MiB resident. Samples are up to a second
    // old by design, and one taken while the process was still starting shows far less.
    let ready = engine
        .wait_for("busy", "measured at its running size", |instance| {
            instance["resources"]["rss_bytes"]
                .as_u64()
                .is_some_and(|rss| rss > 1 << 20)
        })
        .await;
    let resources = &ready["resources"];
    assert!(resources["cpu_percent"].is_number(), "{ready}");
    assert!(resources.get("vram_bytes").is_some());
    let listed: Value = engine.get("/api/v1/instances").await.json().await.unwrap();
    assert!(listed[0]["resources"]["rss_bytes"].as_u64().unwrap() > 0);

    let stopped: Value = engine
        .post("/api/v1/instances/busy/stop")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["resources"], Value::Null);
    engine.stop().await;
}

#[tokio::test]
async fn a_model_too_large_for_memory_is_refused_with_the_numbers_or_started_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    // 1000 layers × 10M tokens × 2 × 65536 wide × 2 bytes: exabytes of KV cache.
    let huge: PathBuf = models.join("huge.gguf");
    write_gguf(&huge, 1000, 10_000_000, 65536, 4096);
    // 2 layers × 512 tokens × 2 × 64 × 2 bytes = 256 KiB of KV cache, 1 MiB of weights.
    let small = models.join("small.gguf");
    write_gguf(&small, 2, 512, 64, 1 << 20);

    // Placed by memory (the default), a model that cannot fit even alone is refused at once.
    let engine = Engine::start(test_config(dir.path())).await;
    let refused = engine
        .post_json("/api/v1/instances/huge", &with_model(&huge))
        .await;
    let body = assert_error(refused, 507, "insufficient_memory").await;
    let details = body["details"].as_str().unwrap();
    assert!(
        details.contains("'huge' needs") && details.contains("of RAM") && details.contains("free"),
        "{details}"
    );
    assert_eq!(
        engine.get("/api/v1/instances/huge").await.status(),
        404,
        "nothing was kept"
    );
    engine.stop().await;

    // With placement by memory off, the start goes ahead with the fit check's warning.
    let mut config = test_config(dir.path());
    config.scheduler.memory_aware = false;
    let engine = Engine::start(config).await;
    let created = engine.create("huge", with_model(&huge)).await;
    assert_eq!(created["status"], "running", "the start goes ahead");
    let warnings = created["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{created}");
    let warning = warnings[0].as_str().unwrap();
    assert!(warning.contains("of RAM"), "{warning}");
    assert!(warning.contains("10000000 tokens"), "{warning}");
    // A plain GET carries no warnings.
    assert!(engine.instance("huge").await.get("warnings").is_none());

    let fits = engine.create("small", with_model(&small)).await;
    assert!(fits.get("warnings").is_none(), "{fits}");

    // Start and update check again; a shorter context makes the huge model fit.
    engine.post("/api/v1/instances/huge/stop").await;
    let started: Value = engine
        .post("/api/v1/instances/huge/start")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        started["warnings"].as_array().unwrap().len(),
        1,
        "{started}"
    );
    let mut shorter = with_model(&huge);
    shorter["backend_options"]["ctx_size"] = json!(1);
    let updated: Value = engine
        .put_json("/api/v1/instances/huge", &shorter)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["status"], "running");
    assert!(updated.get("warnings").is_none(), "{updated}");
    engine.stop().await;
}

#[tokio::test]
async fn openapi_documents_the_system_report_and_instance_resources() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    let document: Value = engine
        .get("/api/v1/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    assert!(document["paths"]["/api/v1/system"]["get"].is_object());
    let schemas = &document["components"]["schemas"];
    for field in [
        "os",
        "cpu",
        "memory",
        "accelerators",
        "probes",
        "suggested_backend",
    ] {
        assert!(
            schemas["SystemReport"]["properties"][field].is_object(),
            "SystemReport.{field}"
        );
    }
    assert!(schemas["Instance"]["properties"]["resources"].is_object());
    assert!(schemas["Instance"]["properties"]["warnings"].is_object());
    engine.stop().await;
}
