//! The official Python clients (`openai`, `anthropic`, `ollama`), unchanged, against the real
//! `corral` binary supervising a real `llama-server` with the tiny model.
//!
//! Runs `scripts/clients-venv.sh` (a pinned project-local virtualenv) and then pytest over
//! `tests/clients/`, which creates its instances through the management API. Needs
//! `CORRAL_LLAMA_SERVER` and `CORRAL_TEST_MODEL`, and for the MLX instance `CORRAL_MLX_SERVER`
//! and `CORRAL_TEST_HF_MODEL`: missing, the test fails, never skips.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::binary::{required_dir, required_file, spawn_corral_with_config};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

const MANAGEMENT_KEY: &str = "sk-clients-management";
const INFERENCE_KEY: &str = "sk-clients-inference";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits one folder below the repository root")
        .to_path_buf()
}

/// `corral serve` on a random port with inference auth on, llama-server and mlx_lm.server
/// (offline) as its backends.
async fn start_corral(data_dir: &Path, llama_server: &Path, mlx_server: &Path) -> (Child, String) {
    let env = [
        ("CORRAL_MANAGEMENT_KEYS", MANAGEMENT_KEY),
        ("CORRAL_INFERENCE_KEYS", INFERENCE_KEY),
        ("CORRAL_REQUIRE_INFERENCE_AUTH", "true"),
    ];
    let config = format!(
        "backends:\n  llama-cpp:\n    command: {}\n  mlx:\n    command: {}\n    environment:\n      \
         HF_HUB_OFFLINE: \"1\"\n      HF_HOME: {}\ninstances:\n  port_range: [11200, 11299]\n  \
         stop_grace_seconds: 5\n",
        llama_server.display(),
        mlx_server.display(),
        data_dir.join("hf-home").display(),
    );
    spawn_corral_with_config(data_dir, &config, &env).await
}

/// The venv's python, created or reused by the project's script.
async fn clients_python(root: &Path) -> PathBuf {
    let out = Command::new("bash")
        .arg(root.join("scripts/clients-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run scripts/clients-venv.sh");
    assert!(
        out.status.success(),
        "scripts/clients-venv.sh failed: {}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 path");
    let python = PathBuf::from(stdout.lines().last().expect("a python path").trim());
    assert!(python.is_file(), "{} is not a file", python.display());
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_clients_work_unchanged_against_corral() {
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let mlx_server = required_file("CORRAL_MLX_SERVER");
    let hf_model = required_dir("CORRAL_TEST_HF_MODEL");
    let root = repo_root();
    let python = clients_python(&root).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (mut corral, base) = start_corral(data.path(), &llama_server, &mlx_server).await;

    let pytest = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "tests/clients",
        ])
        .current_dir(&root)
        .env("CORRAL_BASE_URL", &base)
        .env("CORRAL_MANAGEMENT_KEY", MANAGEMENT_KEY)
        .env("CORRAL_INFERENCE_KEY", INFERENCE_KEY)
        .env("CORRAL_TEST_MODEL", &model)
        .env("CORRAL_TEST_HF_MODEL", &hf_model)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The clients must reach Corral directly, whatever proxy the environment names.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("OLLAMA_HOST")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), pytest)
        .await
        .expect("pytest did not finish within 10 minutes")
        .expect("run pytest");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));

    let pid = corral.id().expect("corral pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM corral");
    let exit = tokio::time::timeout(Duration::from_secs(30), corral.wait())
        .await
        .expect("corral did not exit within 30 s of SIGTERM")
        .expect("wait");
    assert!(
        out.status.success(),
        "the Python client suite failed ({}); its output is above",
        out.status
    );
    assert!(exit.success(), "corral exited with {exit}");
}
