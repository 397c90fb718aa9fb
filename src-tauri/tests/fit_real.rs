//! The memory estimate (`devices::fit`) against what the real llama-server allocates: each case
//! starts it on the tiny test model with the same options and reads the buffer sizes it logs.
//!
//! Needs `CORRAL_LLAMA_SERVER` and `CORRAL_TEST_MODEL` (set by `scripts/test.sh`).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::required_file;
use corral::backends::{BackendOptions, BackendType};
use corral::devices::{fit, gguf};
use serde_json::json;

/// The sizes llama-server logged for the context it serves with, in bytes.
#[derive(Debug)]
struct Logged {
    kv_cache: u64,
    compute: u64,
    output: u64,
}

/// Starts llama-server with `options`, waits until it serves, and reads its buffer sizes.
fn run_llama_server(llama_server: &Path, options: &BackendOptions) -> Logged {
    // A Unix socket of its own (llama-server listens on one when the host ends in `.sock`):
    // nothing here connects, and a TCP port picked in advance could be taken meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("llama-server.sock");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(llama_server)
        .args(options.to_args())
        .arg("--host")
        .arg(&socket)
        .arg("--verbose")
        .stdout(Stdio::from(log.reopen().unwrap()))
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let mut text = String::new();
        log.reopen().unwrap().read_to_string(&mut text).unwrap();
        if text.contains("all slots are idle") {
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("llama-server exited ({status}):\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "llama-server did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // llama-server sizes a trial context before the real one: the last figures are the real.
    let last = |what: &str| {
        let line = text
            .lines()
            .rev()
            .find(|line| line.contains(what) && line.contains(" buffer size ="))
            .unwrap_or_else(|| panic!("no {what} buffer size in:\n{text}"));
        let mib: f64 = line
            .rsplit('=')
            .next()
            .unwrap()
            .trim()
            .trim_end_matches("MiB")
            .trim()
            .parse()
            .unwrap();
        (mib * 1024.0 * 1024.0) as u64
    };
    Logged {
        kv_cache: last("KV"),
        compute: last("compute"),
        output: last("output"),
    }
}

#[test]
fn the_estimate_matches_the_buffers_the_real_llama_server_allocates() {
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let header = gguf::read_header(&model).unwrap();
    let path = model.to_string_lossy();
    let cases = [
        json!({"model": path}),
        json!({"model": path, "ctx_size": 4096}),
        json!({"model": path, "ctx_size": 4096, "flash_attn": "off"}),
        json!({"model": path, "ctx_size": 2048, "flash_attn": "on", "ubatch_size": 128}),
        json!({"model": path, "ctx_size": 2048, "parallel": 2, "flash_attn": "off"}),
        json!({"model": path, "ctx_size": 2048, "parallel": 2, "kv_unified": true}),
        json!({"model": path, "ctx_size": 2048, "batch_size": 256, "cache_type_k": "f32"}),
    ];
    // The logged figures are MiB with two decimals: 0.01 MiB is their resolution.
    let resolution = 11 * 1024;
    for case in cases {
        let options = BackendOptions::from_json(BackendType::LlamaCpp, &case).unwrap();
        let estimate = fit::estimate(&header, &options, false);
        let logged = run_llama_server(&llama_server, &options);
        let close = |estimated: u64, logged: u64| estimated.abs_diff(logged) <= resolution;
        assert!(
            close(estimate.kv_cache_bytes, logged.kv_cache),
            "{case}: KV cache {estimate:?} against {logged:?}"
        );
        assert!(
            close(estimate.output_bytes, logged.output),
            "{case}: output {estimate:?} against {logged:?}"
        );
        // The activations are a rule of thumb: within a quarter, where the mask and the scores
        // (most of the buffer at long contexts) are counted exactly.
        let (low, high) = (logged.compute * 3 / 4, logged.compute * 5 / 4);
        assert!(
            (low..=high).contains(&estimate.compute_bytes),
            "{case}: compute {estimate:?} against {logged:?}"
        );
    }
}
