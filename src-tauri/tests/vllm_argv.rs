//! Against the real vLLM's own argument parser: for every flag spelling it has, the argv Corral
//! builds from the parsed command means to vLLM exactly what the command meant. The parser is
//! built by `fixtures/vllm_argv_check.py` under vLLM's venv; nothing is served.
//!
//! Needs `CORRAL_VLLM` (vLLM's `bin/vllm`, its venv's python beside it), set by
//! `scripts/test-vllm.sh`; `#[ignore]` like the other tests of the 6 GB install.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use corral::backends::{parse_command, BackendType};
use serde_json::{json, Value};

fn run_check(python: &Path, mode: &str, file: &Path) -> std::process::Output {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm_argv_check.py");
    Command::new(python)
        .arg(script)
        .arg(mode)
        .arg(file)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs vLLM (6 GB); run by scripts/test-vllm.sh"]
fn the_argv_corral_builds_means_to_the_real_vllm_what_the_parsed_command_meant() {
    let vllm = common::binary::required_file("CORRAL_VLLM");
    let python = vllm.with_file_name("python");
    let dir = tempfile::tempdir().unwrap();
    let commands_file = dir.path().join("commands.json");
    let out = run_check(&python, "commands", &commands_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commands: Vec<Vec<String>> =
        serde_json::from_slice(&std::fs::read(&commands_file).unwrap()).unwrap();
    assert!(commands.len() > 300, "only {} commands", commands.len());

    let mut untyped = Vec::new();
    let pairs: Vec<Value> = commands
        .iter()
        .map(|words| {
            let command = format!("vllm serve {}", shell_words::join(words));
            let options = parse_command(BackendType::Vllm, &command)
                .unwrap_or_else(|e| panic!("{command}: {e}"));
            if !options.extra_args().is_empty() {
                untyped.push(command);
            }
            json!({"original": words, "corral": options.to_args()})
        })
        .collect();
    assert!(untyped.is_empty(), "not typed: {untyped:#?}");

    let pairs_file = dir.path().join("pairs.json");
    std::fs::write(&pairs_file, serde_json::to_vec(&pairs).unwrap()).unwrap();
    let out = run_check(&python, "check", &pairs_file);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("{} checked, 0 differ", pairs.len())),
        "{report}"
    );
}

/// The table in the repository is what `scripts/gen_vllm_options.py` makes of the installed
/// vLLM: after a vLLM upgrade this fails until the table is regenerated.
#[test]
#[ignore = "needs vLLM (6 GB); run by scripts/test-vllm.sh"]
fn the_vllm_table_is_what_the_generator_makes_of_the_installed_vllm() {
    let vllm = common::binary::required_file("CORRAL_VLLM");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(vllm.with_file_name("python"))
        .arg(root.join("../scripts/gen_vllm_options.py"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(root.join("src/backends/vllm_table.rs")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == table,
        "src/backends/vllm_table.rs is stale: regenerate it with scripts/gen_vllm_options.py"
    );
}
