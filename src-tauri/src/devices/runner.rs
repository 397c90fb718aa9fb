//! Runs the probes' helper programs (`nvidia-smi`, `rocm-smi`, `sysctl`, `system_profiler`,
//! `llama-server --list-devices`) behind a trait, so tests answer with recorded outputs.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    /// The program is not installed: normal on most machines, not a failure.
    #[error("`{0}` is not installed")]
    NotPresent(String),
    #[error("`{program}` did not finish within {} s", timeout.as_secs_f32())]
    TimedOut { program: String, timeout: Duration },
    #[error("`{program}` failed ({status}): {output}")]
    Failed {
        program: String,
        status: String,
        output: String,
    },
    #[error("`{program}` could not be run: {reason}")]
    Io { program: String, reason: String },
}

pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<String, RunError>> + Send + 'a>>;

/// Runs a program and answers its standard output (and standard error after it: llama-server
/// prints its device list on either, depending on the version).
pub trait CommandRunner: Send + Sync {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        env: &'a [(String, String)],
        timeout: Duration,
    ) -> RunFuture<'a>;
}

/// The real thing: `tokio::process`, stdin closed, killed when the timeout ends the wait.
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run<'a>(
        &'a self,
        program: &'a str,
        args: &'a [String],
        env: &'a [(String, String)],
        timeout: Duration,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .envs(env.iter().map(|(key, value)| (key, value)))
                .stdin(Stdio::null())
                .kill_on_drop(true);
            let output = match tokio::time::timeout(timeout, command.output()).await {
                Err(_) => {
                    return Err(RunError::TimedOut {
                        program: program.to_owned(),
                        timeout,
                    })
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(RunError::NotPresent(program.to_owned()))
                }
                Ok(Err(e)) => {
                    return Err(RunError::Io {
                        program: program.to_owned(),
                        reason: e.to_string(),
                    })
                }
                Ok(Ok(output)) => output,
            };
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            if !output.status.success() {
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(RunError::Failed {
                    program: program.to_owned(),
                    status: output.status.to_string(),
                    output: tail.join(" / "),
                });
            }
            Ok(text)
        })
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    async fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, RunError> {
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        SystemRunner.run(program, &args, &[], timeout).await
    }

    #[tokio::test]
    async fn programs_answer_fail_hang_or_are_not_installed() {
        let second = Duration::from_secs(30);
        assert_eq!(
            run("sh", &["-c", "echo out; echo err >&2"], second)
                .await
                .unwrap(),
            "out\nerr\n"
        );
        assert!(matches!(
            run("/nonexistent/nvidia-smi", &[], second).await,
            Err(RunError::NotPresent(_))
        ));
        let failed = run("sh", &["-c", "echo broken; exit 9"], second).await;
        assert!(
            matches!(&failed, Err(RunError::Failed { output, .. }) if output == "broken"),
            "{failed:?}"
        );
        let started = std::time::Instant::now();
        let hung = run("sleep", &["30"], Duration::from_millis(200)).await;
        assert!(matches!(hung, Err(RunError::TimedOut { .. })), "{hung:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
