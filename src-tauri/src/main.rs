//! The `corral` command: `corral` opens the desktop app (when built with it and a display is
//! there), `corral serve` runs the engine headless.

// See Cargo.toml: cheaper per-request allocations for the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{IsTerminal as _, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use corral::config::{Config, Overrides};
use corral::keys::{self, Filled, KeptKey};
use corral::Engine;

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Runs, routes and supervises local LLM inference servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    options: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine headless: the API, the proxy and the web UI, without a window.
    Serve(ServeArgs),
    /// The API keys Corral generated (used when the config sets none), kept owner-only in
    /// <data_dir>/desktop-keys.json.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Install a backend into the data folder, as the app's Backends page does: `llama-cpp`
    /// builds llama-server from llama.cpp's source (CUDA, Metal or CPU, as the machine has),
    /// `mlx` installs mlx-lm into a virtualenv of Corral's own. Progress goes to stderr;
    /// Ctrl-C cancels. A running Corral on the same data folder uses the result at once.
    Install { backend: Installable },
}

/// The backends `corral install` installs, by the names the API's routes use.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Installable {
    #[value(name = "llama-cpp", alias = "llama_cpp")]
    LlamaCpp,
    #[value(name = "mlx", alias = "mlx-lm", alias = "mlx_lm")]
    Mlx,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Print the generated keys and where they are kept.
    Show,
    /// Replace both generated keys with new ones (restart a running Corral to use them).
    Rotate,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// YAML config file (llamactl's keys). Default: the per-user config folder.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1).
    #[arg(long, global = true)]
    host: Option<IpAddr>,
    /// Port to listen on (default 8080).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Folder for instance definitions, logs and pid files.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            host: self.host,
            port: self.port,
            data_dir: self.data_dir.clone(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    // Colour codes only for a terminal, not in files and journals.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    corral::logging::init(std::io::stderr(), ansi);
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(&args),
        Some(Command::Keys { action }) => manage_keys(&cli.options, &action),
        Some(Command::Install { backend }) => install(&cli.options, backend),
        None => open(&cli.options),
    };
    corral::logging::finish();
    result
}

/// `corral` without a subcommand: the desktop app where it can open a window, else headless.
fn open(args: &ServeArgs) -> anyhow::Result<()> {
    #[cfg(feature = "desktop")]
    if corral::desktop::display_available() {
        // A double-clicked app gets launchd's bare PATH; backends live on the login shell's.
        #[cfg(target_os = "macos")]
        corral::desktop::login_path::adopt();
        let overrides = args.overrides();
        let config = Config::load(&overrides).context("loading the configuration")?;
        return corral::desktop::run(config, overrides).context("running the desktop app");
    }
    serve(args)
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.overrides()).context("loading the configuration")?;
    let kept = keys::load_or_create(&mut config).context("loading the generated API keys")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let overrides = args.overrides();
    let file = Config::file_in_use(&overrides);
    runtime.block_on(async move {
        let engine = Engine::start(config).await?;
        print_banner(&engine, &kept);
        // SIGHUP and a change to the file reload it; the keys filled in at the start are
        // filled in again (from their file) so that they do not read as a change.
        let load: corral::config_watch::Load = std::sync::Arc::new(move || {
            let mut config = Config::load(&overrides).map_err(|e| e.to_string())?;
            keys::load_or_create(&mut config).map_err(|e| e.to_string())?;
            Ok(config)
        });
        let _watch = corral::config_watch::spawn(engine.registry(), file.as_deref(), load)
            .context("watching the configuration")?;
        shutdown_signal().await;
        tracing::info!("shutting down: stopping every instance");
        engine.shutdown().await;
        Ok(())
    })
}

/// The address, and for each generated key where it is kept. A key is printed when it is made
/// (the owner needs it once); later starts print only where it is, since the output of a
/// service often ends up in a journal or log file other users can read.
fn print_banner(engine: &Engine, kept: &Filled) {
    println!(
        "Corral {} on http://{}",
        env!("CARGO_PKG_VERSION"),
        engine.addr
    );
    println!("  data: {}", engine.config.instances.data_dir.display());
    let path = kept.path.display();
    for (what, key) in [
        ("management key", &kept.management),
        ("inference key", &kept.inference),
    ] {
        match key {
            Some(KeptKey { key, new: true }) => {
                println!("  {what} (generated, kept in {path}): {key}")
            }
            Some(KeptKey { new: false, .. }) => {
                println!("  {what}: kept in {path} (`corral keys show` prints it)")
            }
            None => {}
        }
    }
    if kept.management.is_some() || kept.inference.is_some() {
        println!(
            "  `corral keys rotate` replaces generated keys; auth.management_keys / \
             auth.inference_keys in the config take their place"
        );
    }
}

/// `corral keys show` and `corral keys rotate`.
fn manage_keys(args: &ServeArgs, action: &KeysAction) -> anyhow::Result<()> {
    let config = Config::load(&args.overrides()).context("loading the configuration")?;
    let data_dir = &config.instances.data_dir;
    let path = keys::path(data_dir);
    let stored = match action {
        KeysAction::Show => keys::read_stored(data_dir)?,
        KeysAction::Rotate => keys::rotate(data_dir)?,
    };
    println!("keys file: {}", path.display());
    for (what, key, configured) in [
        (
            "management key",
            &stored.management_key,
            !config.auth.management_keys.is_empty(),
        ),
        (
            "inference key",
            &stored.inference_key,
            !config.auth.inference_keys.is_empty(),
        ),
    ] {
        match key {
            Some(key) => println!("  {what}: {key}"),
            None => println!("  {what}: none yet (made at the next start that needs it)"),
        }
        if configured {
            println!("    (the configuration sets its own {what}s, which Corral uses instead)");
        }
    }
    if matches!(action, KeysAction::Rotate) {
        println!("Restart a running Corral (`corral serve` or the app) to use the new keys.");
    }
    Ok(())
}

/// `corral install <backend>`: runs the same install job the API starts, in this process,
/// and follows it on the terminal. Exits non-zero when it fails or is cancelled.
fn install(args: &ServeArgs, backend: Installable) -> anyhow::Result<()> {
    use corral::backends::install::{Installs, JobState, StartError};
    use corral::backends::BackendType;

    let config = Config::load(&args.overrides()).context("loading the configuration")?;
    let backend = match backend {
        Installable::LlamaCpp => BackendType::LlamaCpp,
        Installable::Mlx => BackendType::MlxLm,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let installs = std::sync::Arc::new(Installs::open(&config.instances.data_dir));
        let mut events = installs.subscribe();
        let job = match installs.start(backend, config.backends.command(backend)) {
            Ok(job) => job,
            Err(StartError::AlreadyInstalled { path, .. }) => {
                eprintln!(
                    "{} is installed already: {}",
                    backend.as_str(),
                    path.display()
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        eprintln!(
            "installing {} (log: {})",
            backend.as_str(),
            job.log_path.display()
        );
        let mut steps = Steps::new(std::io::stderr(), std::io::stderr().is_terminal());
        let mut cancelling = false;
        let ended = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(job) => {
                        steps.show(&job.step);
                        if job.state != JobState::Running {
                            break job;
                        }
                    }
                    // Fell behind: the next event carries the whole job again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        anyhow::bail!("the install stopped without an end")
                    }
                },
                () = shutdown_signal(), if !cancelling => {
                    steps.end_line();
                    eprintln!("cancelling");
                    cancelling = true;
                    if let Some(job) = installs.cancel(backend).await {
                        break job;
                    }
                }
            }
        };
        steps.end_line();
        match (ended.state, &ended.path) {
            (JobState::Completed, Some(path)) => {
                println!("{}", path.display());
                Ok(())
            }
            _ => {
                for line in &ended.log_tail {
                    eprintln!("  | {line}");
                }
                let why = ended.error.as_deref().unwrap_or("cancelled");
                anyhow::bail!(
                    "the install of {} ended {:?}: {why} (the whole log: {})",
                    backend.as_str(),
                    ended.state,
                    ended.log_path.display()
                )
            }
        }
    })
}

/// An install's steps on the terminal: a line each, except that on a terminal a step that only
/// moves its percentage ("building 13%", then "building 14%") rewrites its own line, where a log
/// or a pipe gets every step on a line of its own.
struct Steps<W: Write> {
    out: W,
    terminal: bool,
    last: String,
    /// A terminal line was written without its newline (it may still be rewritten).
    open: bool,
}

impl<W: Write> Steps<W> {
    fn new(out: W, terminal: bool) -> Steps<W> {
        Steps {
            out,
            terminal,
            last: String::new(),
            open: false,
        }
    }

    fn show(&mut self, step: &str) {
        if step == self.last {
            return;
        }
        // The terminal is only a view of the progress: a failed write must not end the install.
        let _ = if !self.terminal {
            writeln!(self.out, "  {step}")
        } else if self.open && progress_of(step) == progress_of(&self.last) {
            write!(self.out, "\r\x1b[2K  {step}")
        } else {
            let newline = if self.open { "\n" } else { "" };
            write!(self.out, "{newline}  {step}")
        };
        let _ = self.out.flush();
        self.open = self.terminal;
        step.clone_into(&mut self.last);
    }

    /// Ends a line left open for rewriting, before anything else is printed.
    fn end_line(&mut self) {
        if self.open {
            let _ = writeln!(self.out);
            self.open = false;
        }
    }
}

/// What a step is about, without its percentage: "building" for "building 13%".
fn progress_of(step: &str) -> &str {
    step.strip_suffix('%')
        .and_then(|rest| rest.rsplit_once(' '))
        .filter(|(_, number)| number.parse::<f64>().is_ok())
        .map_or(step, |(what, _)| what)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(terminal: bool, steps: &[&str]) -> String {
        let mut printer = Steps::new(Vec::new(), terminal);
        for step in steps {
            printer.show(step);
        }
        printer.end_line();
        String::from_utf8(printer.out).expect("text")
    }

    const STEPS: [&str; 6] = [
        "downloading",
        "building 1%",
        "building 1%",
        "building 2%",
        "building 2.5 MiB 3%",
        "installed",
    ];

    #[test]
    fn on_a_terminal_a_moving_percentage_rewrites_its_line() {
        assert_eq!(
            shown(true, &STEPS),
            "  downloading\n  building 1%\r\x1b[2K  building 2%\n  building 2.5 MiB 3%\n  installed\n"
        );
    }

    #[test]
    fn a_log_or_a_pipe_gets_every_step_on_its_own_line() {
        assert_eq!(
            shown(false, &STEPS),
            "  downloading\n  building 1%\n  building 2%\n  building 2.5 MiB 3%\n  installed\n"
        );
    }
}
