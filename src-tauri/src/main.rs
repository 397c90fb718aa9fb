//! The `corral` command: `corral` opens the desktop app (when built with it and a display is
//! there), `corral serve` runs the engine headless.

// See Cargo.toml: cheaper per-request allocations for the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use corral::config::{Config, Overrides};
use corral::{generate_missing_keys, Engine, GeneratedKeys};

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
        let config = Config::load(&args.overrides()).context("loading the configuration")?;
        return corral::desktop::run(config).context("running the desktop app");
    }
    serve(args)
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.overrides()).context("loading the configuration")?;
    let generated = generate_missing_keys(&mut config);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let engine = Engine::start(config).await?;
        print_banner(&engine, &generated);
        shutdown_signal().await;
        tracing::info!("shutting down: stopping every instance");
        engine.shutdown().await;
        Ok(())
    })
}

fn print_banner(engine: &Engine, generated: &GeneratedKeys) {
    println!(
        "Corral {} on http://{}",
        env!("CARGO_PKG_VERSION"),
        engine.addr
    );
    println!("  data: {}", engine.config.instances.data_dir.display());
    if let Some(key) = &generated.management {
        println!("  management key (generated, changes on restart): {key}");
    }
    if let Some(key) = &generated.inference {
        println!("  inference key (generated, changes on restart):  {key}");
    }
    if generated.management.is_some() || generated.inference.is_some() {
        println!("  set auth.management_keys / auth.inference_keys to keep keys across restarts");
    }
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
