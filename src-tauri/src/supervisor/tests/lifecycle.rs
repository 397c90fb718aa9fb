//! Starting, stopping and restarting: signals, grace periods, restart limits and delays.

use super::*;

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
