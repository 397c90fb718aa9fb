//! The real `corral` binary killed with SIGKILL leaves nothing of its backends running: not the
//! backend, and not the workers the backend started (vLLM's engine core and worker processes are
//! such workers), even when nothing about them says they came from Corral.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::binary::{wait_gone, Corral};
use common::{fake_backend_script, process_exists};
use serde_json::{json, Value};

const KEY: &str = "sk-engine-death";

/// Kills the worker if the test fails before the engine's death could.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_engine_leaves_no_backend_and_no_worker_behind() {
    let data = tempfile::tempdir().unwrap();
    let marker = data.path().join("worker.pid");
    // The backend starts a worker with an empty environment (so without the launch's token, as
    // after vLLM's setproctitle), in its process group, then becomes the fake llama-server. Its
    // --version and --help runs (the engine asks those too) start none.
    let wrapper = data.path().join("backend.sh");
    let fake = fake_backend_script();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in --help|--version|--list-devices) exec python3 '{fake}' \"$@\";; esac\n\
             env -i sleep 300 &\necho $! > '{marker}'\nexec python3 '{fake}' \"$@\"\n",
            marker = marker.display(),
            fake = fake.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = format!(
        "backends:\n  llama-cpp:\n    command: {}\ninstances:\n  port_range: [11450, 11469]\n",
        wrapper.display()
    );
    let corral = Corral::start(
        data.path(),
        &config,
        &[("CORRAL_MANAGEMENT_KEYS", KEY)],
        KEY,
    )
    .await;
    let (status, body) = corral
        .json(
            reqwest::Method::POST,
            "/api/v1/instances/family",
            Some(json!({"backend_type": "llama_cpp", "backend_options": {"model": "m.gguf"}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let view = corral
        .wait_for("family", Duration::from_secs(60), |v: &Value| {
            v["health"] == "ready"
        })
        .await;
    let backend = u32::try_from(view["pid"].as_u64().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let worker: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the backend never wrote its worker's pid"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _reap = Reap(worker);
    assert!(process_exists(worker) && process_exists(backend));
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(environ.is_empty(), "the worker carries an environment");

    corral.sigkill().await;
    for pid in [backend, worker] {
        wait_gone(i32::try_from(pid).unwrap(), Duration::from_secs(30)).await;
    }
}
