//! What every install step shares: the job it reports to, the log it appends to, and the one
//! way it runs a process — in a process group of its own, so that a cancel (or the engine
//! stopping) kills the whole tree a `pip` or `cmake --build` spawned, not only its first process.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{broadcast, mpsc, watch};

use super::job::InstallJob;
use super::InstallError;

/// Lines alone (no new step, no new progress) reach the event stream at most this often: a
/// build prints hundreds.
const LINE_EVENTS_EVERY: Duration = Duration::from_millis(250);
/// Asking a Python its version: one that takes longer is broken.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(30);
/// The oldest Python mlx-lm and the llama.cpp sdist's build support.
const PYTHON_MIN: (u32, u32) = (3, 9);

/// One running install: where it works, what it reports to, and whether it was cancelled.
pub(super) struct Ctx {
    /// The job as `GET .../install` and the event stream see it.
    job: watch::Sender<InstallJob>,
    /// The `backend_install` events.
    events: broadcast::Sender<InstallJob>,
    /// Turns true when the install is to stop.
    cancel: watch::Receiver<bool>,
    /// The install's log file. A std Mutex: a line is written without an `.await` in between.
    log: Mutex<std::fs::File>,
    /// When lines alone last made an event.
    last_event: Mutex<Instant>,
}

impl Ctx {
    pub(super) fn new(
        job: watch::Sender<InstallJob>,
        events: broadcast::Sender<InstallJob>,
        cancel: watch::Receiver<bool>,
        log: std::fs::File,
    ) -> Ctx {
        Ctx {
            job,
            events,
            cancel,
            log: Mutex::new(log),
            last_event: Mutex::new(Instant::now()),
        }
    }

    /// Changes the job and tells the event stream.
    pub(super) fn update(&self, change: impl FnOnce(&mut InstallJob)) {
        self.job.send_modify(change);
        self.publish();
    }

    fn publish(&self) {
        *lock(&self.last_event) = Instant::now();
        // No subscriber is no error: the UI may not be open.
        let _ = self.events.send(self.job.borrow().clone());
    }

    /// A new step, in words.
    pub(super) fn begin(&self, step: &str) {
        self.line(&format!("== {step}"));
        self.update(|job| job.begin(step));
    }

    /// A line for the log and the job's tail.
    pub(super) fn line(&self, line: &str) {
        {
            let mut log = lock(&self.log);
            // A full disk loses log lines, not the install.
            let _ = writeln!(log, "{line}");
        }
        self.job.send_modify(|job| job.push_line(line));
        if lock(&self.last_event).elapsed() >= LINE_EVENTS_EVERY {
            self.publish();
        }
    }

    pub(super) fn check_cancelled(&self) -> Result<(), InstallError> {
        if *self.cancel.borrow() {
            return Err(InstallError::Cancelled);
        }
        Ok(())
    }

    /// Work without a process (hashing, unpacking, copying), off the async threads; a cancel
    /// takes effect when it returns.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        step: &str,
        work: impl FnOnce() -> Result<T, InstallError> + Send + 'static,
    ) -> Result<T, InstallError> {
        self.check_cancelled()?;
        self.begin(step);
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| InstallError::Io {
                what: step.to_owned(),
                source: std::io::Error::other(e),
            })?;
        self.check_cancelled()?;
        result
    }

    /// Runs `program args` as the step `step`, its output into the log. With `progress`, lines
    /// that say how far a build is (`[n/m]`, `[ 37%]`) make the step `<progress> 37%`.
    pub(super) async fn run(
        &self,
        step: &str,
        program: &Path,
        args: &[OsString],
        env: &[(&str, OsString)],
        progress: Option<&str>,
    ) -> Result<(), InstallError> {
        self.check_cancelled()?;
        self.begin(step);
        let shown = shown(program, args);
        self.line(&format!("$ {shown}"));
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|source| InstallError::Spawn {
            command: shown.clone(),
            source,
        })?;
        // Armed until the process has exited by itself: every way out of this function before
        // that (a cancel, an error, the task dropped at shutdown) kills the group.
        let mut group = Group(child.id());
        let (lines, mut received) = mpsc::channel::<String>(256);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(out, lines.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(err, lines));
        }
        let mut cancel = self.cancel.clone();
        let mut last = String::new();
        loop {
            tokio::select! {
                line = received.recv() => match line {
                    Some(line) => {
                        if let (Some(label), Some(done)) = (progress, build_progress(&line)) {
                            let step = format!("{label} {}%", (done * 100.0).floor());
                            self.update(|job| {
                                job.step = step;
                                job.progress = Some(done);
                            });
                        }
                        self.line(&line);
                        if !line.trim().is_empty() {
                            last = line;
                        }
                    }
                    // Both pipes closed: the process is exiting.
                    None => break,
                },
                () = cancelled(&mut cancel) => {
                    group.kill();
                    let _ = child.wait().await;
                    return Err(InstallError::Cancelled);
                }
            }
        }
        let status = tokio::select! {
            status = child.wait() => status.map_err(|source| InstallError::Spawn {
                command: shown.clone(),
                source,
            })?,
            () = cancelled(&mut cancel) => {
                group.kill();
                let _ = child.wait().await;
                return Err(InstallError::Cancelled);
            }
        };
        group.0 = None;
        if !status.success() {
            return Err(InstallError::Step {
                command: shown,
                status: status.to_string(),
                last,
            });
        }
        Ok(())
    }

    /// `python3` from `PATH`, when it is Python 3.9 or newer.
    /// Makes a virtualenv at `venv` with `python` and pip-installs `packages` into it, as the
    /// job's steps `steps.0` and `steps.1`.
    pub(super) async fn venv_with(
        &self,
        steps: (&str, &str),
        python: &Path,
        venv: &Path,
        packages: &[&str],
    ) -> Result<(), InstallError> {
        let make = ["-m".into(), "venv".into(), venv.as_os_str().to_owned()];
        self.run(steps.0, python, &make, &[], None).await?;
        let install: Vec<OsString> = [
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
        ]
        .iter()
        .chain(packages)
        .map(OsString::from)
        .collect();
        self.run(steps.1, &venv.join("bin/python"), &install, &[], None)
            .await
    }

    pub(super) async fn python(&self) -> Result<PathBuf, InstallError> {
        self.check_cancelled()?;
        self.begin("looking for Python");
        let python = which::which("python3").map_err(|_| {
            InstallError::Python(
                "no python3 was found on PATH: install Python 3.9 or newer (python.org, or the system's package manager) and try again".to_owned(),
            )
        })?;
        let mut command = tokio::process::Command::new(&python);
        command
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(PYTHON_TIMEOUT, command.output())
            .await
            .map_err(|_| {
                InstallError::Python(format!("{} did not answer its version", python.display()))
            })?
            .map_err(|source| InstallError::Spawn {
                command: python.display().to_string(),
                source,
            })?;
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !python_is_recent(&version) {
            return Err(InstallError::Python(format!(
                "{} is Python {version}; Python {}.{} or newer is needed",
                python.display(),
                PYTHON_MIN.0,
                PYTHON_MIN.1
            )));
        }
        self.line(&format!("{} is Python {version}", python.display()));
        Ok(python)
    }
}

/// Returns once the install is to stop (or can no longer be told to: its job is gone).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    // The guard `wait_for` answers is dropped here, before any `.await` of the caller.
    let _ = cancel.wait_for(|stop| *stop).await;
}

/// The process group of a step, killed unless its process exited by itself.
struct Group(Option<u32>);

impl Group {
    fn kill(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.0.take().and_then(|pid| i32::try_from(pid).ok()) {
            // Gone already is fine: nothing is left to kill.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends each line of `from` (lossy UTF-8, without its line end) until it closes.
async fn forward(from: impl AsyncRead + Unpin, to: mpsc::Sender<String>) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                if to
                    .send(line.trim_end_matches(['\n', '\r']).to_owned())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// How far a build is from one line of its output: ninja's `[37/245] Building ...`, or make's
/// `[ 37%] Building ...`.
pub(super) fn build_progress(line: &str) -> Option<f64> {
    let inner = line
        .trim_start()
        .strip_prefix('[')?
        .split_once(']')?
        .0
        .trim();
    if let Some(percent) = inner.strip_suffix('%') {
        let percent: f64 = percent.trim().parse().ok()?;
        return (0.0..=100.0).contains(&percent).then_some(percent / 100.0);
    }
    let (done, total) = inner.split_once('/')?;
    let (done, total): (u32, u32) = (done.trim().parse().ok()?, total.trim().parse().ok()?);
    (total > 0 && done <= total).then(|| f64::from(done) / f64::from(total))
}

/// `3.11` and newer than 3.9 (`python3 -c` printed it).
fn python_is_recent(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= PYTHON_MIN,
        _ => false,
    }
}

fn shown(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while writing a log line leaves nothing inconsistent behind.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn the_build_progress_comes_from_ninja_and_make_lines() {
        assert_eq!(
            build_progress("[37/100] Building CXX object common/CMakeFiles/x.o"),
            Some(0.37)
        );
        assert_eq!(
            build_progress("[ 42%] Building C object ggml.c.o"),
            Some(0.42)
        );
        assert_eq!(
            build_progress("[100%] Built target llama-server"),
            Some(1.0)
        );
        assert_eq!(build_progress("-- Configuring done"), None);
        assert_eq!(build_progress("[0/0] nothing"), None);
        assert_eq!(build_progress("[5/3] odd"), None);
        assert_eq!(build_progress("[notice] A new release of pip"), None);
        assert_eq!(build_progress("[120%] odd"), None);
    }

    #[test]
    fn python_3_9_and_newer_will_do() {
        assert!(python_is_recent("3.9"));
        assert!(python_is_recent("3.13"));
        assert!(!python_is_recent("3.8"));
        assert!(!python_is_recent("2.7"));
        assert!(!python_is_recent(""));
    }

    fn ctx(dir: &Path) -> (Ctx, watch::Sender<bool>, watch::Receiver<InstallJob>) {
        let (job, jobs) = watch::channel(InstallJob::new(
            crate::backends::BackendType::MlxLm,
            dir.join("install.log"),
        ));
        let (events, _) = broadcast::channel(16);
        let (cancel, cancelled) = watch::channel(false);
        let log = std::fs::File::create(dir.join("install.log")).unwrap();
        (Ctx::new(job, events, cancelled, log), cancel, jobs)
    }

    #[tokio::test]
    async fn a_step_logs_its_output_and_fails_with_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _cancel, jobs) = ctx(dir.path());
        let error = ctx
            .run(
                "trying",
                Path::new("/bin/sh"),
                &[
                    "-c".into(),
                    "echo '[1/2] half'; echo broken >&2; exit 3".into(),
                ],
                &[],
                Some("building"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&error, InstallError::Step { last, .. } if last == "broken"),
            "{error}"
        );
        let log = std::fs::read_to_string(dir.path().join("install.log")).unwrap();
        assert!(
            log.contains("[1/2] half") && log.contains("broken"),
            "{log}"
        );
        let job = jobs.borrow().clone();
        assert_eq!(job.progress, Some(0.5));
        assert_eq!(job.step, "building 50%");
        assert_eq!(job.log_tail.last().map(String::as_str), Some("broken"));
    }

    #[tokio::test]
    async fn a_cancel_kills_the_steps_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, cancel, _jobs) = ctx(dir.path());
        let pid_file = dir.path().join("grandchild.pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pid_file.display()
        );
        let args = ["-c".into(), script.into()];
        let run = ctx.run("waiting", Path::new("/bin/sh"), &args, &[], None);
        let stop = async {
            while !pid_file.exists() || std::fs::read_to_string(&pid_file).unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cancel.send(true).unwrap();
        };
        let (result, ()) = tokio::join!(run, stop);
        assert!(matches!(result, Err(InstallError::Cancelled)));
        let grandchild: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL reached the sleep the shell started, not only the shell.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(
                Instant::now() < deadline,
                "the grandchild survived the cancel"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Running, not a zombie waiting for its parent to reap it.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }
}
