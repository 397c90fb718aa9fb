//! Builds the web UI (`ui/` -> `ui/dist`, which `api::ui` embeds) when it is stale and Node.js is
//! installed, so that a plain `cargo build` or `cargo install --path src-tauri` gives a binary
//! with its UI; says so in the build output when it cannot. Runs tauri-build for the desktop
//! build.
//!
//! The UI build is what `scripts/build-ui.sh` does: `npm ci` when `node_modules` is missing or
//! older than the lock file, then `npm run build` (Vite), only when a source is newer than
//! `ui/dist/index.html` (the last file Vite writes). `CORRAL_SKIP_UI_BUILD=1` turns it off, for
//! packagers who build the UI themselves: the `ui/dist` that is there is embedded as it is.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

/// What `ui/dist` is built from, in `ui/`: these folders and files, and the tools' configs
/// (`vite.config.*`, `svelte.config.*`, `tsconfig*.json`), as in scripts/build-ui.sh.
const SOURCES: &[&str] = &[
    "src",
    "public",
    "index.html",
    "package.json",
    "package-lock.json",
];

fn is_config(name: &str) -> bool {
    name.starts_with("vite.config.")
        || name.starts_with("svelte.config.")
        || (name.starts_with("tsconfig") && name.ends_with(".json"))
}

const SKIP_VAR: &str = "CORRAL_SKIP_UI_BUILD";

/// What became of the UI in this build.
enum Ui {
    /// `ui/dist` was already newer than its sources.
    UpToDate,
    /// This run built `ui/dist`.
    Built,
    /// Not built: why, and what would fix it, for the warning.
    NotBuilt { reason: String, fix: &'static str },
}

const INSTALL_NODE: &str = "install Node.js 20.19 or newer (with npm) and build again";
const SEE_ERROR: &str = "run scripts/build-ui.sh to see the whole error, fix it and build again";

fn not_built(reason: impl Into<String>, fix: &'static str) -> Ui {
    Ui::NotBuilt {
        reason: reason.into(),
        fix,
    }
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let ui = Path::new(&manifest).join("../ui");
    let dist = ui.join("dist");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={SKIP_VAR}");

    let mut sources: Vec<PathBuf> = SOURCES
        .iter()
        .map(|name| ui.join(name))
        .filter(|path| path.exists())
        .collect();
    let configs = std::fs::read_dir(&ui).into_iter().flatten().flatten();
    sources.extend(
        configs
            .filter(|entry| entry.file_name().to_str().is_some_and(is_config))
            .map(|entry| entry.path()),
    );
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }

    let outcome = build_ui(&ui, &dist, &sources);
    // Cargo re-runs this script when a watched path is newer than the script's last start. A
    // `ui/dist` this run wrote is, so it is watched only when something else made it: then a
    // later `scripts/build-ui.sh` (or a packager's build) is picked up. A missing path would
    // count as changed on every build, so without `ui/dist` the folder it will appear in is
    // watched instead.
    if !matches!(outcome, Ui::Built) {
        if dist.is_dir() {
            println!("cargo:rerun-if-changed={}", dist.display());
        } else if ui.is_dir() {
            println!("cargo:rerun-if-changed={}", ui.display());
        }
    }
    if let Ui::NotBuilt { reason, fix } = outcome {
        let index = dist.join("index.html");
        let fresh = index.is_file() && newest(&sources) <= modified(&index);
        let effect = if fresh {
            "the binary embeds the ui/dist already there"
        } else if index.is_file() {
            "the binary embeds an OUT-OF-DATE ui/dist"
        } else {
            "the binary will serve a \"web UI is not built\" page at / (the API works)"
        };
        println!("cargo:warning=web UI not built: {reason}; {effect}");
        if !fresh {
            println!("cargo:warning=to build the UI into the binary: {fix}");
        }
    }

    #[cfg(feature = "desktop")]
    tauri_build::try_build(tauri_build::Attributes::new().config_path("../tauri.conf.json"))
        .unwrap_or_else(|e| panic!("tauri-build failed: {e:#}"));
}

fn build_ui(ui: &Path, dist: &Path, sources: &[PathBuf]) -> Ui {
    if std::env::var(SKIP_VAR).is_ok_and(|v| !v.is_empty() && v != "0") {
        return not_built(
            format!("{SKIP_VAR} is set"),
            "build ui/dist first (scripts/build-ui.sh), or unset it, and build again",
        );
    }
    if !ui.join("package.json").is_file() {
        // A packaged crate (`cargo package`) carries no `ui/`.
        return not_built(
            format!("no {} beside the crate", ui.join("package.json").display()),
            "build from the repository (cargo install --path src-tauri)",
        );
    }
    let index = dist.join("index.html");
    if index.is_file() && newest(sources) <= modified(&index) {
        return Ui::UpToDate;
    }
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    if Command::new(npm).arg("--version").output().is_err() {
        return not_built("npm (Node.js) not found on PATH", INSTALL_NODE);
    }

    // Two builds at once (another target folder, an editor's `cargo check`, scripts/build-ui.sh)
    // must not run npm in the same folder together. The lock is a file of its own: Windows locks
    // are mandatory, so locking a file npm reads would stop npm.
    let lock_path = ui.join(".build.lock");
    let lock = match File::create(&lock_path).and_then(|file| {
        file.lock()?;
        Ok(file)
    }) {
        Ok(lock) => lock,
        Err(e) => {
            return not_built(
                format!("cannot lock {}: {e}", lock_path.display()),
                SEE_ERROR,
            );
        }
    };
    // The build that held the lock may have just built it.
    if index.is_file() && newest(sources) <= modified(&index) {
        return Ui::UpToDate;
    }

    // npm writes node_modules/.package-lock.json at every install.
    let installed = ui.join("node_modules/.package-lock.json");
    if !installed.is_file() || modified(&ui.join("package-lock.json")) > modified(&installed) {
        if let Err(failure) = run(ui, npm, &["ci", "--no-audit", "--no-fund"]) {
            return not_built(failure, SEE_ERROR);
        }
    }
    if let Err(failure) = run(ui, npm, &["run", "build"]) {
        return not_built(failure, SEE_ERROR);
    }
    // Mark the build as newer than its sources even if a tool kept old time stamps.
    if let Err(e) = File::options()
        .append(true)
        .open(&index)
        .and_then(|file| file.set_modified(SystemTime::now()))
    {
        return not_built(format!("{} not written ({e})", index.display()), SEE_ERROR);
    }
    drop(lock);
    Ui::Built
}

/// Runs `npm args` in `ui/`; a failure is its message with the end of npm's output, for the
/// warning (cargo shows a build script's own output only when the script fails, and a UI that
/// does not build must not stop the engine from building).
fn run(ui: &Path, npm: &str, args: &[&str]) -> Result<(), String> {
    let what = format!("`npm {}`", args.join(" "));
    // Plain text: the message goes on one warning line.
    let output = Command::new(npm)
        .args(args)
        .current_dir(ui)
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .output();
    match output {
        Err(e) => Err(format!("{what} could not start ({e})")),
        Ok(Output {
            status,
            stdout,
            stderr,
        }) if !status.success() => {
            // The error opens stderr (a stack trace follows); without one, stdout's end says it.
            let stderr = String::from_utf8_lossy(&stderr);
            let stdout = String::from_utf8_lossy(&stdout);
            let lines = |text: &str| -> Vec<String> {
                strip_ansi(text)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            let err = lines(&stderr);
            let said = if err.is_empty() {
                let out = lines(&stdout);
                out[out.len().saturating_sub(5)..].join(" | ")
            } else {
                err[..err.len().min(6)].join(" | ")
            };
            Err(format!("{what} failed ({status}): {said}"))
        }
        Ok(_) => Ok(()),
    }
}

/// `text` without terminal colour codes (`ESC [ ... letter`), which some tools print whatever
/// NO_COLOR says.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// When `path` was last changed; the epoch when it cannot be read.
fn modified(path: &Path) -> SystemTime {
    path.metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The newest change time of any file under `paths`.
fn newest(paths: &[PathBuf]) -> SystemTime {
    fn walk(path: &Path, newest: &mut SystemTime) {
        *newest = (*newest).max(modified(path));
        if path.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        }
    }
    let mut time = SystemTime::UNIX_EPOCH;
    for path in paths {
        walk(path, &mut time);
    }
    time
}
