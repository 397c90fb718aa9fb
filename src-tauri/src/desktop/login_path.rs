//! The PATH of the user's login shell. An app started from the Finder or the Dock inherits
//! launchd's bare PATH (`/usr/bin:/bin:/usr/sbin:/sbin`), so `llama-server` from Homebrew or
//! `mlx_lm.server` from a venv would not be found; the app asks `$SHELL -l` once at start and puts
//! its PATH first. Used on macOS; the parsing and merging are plain functions tested everywhere.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Printed before the PATH so that banners and motd lines from the profile are skipped.
const MARKER: &str = "__CORRAL_LOGIN_PATH__=";

/// A login shell that waits for input or a slow network mount must not hold the app up.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The PATH in the shell's output: the last line carrying the marker.
pub fn parse(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .find_map(|line| {
            line.split_once(MARKER)
                .map(|(_, path)| path.trim().to_owned())
        })
        .filter(|path| !path.is_empty())
}

/// `login` entries first, then those of `current` not already there, in order, without empty
/// entries (an empty entry means the working folder, never wanted for an app).
pub fn merge(login: &str, current: &str) -> String {
    let mut entries: Vec<&str> = Vec::new();
    for entry in login.split(':').chain(current.split(':')) {
        if !entry.is_empty() && !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    entries.join(":")
}

#[derive(Debug, thiserror::Error)]
pub enum LoginPathError {
    #[error("SHELL is not set")]
    NoShell,
    #[error("cannot run {shell}: {source}")]
    Spawn {
        shell: String,
        source: std::io::Error,
    },
    #[error("{shell} -l did not answer within {} s", TIMEOUT.as_secs())]
    Timeout { shell: String },
    #[error("{shell} -l printed no PATH")]
    NoPath { shell: String },
}

/// The user's shell, as login sessions set it.
pub fn user_shell() -> Result<String, LoginPathError> {
    std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or(LoginPathError::NoShell)
}

/// Runs `<shell> -l -c` to print its PATH, giving up after `TIMEOUT`.
pub fn ask_login_shell(shell: &str) -> Result<String, LoginPathError> {
    let shell = shell.to_owned();
    let mut child = Command::new(&shell)
        .arg("-l")
        .arg("-c")
        .arg(format!("printf '\\n{MARKER}%s\\n' \"$PATH\""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| LoginPathError::Spawn {
            shell: shell.clone(),
            source,
        })?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LoginPathError::Timeout { shell });
            }
        }
    }
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut output);
    }
    parse(&output).ok_or(LoginPathError::NoPath { shell })
}

/// Puts the login shell's PATH in front of this process's, so spawned backends see it. Called
/// at start, before any thread exists.
#[cfg(target_os = "macos")]
pub fn adopt() {
    match user_shell().and_then(|shell| ask_login_shell(&shell)) {
        Ok(login) => {
            let current = std::env::var("PATH").unwrap_or_default();
            let merged = merge(&login, &current);
            tracing::info!("PATH from the login shell: {merged}");
            std::env::set_var("PATH", merged);
        }
        Err(e) => tracing::warn!("keeping the inherited PATH: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_found_after_profile_noise() {
        let output = format!(
            "Welcome to zsh!\nLast login: today\n\n{MARKER}/opt/homebrew/bin:/usr/bin:/bin\n"
        );
        assert_eq!(
            parse(&output).as_deref(),
            Some("/opt/homebrew/bin:/usr/bin:/bin")
        );
        assert_eq!(parse("no marker here\n"), None);
        assert_eq!(parse(&format!("{MARKER}\n")), None, "an empty PATH is none");
    }

    #[test]
    fn login_entries_come_first_without_duplicates_or_empty_entries() {
        assert_eq!(
            merge(
                "/opt/homebrew/bin:/usr/bin::/Users/me/.venv/bin",
                "/usr/bin:/bin:/usr/sbin:/sbin:/opt/homebrew/bin"
            ),
            "/opt/homebrew/bin:/usr/bin:/Users/me/.venv/bin:/bin:/usr/sbin:/sbin"
        );
        assert_eq!(merge("", "/usr/bin:/bin"), "/usr/bin:/bin");
    }

    #[cfg(unix)]
    #[test]
    fn a_real_login_shell_answers_its_path() {
        // `sh -l` reads /etc/profile; /usr/bin is on any Unix PATH it may end with.
        let path = ask_login_shell("/bin/sh").expect("sh answers");
        assert!(path.split(':').any(|entry| entry == "/usr/bin"), "{path}");
    }
}
