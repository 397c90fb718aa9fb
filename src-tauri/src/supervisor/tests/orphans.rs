//! No backend outlives the engine: leftover groups cleaned up at start, pid files trusted only
//! when they prove themselves, and the keeper that kills a group whose engine died.

use super::*;

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
            "supervisor::tests::orphans::engine_process_that_gets_killed",
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
