//! Behaviour of the supervisor against small fake backends: a Python HTTP server answering
//! `/health`, and shell scripts that print, crash or ignore signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::*;

/// Generous: two busy cores, and Python takes a while to start.
const PATIENCE: Duration = Duration::from_secs(60);

const FAKE_BACKEND: &str = r#"
import http.server, os, sys
port = int(sys.argv[1])
crash_once = os.environ.get("CRASH_ONCE_FILE")
if crash_once and not os.path.exists(crash_once):
    open(crash_once, "w").close()
    print("crashing on purpose", flush=True)
    sys.exit(3)
sick = os.environ.get("SICK_FILE")
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        healthy = self.path == "/health" and not (sick and os.path.exists(sick))
        self.send_response(200 if healthy else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
print(f"serving on {port}", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

struct Fixture {
    dir: TempDir,
    settings: Arc<SupervisorSettings>,
    supervisor: Supervisor,
}

impl Fixture {
    fn new(name: &str) -> Self {
        Self::with(name, |_| {})
    }

    fn with(name: &str, adjust: impl FnOnce(&mut SupervisorSettings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings_in(dir.path());
        adjust(&mut settings);
        let settings = Arc::new(settings);
        let supervisor = Supervisor::new(name, settings.clone());
        Self {
            dir,
            settings,
            supervisor,
        }
    }

    /// A spec running the fake HTTP backend on a free port.
    fn http_backend(&self, env: &[(&str, PathBuf)]) -> LaunchSpec {
        let script = self.dir.path().join("backend.py");
        std::fs::write(&script, FAKE_BACKEND).unwrap();
        let port = free_port();
        LaunchSpec {
            program: "python3".to_string(),
            args: vec![script.display().to_string(), port.to_string()],
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.display().to_string()))
                .collect(),
            health_url: format!("http://127.0.0.1:{port}/health"),
            secret: Default::default(),
            ready_request: None,
            stop_signal: StopSignal::Interrupt,
        }
    }

    fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.settings.logs_dir.join(format!("{name}.log")))
            .unwrap_or_default()
    }
}

fn settings_in(dir: &Path) -> SupervisorSettings {
    SupervisorSettings {
        logs_dir: dir.join("logs"),
        run_dir: dir.join("run"),
        stop_grace: Duration::from_secs(10),
        log_max_bytes: 100 * 1024 * 1024,
        log_keep_files: 3,
        restart_reset_after: Duration::from_secs(600),
    }
}

/// A backend that is a shell script; its health URL points at a port nobody listens on.
fn shell(script: &str) -> LaunchSpec {
    LaunchSpec {
        program: "sh".to_string(),
        args: vec!["-c".to_string(), script.to_string()],
        env: Vec::new(),
        health_url: format!("http://127.0.0.1:{}/health", free_port()),
        secret: Default::default(),
        ready_request: None,
        stop_signal: StopSignal::Interrupt,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn policy(auto_restart: bool, max_restarts: u32, restart_delay: Duration) -> RestartPolicy {
    RestartPolicy {
        auto_restart,
        max_restarts,
        restart_delay,
    }
}

fn no_restart() -> RestartPolicy {
    policy(false, 0, Duration::ZERO)
}

/// Follows the state until `done` holds; returns every state seen on the way (the last matches).
async fn states_until(
    supervisor: &Supervisor,
    done: impl Fn(&RuntimeState) -> bool,
) -> Vec<RuntimeState> {
    let mut rx = supervisor.subscribe();
    let mut seen = Vec::new();
    let follow = async {
        loop {
            let state = rx.borrow_and_update().clone();
            let finished = done(&state);
            seen.push(state);
            if finished {
                return;
            }
            rx.changed().await.unwrap();
        }
    };
    if tokio::time::timeout(PATIENCE, follow).await.is_err() {
        panic!("the expected state never came; seen: {seen:#?}");
    }
    seen
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn is_alive(pid: u32) -> bool {
    let pid_t = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    if nix::sys::signal::kill(pid_t, None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => cfg!(not(target_os = "linux")),
    }
}

/// Polls until `pid` is gone; false if it still runs after the patience runs out.
async fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Polls `condition` until it holds; panics when the patience runs out.
async fn eventually(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "the condition never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

mod lifecycle;
mod logs;
mod orphans;
mod ready;
