//! Spawning one backend process: no shell, its own process group, output into the log, a pid
//! file, and the readiness watch.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::logs::{self, LogSink};
use super::pidfile::{self, PidRecord};
use super::readiness::{self, Probe};
use super::stop::GroupGuard;
use super::{LaunchSpec, SupervisorError};

/// Environment variable naming the instance in the child and in everything it starts; lets
/// [`super::clean_up_leftovers`] recognise grandchildren of a crashed engine.
pub(super) const TOKEN_VAR: &str = "CORRAL_SUPERVISOR_TOKEN";

/// A spawned backend and what lives and dies with it.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) pid: u32,
    /// Kills the whole group if this value is dropped without an orderly stop (task aborted).
    pub(super) group: GroupGuard,
    /// The stdout and stderr pumps; they end when the pipes close.
    pub(super) pumps: Vec<JoinHandle<()>>,
    /// The readiness watch; aborted when the process is gone.
    pub(super) probe: JoinHandle<()>,
    /// `<run_dir>/<name>.pid`, when it could be written.
    pub(super) pid_file: Option<PathBuf>,
}

/// What one launch needs besides the spec.
pub(super) struct LaunchContext<'a> {
    pub(super) name: &'a str,
    pub(super) run_dir: &'a std::path::Path,
    pub(super) log: &'a Arc<LogSink>,
    pub(super) generation: u64,
    pub(super) probes: &'a mpsc::UnboundedSender<Probe>,
}

/// Spawns the backend and starts its pumps, pid file and readiness watch.
pub(super) fn launch(spec: &LaunchSpec, cx: LaunchContext<'_>) -> Result<Running, SupervisorError> {
    let token = format!("{}-{:016x}", cx.name, rand::random::<u64>());
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .env(TOKEN_VAR, &token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    #[cfg(target_os = "linux")]
    die_with_parent(&mut command);

    let mut child = command
        .spawn()
        .map_err(|err| spawn_error(&spec.program, err))?;
    let pid = child.id().ok_or_else(|| SupervisorError::Spawn {
        program: spec.program.clone(),
        source: std::io::Error::other("the process exited before its pid could be read"),
    })?;
    let group = GroupGuard::new(pid);

    cx.log.started(cx.name);
    let mut pumps = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(logs::pump(stdout, cx.log.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(logs::pump(stderr, cx.log.clone())));
    }

    let record = PidRecord::describe(pid, &spec.program, &token);
    let pid_file = match pidfile::write(cx.run_dir, cx.name, &record) {
        Ok(path) => Some(path),
        Err(err) => {
            tracing::warn!(instance = cx.name, "cannot write the pid file: {err}");
            None
        }
    };
    let probe = tokio::spawn(readiness::watch_health(
        spec.health_url.clone(),
        cx.generation,
        cx.probes.clone(),
    ));
    Ok(Running {
        child,
        pid,
        group,
        pumps,
        probe,
        pid_file,
    })
}

fn spawn_error(program: &str, err: std::io::Error) -> SupervisorError {
    let program = program.to_string();
    match err.kind() {
        std::io::ErrorKind::NotFound => SupervisorError::ProgramNotFound { program },
        std::io::ErrorKind::PermissionDenied => SupervisorError::ProgramNotExecutable { program },
        _ => SupervisorError::Spawn {
            program,
            source: err,
        },
    }
}

/// Asks Linux to SIGKILL the child when the engine dies, so even a SIGKILLed engine leaves no
/// backend behind. The signal fires when the spawning *thread* exits: backends are spawned from
/// the supervisor task on a runtime worker thread, which lives as long as the engine's runtime.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It calls prctl and getppid (both async-signal-safe syscalls), reads one
    // captured integer, allocates nothing, takes no lock, and builds its error with
    // `last_os_error`, which only reads errno.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The engine may have died between fork and prctl: then no signal would ever come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
