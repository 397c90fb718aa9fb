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

#[tokio::test]
async fn started_instance_becomes_ready_and_stop_leaves_no_process() {
    let fx = Fixture::new("srv");
    let started = fx
        .supervisor
        .start(fx.http_backend(&[]), no_restart())
        .await
        .unwrap();
    assert_eq!(started.status(), Status::Running);
    assert_eq!(started.health(), Some(Health::Starting));
    assert!(started.started_at.is_some());
    let pid = started.pid.unwrap();
    assert!(
        fx.settings.run_dir.join("srv.pid").exists(),
        "a running child has a pid file"
    );

    fx.supervisor.wait_ready(PATIENCE).await.unwrap();
    assert_eq!(fx.supervisor.state().health(), Some(Health::Ready));

    let stopped = fx.supervisor.stop().await.unwrap();
    assert_eq!(stopped.status(), Status::Stopped);
    assert_eq!(
        (stopped.health(), stopped.pid, stopped.started_at),
        (None, None, None)
    );
    assert!(!is_alive(pid), "the backend was reaped by the stop");
    assert!(!fx.settings.run_dir.join("srv.pid").exists());

    let again = fx.supervisor.stop().await.unwrap();
    assert_eq!(
        again, stopped,
        "stopping a stopped instance changes nothing"
    );
}

#[tokio::test]
async fn starting_a_running_instance_returns_its_state_unchanged() {
    let fx = Fixture::new("twice");
    let first = fx
        .supervisor
        .start(fx.http_backend(&[]), no_restart())
        .await
        .unwrap();
    let second = fx
        .supervisor
        .start(fx.http_backend(&[]), no_restart())
        .await
        .unwrap();
    assert_eq!(first.pid, second.pid);
    fx.supervisor.shutdown().await;
    assert!(!is_alive(first.pid.unwrap()));
}

#[tokio::test]
async fn backend_ignoring_sigint_is_killed_after_the_grace() {
    let fx = Fixture::with("stubborn", |settings| {
        settings.stop_grace = Duration::from_millis(500)
    });
    let script = "trap '' INT; echo ignoring; while true; do sleep 0.1; done";
    let pid = fx
        .supervisor
        .start(shell(script), no_restart())
        .await
        .unwrap()
        .pid
        .unwrap();
    eventually(|| fx.log_text("stubborn").contains("ignoring")).await;

    let began = Instant::now();
    let stopped = fx.supervisor.stop().await.unwrap();
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "SIGKILL came before the grace ended"
    );
    assert_eq!(stopped.status(), Status::Stopped);
    assert!(!is_alive(pid));
}

#[tokio::test]
async fn stop_kills_grandchildren_in_the_process_group() {
    let fx = Fixture::new("family");
    let marker = fx.dir.path().join("grandchild.pid");
    // A background job of a non-interactive shell ignores SIGINT: only the group kill reaches it.
    let script = format!("sleep 300 & echo $! > '{}'; wait", marker.display());
    fx.supervisor
        .start(shell(&script), no_restart())
        .await
        .unwrap();
    let grandchild: u32 = wait_for_file(&marker).await.trim().parse().unwrap();
    assert!(is_alive(grandchild));

    fx.supervisor.stop().await.unwrap();
    assert!(
        gone(grandchild).await,
        "the grandchild {grandchild} survived the stop"
    );
}

#[tokio::test]
async fn crashing_backend_is_restarted_until_max_restarts_then_fails() {
    let fx = Fixture::new("crashy");
    let spec = shell("echo booting; sleep 0.2; exit 3");
    fx.supervisor
        .start(spec, policy(true, 2, Duration::from_millis(200)))
        .await
        .unwrap();
    let seen = states_until(&fx.supervisor, |state| state.status() == Status::Failed).await;

    assert!(seen.iter().any(
        |state| state.health() == Some(Health::Restarting) && state.status() == Status::Running
    ));
    let pids: std::collections::BTreeSet<u32> = seen.iter().filter_map(|state| state.pid).collect();
    assert_eq!(pids.len(), 3, "one launch and two restarts: {seen:#?}");
    let failed = seen.last().unwrap();
    assert_eq!(failed.restarts, 2);
    let error = failed.error.as_deref().unwrap();
    assert!(
        error.contains("exited with code 3") && error.contains("after 2 restarts"),
        "{error}"
    );
    let log = fx.log_text("crashy");
    assert_eq!(count(&log, "=== Instance crashy started at "), 3, "{log}");
    assert_eq!(count(&log, "=== Instance crashy stopped at "), 3, "{log}");
}

#[tokio::test]
async fn backend_exiting_with_code_zero_stops_without_restart() {
    let fx = Fixture::new("done");
    fx.supervisor
        .start(
            shell("echo bye"),
            policy(true, 5, Duration::from_millis(50)),
        )
        .await
        .unwrap();
    let seen = states_until(&fx.supervisor, |state| state.status() == Status::Stopped).await;
    let stopped = seen.last().unwrap();
    assert_eq!((stopped.restarts, stopped.error.as_deref()), (0, None));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.supervisor.state().status(), Status::Stopped);
    assert_eq!(
        count(&fx.log_text("done"), "started at"),
        1,
        "no second launch"
    );
}

#[tokio::test]
async fn stop_during_a_pending_restart_cancels_it() {
    let fx = Fixture::new("pending");
    fx.supervisor
        .start(shell("exit 7"), policy(true, 3, Duration::from_secs(1)))
        .await
        .unwrap();
    states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Restarting)
    })
    .await;

    let stopped = fx.supervisor.stop().await.unwrap();
    assert_eq!(
        (stopped.status(), stopped.health()),
        (Status::Stopped, None)
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(fx.supervisor.state().status(), Status::Stopped);
    assert_eq!(
        count(&fx.log_text("pending"), "started at"),
        1,
        "the restart ran anyway"
    );
}

#[tokio::test]
async fn a_restart_delay_too_long_for_the_clock_waits_and_can_still_be_stopped() {
    let fx = Fixture::new("forever");
    fx.supervisor
        .start(shell("exit 7"), policy(true, 3, Duration::MAX))
        .await
        .unwrap();
    states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Restarting)
    })
    .await;
    let stopped = fx.supervisor.stop().await.unwrap();
    assert_eq!(
        (stopped.status(), stopped.health()),
        (Status::Stopped, None)
    );
}

#[tokio::test]
async fn shutdown_during_a_pending_restart_never_resurrects_the_instance() {
    let fx = Fixture::new("deleted");
    fx.supervisor
        .start(shell("exit 7"), policy(true, 3, Duration::from_secs(1)))
        .await
        .unwrap();
    states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Restarting)
    })
    .await;

    fx.supervisor.shutdown().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        count(&fx.log_text("deleted"), "started at"),
        1,
        "the restart ran anyway"
    );
    let err = fx
        .supervisor
        .start(shell("exit 0"), no_restart())
        .await
        .unwrap_err();
    assert!(matches!(err, SupervisorError::ShutDown), "{err}");
    assert!(fx.supervisor.stop().await.is_err());
}

#[tokio::test]
async fn wait_ready_fails_at_once_when_the_backend_exits_while_starting() {
    let fx = Fixture::new("broken");
    let script = "echo 'loading model'; echo 'error: failed to open model.gguf' >&2; exit 1";
    // A long restart delay: the waiter must not sit through it.
    fx.supervisor
        .start(shell(script), policy(true, 3, Duration::from_secs(600)))
        .await
        .unwrap();
    let began = Instant::now();
    let err = fx
        .supervisor
        .wait_ready(Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(began.elapsed() < PATIENCE, "the waiter sat out its timeout");
    let message = err.to_string();
    assert!(message.contains("exited with code 1"), "{message}");
    assert!(
        message.contains("error: failed to open model.gguf"),
        "{message}"
    );
    assert!(message.contains("loading model"), "{message}");
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn wait_ready_times_out_for_a_backend_that_never_answers() {
    let fx = Fixture::new("silent");
    fx.supervisor
        .start(shell("sleep 300"), no_restart())
        .await
        .unwrap();
    let err = fx
        .supervisor
        .wait_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, SupervisorError::ReadyTimeout { .. }), "{err}");
    assert_eq!(fx.supervisor.state().health(), Some(Health::Starting));
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn missing_executable_fails_to_start_and_names_it() {
    let fx = Fixture::new("ghost");
    let mut spec = shell("");
    spec.program = "/nonexistent/bin/llama-server-xyz".to_string();
    let err = fx.supervisor.start(spec, no_restart()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/bin/llama-server-xyz"),
        "{err}"
    );
    assert!(err.to_string().contains("not found"), "{err}");
    let state = fx.supervisor.state();
    assert_eq!(state.status(), Status::Stopped);
    assert!(state.error.unwrap().contains("not found"));
    assert!(!fx.settings.run_dir.join("ghost.pid").exists());
}

#[tokio::test]
async fn logs_have_markers_interleaved_output_and_a_tail() {
    let fx = Fixture::new("chatty");
    fx.supervisor
        .start(shell("echo one; echo two >&2; echo three"), no_restart())
        .await
        .unwrap();
    states_until(&fx.supervisor, |state| state.status() == Status::Stopped).await;

    let all = fx.supervisor.logs(None).unwrap();
    let lines: Vec<&str> = all.split('\n').collect();
    let start = lines
        .iter()
        .position(|line| line.starts_with("=== Instance chatty started at "))
        .unwrap();
    let stop = lines
        .iter()
        .position(|line| line.starts_with("=== Instance chatty stopped at "))
        .unwrap();
    let output: Vec<&str> = lines[start + 1..stop].to_vec();
    for word in ["one", "two", "three"] {
        assert!(output.contains(&word), "{word} missing from {output:?}");
    }
    assert!(lines[start].ends_with(" ==="));
    // `=== Instance chatty started at 2026-11-24 19:40:06 ===`: a local date and time.
    let stamp = lines[start]
        .trim_start_matches("=== Instance chatty started at ")
        .trim_end_matches(" ===");
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{stamp}"
    );

    for wanted in [1, 3, 4] {
        let tail = fx.supervisor.logs(Some(wanted)).unwrap();
        assert_eq!(
            tail,
            lines[lines.len() - wanted..].join("\n"),
            "tail of {wanted}"
        );
    }
    assert_eq!(fx.supervisor.logs(Some(10_000)).unwrap(), all);
    assert_eq!(fx.supervisor.logs(Some(0)).unwrap(), "");
}

#[tokio::test]
async fn logs_of_an_instance_never_started_in_this_run_come_from_its_file() {
    let fx = Fixture::new("old");
    assert_eq!(fx.supervisor.logs(Some(5)).unwrap(), "", "no file yet");
    std::fs::create_dir_all(&fx.settings.logs_dir).unwrap();
    std::fs::write(
        fx.settings.logs_dir.join("old.log"),
        "first\nsecond\nthird\n",
    )
    .unwrap();
    let fresh = Supervisor::new("old", fx.settings.clone());
    assert_eq!(fresh.logs(Some(2)).unwrap(), "second\nthird");
    assert_eq!(fresh.logs(None).unwrap(), "first\nsecond\nthird");
}

#[tokio::test]
async fn a_three_megabyte_line_without_newline_is_logged_and_breaks_nothing() {
    let fx = Fixture::new("long");
    let spec = LaunchSpec {
        program: "python3".to_string(),
        args: vec![
            "-c".to_string(),
            "import sys; sys.stdout.write('x' * 3_000_000); sys.stdout.flush(); print(); print('after the long line')"
                .to_string(),
        ],
        env: Vec::new(),
        health_url: format!("http://127.0.0.1:{}/health", free_port()),
        secret: Default::default(),
        ready_request: None,
        stop_signal: StopSignal::Interrupt,
    };
    fx.supervisor.start(spec, no_restart()).await.unwrap();
    let seen = states_until(&fx.supervisor, |state| state.status() != Status::Running).await;
    assert_eq!(
        seen.last().unwrap().status(),
        Status::Stopped,
        "the backend exited cleanly"
    );

    let tail = fx.supervisor.logs(Some(3)).unwrap();
    assert!(
        tail.starts_with("after the long line\n=== Instance long stopped at "),
        "{}",
        &tail[..tail.len().min(200)]
    );
    let all = fx.supervisor.logs(None).unwrap();
    assert_eq!(
        count(&all, "x"),
        3_000_000,
        "every byte of the long line is in the log"
    );
}

#[tokio::test]
async fn log_file_is_rotated_past_its_size_and_old_files_are_dropped() {
    let fx = Fixture::with("big", |settings| {
        settings.log_max_bytes = 20_000;
        settings.log_keep_files = 2;
    });
    let script = "i=0; while [ $i -lt 1500 ]; do echo \"line $i of a backend that talks a lot, padded to be long enough\"; i=$((i+1)); done";
    fx.supervisor
        .start(shell(script), no_restart())
        .await
        .unwrap();
    states_until(&fx.supervisor, |state| state.status() == Status::Stopped).await;

    let logs = &fx.settings.logs_dir;
    for file in ["big.log", "big.log.1", "big.log.2"] {
        let size = std::fs::metadata(logs.join(file))
            .map(|meta| meta.len())
            .unwrap_or(0);
        assert!(size > 0 && size <= 20_000 + 200, "{file}: {size} bytes");
    }
    assert!(
        !logs.join("big.log.3").exists(),
        "only log_keep_files rotated files are kept"
    );
    let newest = fx.supervisor.logs(Some(2)).unwrap();
    assert!(
        newest.starts_with("=== Instance big stopped at "),
        "{newest}"
    );
}

#[tokio::test]
async fn restart_counter_resets_after_healthy_uptime() {
    let fx = Fixture::with("recovering", |settings| {
        settings.restart_reset_after = Duration::from_millis(300);
    });
    let crash_once = fx.dir.path().join("crashed-once");
    let spec = fx.http_backend(&[("CRASH_ONCE_FILE", crash_once)]);
    fx.supervisor
        .start(spec, policy(true, 3, Duration::from_millis(100)))
        .await
        .unwrap();
    let seen = states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Ready) && state.restarts == 0
    })
    .await;
    assert!(
        seen.iter().any(|state| state.restarts == 1),
        "it crashed once first: {seen:#?}"
    );
    assert!(fx.log_text("recovering").contains("crashing on purpose"));
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn ready_backend_that_stops_answering_turns_unhealthy_and_back() {
    let fx = Fixture::new("flaky");
    let sick = fx.dir.path().join("sick");
    fx.supervisor
        .start(
            fx.http_backend(&[("SICK_FILE", sick.clone())]),
            no_restart(),
        )
        .await
        .unwrap();
    fx.supervisor.wait_ready(PATIENCE).await.unwrap();

    std::fs::write(&sick, "").unwrap();
    states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Unhealthy)
    })
    .await;
    assert_eq!(fx.supervisor.state().status(), Status::Running);
    std::fs::remove_file(&sick).unwrap();
    states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Ready)
    })
    .await;
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn clean_up_leftovers_kills_our_leftover_group_and_spares_others() {
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path();
    let grandchild_file = dir.path().join("worker-pid.txt");
    // A "backend" left by a crashed engine: its own group, with a worker beside it, both with
    // the launch's token in their environment as the supervisor spawns them.
    let mut leftover = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "sleep 300 & echo $! > '{}'; wait",
                grandchild_file.display()
            ),
        ])
        .env(spawn::TOKEN_VAR, "leftover-token")
        .process_group(0)
        .spawn()
        .unwrap();
    let worker: u32 = wait_for_file(&grandchild_file)
        .await
        .trim()
        .parse()
        .unwrap();
    let record = pidfile::PidRecord::describe(leftover.id(), "sh", "leftover-token");
    pidfile::write(run_dir, "leftover", &record).unwrap();

    // A pid file whose pid now belongs to an unrelated process (different start identity).
    let mut unrelated = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let mut stale = pidfile::PidRecord::describe(unrelated.id(), "llama-server", "other-token");
    stale.identity = Some("another-boot/12345".to_string());
    pidfile::write(run_dir, "reused", &stale).unwrap();

    // A pid file forged for an unrelated process of the same user: its real start identity and
    // executable, leading its own group, but without the launch's token.
    let mut stranger = std::process::Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .unwrap();
    let forged = pidfile::PidRecord::describe(stranger.id(), "sleep", "forged-token");
    pidfile::write(run_dir, "forged", &forged).unwrap();

    let handled = clean_up_leftovers(run_dir);
    assert_eq!(handled.len(), 3, "{handled:?}");
    assert!(handled
        .iter()
        .any(|line| line.contains("killed") && line.contains(&leftover.id().to_string())));

    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(status) = leftover.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(!status.success());
    assert!(
        gone(worker).await,
        "the worker in the leftover group survived"
    );
    assert!(
        is_alive(unrelated.id()),
        "an unrelated process was signalled"
    );
    assert!(
        is_alive(stranger.id()),
        "a process without the launch's token was signalled"
    );
    assert!(
        handled
            .iter()
            .any(|line| line.contains(&stranger.id().to_string()) && line.contains("token")),
        "{handled:?}"
    );
    assert_eq!(
        std::fs::read_dir(run_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|ext| ext == "pid")
            })
            .count(),
        0,
        "pid files are removed"
    );

    unrelated.kill().unwrap();
    unrelated.wait().unwrap();
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// What the clean-up of `run_dir` would signal, recorded instead of sent: a regression here
/// must fail the test, not SIGKILL every process of the user.
fn kills_planned(run_dir: &Path) -> (Vec<pidfile::Kill>, Vec<String>) {
    let mut kills = Vec::new();
    let lines = pidfile::clean_up_leftovers(run_dir, &mut |kill| kills.push(kill));
    (kills, lines)
}

#[test]
fn forged_pid_files_naming_pid_1_or_the_engine_itself_signal_nothing() {
    use pidfile::Refusal;

    let dir = tempfile::tempdir().unwrap();
    let own_group = u32::try_from(nix::unistd::getpgrp().as_raw()).unwrap();
    // Everything a forger can read about these processes: pid, start identity, executable.
    let forge = |pid: u32| pidfile::PidRecord::describe(pid, "llama-server", "forged-token");
    for (name, pid) in [
        ("init", 1),
        ("engine", std::process::id()),
        ("group", own_group),
    ] {
        pidfile::write(dir.path(), name, &forge(pid)).unwrap();
    }
    let (kills, lines) = kills_planned(dir.path());
    assert_eq!(kills, Vec::new(), "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");

    assert_eq!(pidfile::check_leader(&forge(1)), Err(Refusal::Reserved));
    assert_eq!(pidfile::check_pid(0), Err(Refusal::Reserved));
    assert_eq!(
        pidfile::check_leader(&forge(std::process::id())),
        Err(Refusal::OurOwn)
    );
    if own_group > 1 {
        assert_eq!(
            pidfile::check_leader(&forge(own_group)),
            Err(Refusal::OurOwn)
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_pid_file_is_trusted_only_with_the_token_and_the_executable_it_recorded() {
    use pidfile::Refusal;
    use std::os::unix::process::CommandExt;

    let mut backend = std::process::Command::new("sleep")
        .arg("60")
        .env(spawn::TOKEN_VAR, "the-token")
        .process_group(0)
        .spawn()
        .unwrap();
    let record = pidfile::PidRecord::describe(backend.id(), "sleep", "the-token");
    assert!(record.exe.is_some(), "the executable is recorded");
    // The spawn returns once the exec has begun, and Linux shows the new environment in /proc a
    // moment later (under load, after this line would run): wait for it, then it must pass.
    let deadline = Instant::now() + PATIENCE;
    while pidfile::check_leader(&record) != Ok(()) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            pidfile::check_leader(&record)
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut other_token = pidfile::PidRecord::describe(backend.id(), "sleep", "another-token");
    assert_eq!(pidfile::check_leader(&other_token), Err(Refusal::NoToken));
    other_token.token = String::new();
    assert_eq!(pidfile::check_leader(&other_token), Err(Refusal::NoToken));

    let mut other_exe = pidfile::PidRecord::describe(backend.id(), "sleep", "the-token");
    other_exe.exe = Some(PathBuf::from("/usr/bin/llama-server"));
    assert_eq!(
        pidfile::check_leader(&other_exe),
        Err(Refusal::OtherExecutable)
    );

    backend.kill().unwrap();
    backend.wait().unwrap();
}

/// Where the engine process of `backend_dies_when_the_engine_is_killed` works.
const ENGINE_DIR_VAR: &str = "CORRAL_TEST_ENGINE_DIR";

#[tokio::test]
#[ignore = "helper: the engine process that backend_dies_when_the_engine_is_killed kills"]
async fn engine_process_that_gets_killed() {
    let dir = PathBuf::from(std::env::var_os(ENGINE_DIR_VAR).unwrap());
    let supervisor = Supervisor::new("orphan", Arc::new(settings_in(&dir)));
    let spec = LaunchSpec {
        program: "sleep".to_string(),
        args: vec!["300".to_string()],
        env: Vec::new(),
        health_url: format!("http://127.0.0.1:{}/health", free_port()),
        secret: Default::default(),
        ready_request: None,
        stop_signal: StopSignal::Interrupt,
    };
    let pid = supervisor
        .start(spec, no_restart())
        .await
        .unwrap()
        .pid
        .unwrap();
    std::fs::write(dir.join("backend-pid.txt"), format!("{pid}\n")).unwrap();
    tokio::time::sleep(PATIENCE).await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn backend_dies_when_the_engine_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "supervisor::tests::engine_process_that_gets_killed",
            "--ignored",
        ])
        .env(ENGINE_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let backend: u32 = wait_for_file(&dir.path().join("backend-pid.txt"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(is_alive(backend));

    engine.kill().unwrap();
    engine.wait().unwrap();
    assert!(
        gone(backend).await,
        "the backend {backend} outlived the SIGKILLed engine"
    );
}

/// A backend like mlx_lm.server: `/health` is 200 from the start, and POST `/v1/completions`
/// answers only once its "model" is loaded: 200 when `LOADED_FILE` exists, or, when
/// `BROKEN_FILE` exists, 404 after printing the error a failed load logs.
const LOADING_BACKEND: &str = r#"
import http.server, os, sys, time
port = int(sys.argv[1])
loaded, broken = os.environ["LOADED_FILE"], os.environ["BROKEN_FILE"]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        while not (os.path.exists(loaded) or os.path.exists(broken)):
            time.sleep(0.02)
        if os.path.exists(broken):
            print("ValueError: the model folder has no config.json", flush=True)
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "generation thread died"}')
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"choices": []}')
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

impl Fixture {
    /// [`LOADING_BACKEND`] with a ready request; returns the spec and its two switch files.
    fn loading_backend(&self) -> (LaunchSpec, PathBuf, PathBuf) {
        let script = self.dir.path().join("loading.py");
        std::fs::write(&script, LOADING_BACKEND).unwrap();
        let (loaded, broken) = (
            self.dir.path().join("loaded"),
            self.dir.path().join("broken"),
        );
        let port = free_port();
        let spec = LaunchSpec {
            program: "python3".to_string(),
            args: vec![script.display().to_string(), port.to_string()],
            env: vec![
                ("LOADED_FILE".to_string(), loaded.display().to_string()),
                ("BROKEN_FILE".to_string(), broken.display().to_string()),
            ],
            health_url: format!("http://127.0.0.1:{port}/health"),
            secret: Default::default(),
            ready_request: Some(ReadyRequest {
                path: "/v1/completions".to_string(),
                body: r#"{"prompt":"hi","max_tokens":1}"#.to_string(),
            }),
            stop_signal: StopSignal::Terminate,
        };
        (spec, loaded, broken)
    }
}

#[tokio::test]
async fn a_backend_with_a_ready_request_is_ready_only_once_that_request_answers() {
    let fx = Fixture::new("loading");
    let (spec, loaded, _) = fx.loading_backend();
    let health_url = spec.health_url.clone();
    fx.supervisor.start(spec, no_restart()).await.unwrap();
    // Its /health answers 200, while the model is still "loading".
    let target = readiness_target(&health_url);
    let deadline = Instant::now() + PATIENCE;
    while !target.is_healthy().await {
        assert!(Instant::now() < deadline, "the fake never answered /health");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Many of the supervisor's own polls (every 10 ms) fit in this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.supervisor.state().health(), Some(Health::Starting));
    std::fs::write(&loaded, "").unwrap();
    fx.supervisor.wait_ready(PATIENCE).await.unwrap();
    assert_eq!(fx.supervisor.state().health(), Some(Health::Ready));
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn a_backend_alive_but_unable_to_answer_fails_its_start_with_the_reason_from_its_log() {
    let fx = Fixture::new("broken");
    let (spec, _, broken) = fx.loading_backend();
    std::fs::write(&broken, "").unwrap();
    // Restarts allowed: a model that cannot load would not load the second time either.
    let started = fx
        .supervisor
        .start(spec, policy(true, 3, Duration::ZERO))
        .await
        .unwrap();
    let err = fx.supervisor.wait_ready(PATIENCE).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot answer"), "{text}");
    assert!(text.contains("generation thread died"), "{text}");
    assert!(text.contains("has no config.json"), "{text}");
    let state = fx.supervisor.state();
    assert_eq!(state.status(), Status::Failed, "{state:?}");
    assert_eq!(state.restarts, 0, "{state:?}");
    assert!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("ValueError: the model folder has no config.json")),
        "{state:?}"
    );
    assert!(
        gone(started.pid.unwrap()).await,
        "the unable backend was stopped"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.supervisor.state().status(), Status::Failed, "no restart");
}

#[tokio::test]
async fn an_orderly_stop_sends_the_backends_own_stop_signal_and_logs_how_it_ended() {
    let fx = Fixture::new("term");
    let mut spec = shell(
        "trap 'echo got INT; exit 0' INT; trap 'echo got TERM; exit 0' TERM; \
         echo up; while :; do sleep 0.05; done",
    );
    spec.stop_signal = StopSignal::Terminate;
    fx.supervisor.start(spec, no_restart()).await.unwrap();
    eventually(|| fx.log_text("term").contains("up")).await;
    let started = Instant::now();
    let stopped = fx.supervisor.stop().await.unwrap();
    assert_eq!(stopped.status(), Status::Stopped);
    assert!(
        started.elapsed() < fx.settings.stop_grace,
        "it ended on the signal, not on SIGKILL after the grace"
    );
    let log = fx.log_text("term");
    assert!(log.contains("got TERM"), "{log}");
    assert!(!log.contains("got INT"), "{log}");
    assert!(
        log.contains("Stopping instance term: the backend exited with code 0"),
        "{log}"
    );
}

/// Serialises the tests that change this process's signal dispositions.
static SIGNAL_DISPOSITIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
#[allow(unsafe_code)]
async fn a_backend_does_not_inherit_an_ignored_sigint_from_the_engine() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let _serial = SIGNAL_DISPOSITIONS.lock().await;
    let fx = Fixture::new("sigign");
    let spec = LaunchSpec {
        program: "grep".to_string(),
        args: vec!["^SigIgn".to_string(), "/proc/self/status".to_string()],
        ..shell("")
    };
    // As when the engine is started by `nohup` or a script's `corral serve &`.
    // SAFETY: SIG_IGN and SIG_DFL are no handlers, so no code runs on a signal.
    let previous = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) }.unwrap();
    let started = fx.supervisor.start(spec, no_restart()).await;
    // SAFETY: as above; the previous disposition comes back.
    unsafe { signal(Signal::SIGINT, previous) }.unwrap();
    started.unwrap();
    eventually(|| fx.log_text("sigign").contains("SigIgn")).await;
    let log = fx.log_text("sigign");
    let line = log.lines().find(|l| l.starts_with("SigIgn")).unwrap();
    let ignored = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
    // Bit n-1 is signal n. Only the standard signals: the C library keeps 32 and 33 for itself
    // and refuses to change them.
    assert_eq!(ignored & 0x7fff_ffff, 0, "{log}");
}

fn readiness_target(url: &str) -> readiness::Target {
    readiness::target(url).unwrap()
}

#[tokio::test]
async fn a_backend_that_exits_before_it_is_ready_fails_with_the_error_from_its_log() {
    let fx = Fixture::new("wrongpath");
    let spec = shell(
        "echo 'loading /no/such/model' ; echo 'OSError: /no/such/model does not exist' >&2; exit 1",
    );
    fx.supervisor.start(spec, no_restart()).await.unwrap();
    let states = states_until(&fx.supervisor, |s| s.status() == Status::Failed).await;
    let error = states.last().unwrap().error.clone().unwrap_or_default();
    assert!(
        error.contains("its log says: OSError: /no/such/model does not exist"),
        "{error}"
    );
}

/// A process group like a backend's: `sh` leading it, a worker in the background. Answers the
/// leader and the worker's pid.
async fn group_with_a_worker(dir: &Path) -> (std::process::Child, u32) {
    use std::os::unix::process::CommandExt;
    let marker = dir.join("worker.pid");
    let leader = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 300 & echo $! > '{}'; wait",
            marker.display()
        ))
        .process_group(0)
        .spawn()
        .unwrap();
    let worker = wait_for_file(&marker).await.trim().parse().unwrap();
    (leader, worker)
}

#[tokio::test]
async fn a_keeper_kills_the_group_when_its_pipe_closes_without_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, worker) = group_with_a_worker(dir.path()).await;
    // Dropping the keeper unreleased closes the engine's end, as the engine's death does.
    let keeper = keeper::Keeper::watch(leader.id()).unwrap();
    drop(keeper);
    assert!(gone(worker).await, "the worker {worker} survived");
    assert!(leader.wait().is_ok());
}

#[tokio::test]
async fn a_released_keeper_signals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, worker) = group_with_a_worker(dir.path()).await;
    let mut keeper = keeper::Keeper::watch(leader.id()).unwrap();
    // `ps` says what it is and which group it keeps.
    #[cfg(target_os = "linux")]
    assert_eq!(keepers_of(leader.id()).len(), 1);
    keeper.release();
    drop(keeper);
    // A kill would come within milliseconds of the close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(is_alive(worker) && is_alive(leader.id()));
    stop::signal_group(leader.id(), stop::GroupSignal::Kill);
    assert!(leader.wait().is_ok());
    assert!(gone(worker).await);
}

/// The pids of the keepers of group `pgid`, found by what `ps` shows of them.
#[cfg(target_os = "linux")]
fn keepers_of(pgid: u32) -> Vec<u32> {
    let name = format!("corral-keeper for process group {pgid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&name)
                .then_some(pid)
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_keeper_holds_none_of_the_engines_descriptors() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, _worker) = group_with_a_worker(dir.path()).await;
    // A descriptor the engine holds when the keeper starts, without close-on-exec (as a
    // library might open one): the keeper must not hold it.
    let (read, _write) = nix::unistd::pipe().unwrap();
    let leaked = std::fs::File::from(read).metadata().unwrap().ino();
    let keeper = keeper::Keeper::watch(leader.id()).unwrap();
    let pids = keepers_of(leader.id());
    assert_eq!(pids.len(), 1, "one keeper, the outer shell gone: {pids:?}");
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", pids[0]))
        .unwrap()
        .flatten()
        .map(|fd| {
            let target = std::fs::read_link(fd.path()).unwrap();
            format!("{}={}", fd.file_name().to_string_lossy(), target.display())
        })
        .collect();
    // Its own pipe (on 3, maybe on stdin too) and /dev/null (output, the shell's own), nothing
    // else.
    let own = held
        .iter()
        .find_map(|fd| fd.strip_prefix("3="))
        .unwrap_or_else(|| panic!("no pipe on 3: {held:?}"));
    assert!(own.starts_with("pipe:"), "{held:?}");
    assert_ne!(own, format!("pipe:[{leaked}]"));
    for fd in &held {
        let target = fd.split_once('=').map_or("", |(_, target)| target);
        assert!(target == own || target == "/dev/null", "{held:?}");
    }
    drop(keeper);
    assert!(leader.wait().is_ok());
}

#[test]
fn no_keeper_is_forked_for_pid_1_or_the_engines_own_group() {
    assert!(keeper::Keeper::watch(1).is_err());
    assert!(keeper::Keeper::watch(0).is_err());
    assert!(keeper::Keeper::watch(std::process::id()).is_err());
}
