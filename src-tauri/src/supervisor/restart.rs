//! The restart policy: what an exit of the backend means and what follows it.

use std::process::ExitStatus;
use std::time::Duration;

use super::RestartPolicy;

/// What the supervisor does after the process exited on its own (not during a stop).
#[derive(Debug, PartialEq)]
pub(super) enum AfterExit {
    /// Exit code 0: the backend chose to stop; no restart.
    Stopped,
    /// A crash with restarts left: start again after `delay`, this being restart number `attempt`.
    Restart {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// A crash and no restart allowed (any more); `reason` is shown to the user.
    Failed { reason: String },
}

/// Decides what follows an exit; `restarts` is how many automatic restarts already happened.
pub(super) fn after_exit(
    exit: &std::io::Result<ExitStatus>,
    policy: &RestartPolicy,
    restarts: u32,
) -> AfterExit {
    let cause = match exit {
        Ok(status) if status.success() => return AfterExit::Stopped,
        Ok(status) => describe(status),
        Err(err) => format!("the backend could not be waited for ({err})"),
    };
    if !policy.auto_restart {
        return AfterExit::Failed {
            reason: format!("{cause} (auto-restart is off)"),
        };
    }
    if restarts >= policy.max_restarts {
        let times = if restarts == 1 { "restart" } else { "restarts" };
        return AfterExit::Failed {
            reason: format!(
                "{cause} after {restarts} {times}; max_restarts ({}) reached",
                policy.max_restarts
            ),
        };
    }
    let attempt = restarts + 1;
    AfterExit::Restart {
        attempt,
        delay: policy.restart_delay,
        reason: format!(
            "{cause}; restarting in {} s (attempt {attempt} of {})",
            policy.restart_delay.as_secs_f32(),
            policy.max_restarts
        ),
    }
}

/// "the backend exited with code 3" or "the backend was killed by signal 9 (SIGKILL)".
pub(super) fn describe(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("the backend exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => format!("the backend was killed by signal {signal} ({name})"),
                Err(_) => format!("the backend was killed by signal {signal}"),
            };
        }
    }
    format!("the backend ended ({status})")
}

#[cfg(all(test, unix))]
// Tests may unwrap: a panic is how they fail.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn policy(auto_restart: bool, max_restarts: u32) -> RestartPolicy {
        RestartPolicy {
            auto_restart,
            max_restarts,
            restart_delay: Duration::from_secs(2),
        }
    }

    #[test]
    fn clean_exit_is_a_stop_not_a_crash() {
        let exit = Ok(ExitStatus::from_raw(0));
        assert_eq!(after_exit(&exit, &policy(true, 3), 0), AfterExit::Stopped);
    }

    #[test]
    fn crash_with_restarts_left_restarts_with_the_next_attempt_number() {
        let exit = Ok(ExitStatus::from_raw(3 << 8));
        match after_exit(&exit, &policy(true, 3), 1) {
            AfterExit::Restart {
                attempt,
                delay,
                reason,
            } => {
                assert_eq!((attempt, delay), (2, Duration::from_secs(2)));
                assert!(reason.contains("exited with code 3"), "{reason}");
            }
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn crash_past_the_limit_fails_and_says_how_often_it_restarted() {
        let killed = Ok(ExitStatus::from_raw(9));
        match after_exit(&killed, &policy(true, 2), 2) {
            AfterExit::Failed { reason } => {
                assert!(reason.contains("signal 9 (SIGKILL)"), "{reason}");
                assert!(reason.contains("after 2 restarts"), "{reason}");
            }
            other => panic!("expected failed, got {other:?}"),
        }
    }

    #[test]
    fn crash_without_auto_restart_fails_at_once() {
        let exit = Ok(ExitStatus::from_raw(1 << 8));
        match after_exit(&exit, &policy(false, 5), 0) {
            AfterExit::Failed { reason } => {
                assert!(reason.contains("auto-restart is off"), "{reason}")
            }
            other => panic!("expected failed, got {other:?}"),
        }
    }
}
