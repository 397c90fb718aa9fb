//! Starting the app: keys and port, the engine in this process, the window on the engine's own
//! address, the plugins, and the orderly stop of every backend when the app quits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tauri::{AppHandle, Manager, RunEvent, WebviewUrl, WebviewWindowBuilder, WindowEvent};
use tauri_plugin_opener::OpenerExt as _;
use tauri_plugin_window_state::StateFlags;

use super::control::Control;
use super::settings::SettingsError;
use super::{dashboard_url, local_base};
use crate::config::Config;
use crate::keys::{self, KeysError};
use crate::Engine;

/// The main window's label, as capabilities/default.json names it.
pub const MAIN_WINDOW: &str = "main";

#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("port {0} and the {count} after it are all taken: set server.port", count = super::PORT_TRIES)]
    NoFreePort(u16),
    #[error(transparent)]
    Engine(#[from] crate::EngineError),
    #[error("the window system failed: {0}")]
    Tauri(#[from] tauri::Error),
}

/// Whether a window can be opened at all (a Linux machine without X11 or Wayland cannot).
pub fn display_available() -> bool {
    if cfg!(target_os = "linux") {
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    } else {
        true
    }
}

/// What the window and the tray need of the running engine.
struct Started {
    /// The engine's address, `http://127.0.0.1:<port>`.
    base: String,
    /// `base` with the management key in the fragment.
    dashboard: String,
    registry: Arc<crate::instances::Registry>,
}

/// Starts the engine, opens the window on it, and stops every backend when the app exits.
/// `overrides`: what the configuration was loaded with, to load it again on a reload.
pub fn run(mut config: Config, overrides: crate::config::Overrides) -> Result<(), DesktopError> {
    // WebKitGTK's DMA-BUF renderer leaves the window blank or stale without GPU acceleration
    // (VMs, remote desktops, Xvfb, some NVIDIA drivers); a dashboard does not need it. Set
    // before any thread exists; the user's own setting wins.
    #[cfg(target_os = "linux")]
    if std::env::var_os("WEBKIT_DISABLE_DMABUF_RENDERER").is_none() {
        std::env::set_var("WEBKIT_DISABLE_DMABUF_RENDERER", "1");
    }
    let control = Arc::new(Control::new(&config)?);
    let runtime = tokio::runtime::Runtime::new().map_err(DesktopError::Runtime)?;
    tauri::async_runtime::set(runtime.handle().clone());

    // Filled once the engine runs, which is after `build`: the window and tray need it.
    let started: Arc<OnceLock<Started>> = Arc::new(OnceLock::new());
    let setup_started = started.clone();
    let setup_control = control.clone();
    let engine_control: Arc<dyn crate::api::desktop::DesktopControl> = control.clone();
    let app = tauri::Builder::default()
        // First, and before the engine exists: a second launch hands over to the running app
        // (which shows its window) and exits inside `build` below. Starting an engine first
        // would take the running app's pid files for a crash's leftovers and kill its backends.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            show_window(app);
        }))
        .plugin(
            tauri_plugin_window_state::Builder::new()
                // A window closed to the tray was hidden; it must still open at the next launch.
                .with_state_flags(StateFlags::all() & !StateFlags::VISIBLE)
                .build(),
        )
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            None,
        ))
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_clipboard_manager::init())
        .plugin(tauri_plugin_opener::init())
        .setup(move |app| {
            let started = setup_started.get().ok_or("the engine did not start")?;
            setup_control.attach(app.handle().clone());
            open_window(app.handle(), &started.dashboard, &started.base)?;
            super::tray::install(app.handle(), started.registry.clone(), started.base.clone())?;
            quit_on_signals(app.handle().clone());
            Ok(())
        })
        .on_window_event(move |window, event| {
            if let WindowEvent::CloseRequested { api, .. } = event {
                if window.label() == MAIN_WINDOW && control.close_to_tray() {
                    api.prevent_close();
                    if let Err(e) = window.hide() {
                        tracing::warn!("cannot hide the window: {e}");
                    }
                }
            }
        })
        .build(tauri::generate_context!("../tauri.conf.json"))?;

    // Past `build`, this is the only Corral app of this user.
    let window_key = keys::load_or_create(&mut config)?.window_key;
    let wanted = config.server.port;
    config.server.port = super::first_free_port(config.server.host, wanted)
        .ok_or(DesktopError::NoFreePort(wanted))?;
    if config.server.port != wanted {
        tracing::warn!(
            "port {wanted} is taken: using {} instead",
            config.server.port
        );
    }
    let engine = runtime.block_on(Engine::start_with(config, Some(engine_control)))?;
    // SIGHUP and a change to the file reload the configuration, as `corral serve` does. The
    // port the app took (the configured one may have been busy) is the running one, not a
    // change.
    let port = engine.addr.port();
    let file = Config::file_in_use(&overrides);
    let load: crate::config_watch::Load = Arc::new(move || {
        let mut config = Config::load(&overrides).map_err(|e| e.to_string())?;
        keys::load_or_create(&mut config).map_err(|e| e.to_string())?;
        config.server.port = port;
        Ok(config)
    });
    let watch = {
        let _context = runtime.enter();
        crate::config_watch::spawn(engine.registry(), file.as_deref(), load)
    };
    // Kept for the life of the app (`app.run` below never returns).
    let _watch = match watch {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::warn!("the configuration will not reload while the app runs: {e}");
            None
        }
    };
    let base = local_base(engine.addr);
    tracing::info!("Corral desktop: the window opens {base}/");
    let _ = started.set(Started {
        dashboard: dashboard_url(&base, window_key.as_deref()),
        base,
        registry: engine.registry().clone(),
    });
    let mut engine = Some(engine);
    let runtime_handle = runtime.handle().clone();
    let mut runtime_slot = Some(runtime);
    // Set once every instance is stopped; until then a request to exit only starts the stopping.
    let stopped = Arc::new(AtomicBool::new(false));
    app.run(move |app, event| match event {
        // A quit (tray, signal, last window closed) waits for the engine's shutdown off the main
        // thread: the event loop keeps running meanwhile, so whatever the shutdown asks of the
        // main thread (the tray menu follows the instances as they stop) is still answered.
        RunEvent::ExitRequested { api, code, .. } if !stopped.load(Ordering::SeqCst) => {
            api.prevent_exit();
            if let Some(engine) = engine.take() {
                tracing::info!("quitting: stopping every instance");
                if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
                    if let Err(e) = window.hide() {
                        tracing::debug!("cannot hide the window: {e}");
                    }
                }
                let (app, stopped) = (app.clone(), Arc::clone(&stopped));
                runtime_handle.spawn(async move {
                    engine.shutdown().await;
                    stopped.store(true, Ordering::SeqCst);
                    app.exit(code.unwrap_or(0));
                });
            }
        }
        RunEvent::Exit => {
            // Only an exit that skipped the request above still has an engine to stop.
            if let Some(engine) = engine.take() {
                tracing::info!("quitting: stopping every instance");
                runtime_handle.block_on(engine.shutdown());
            }
            // Dropping a runtime waits for every task it still runs, without end; the process
            // is about to end, so a task stuck on something outside (a D-Bus call, the main
            // thread) must not keep it alive.
            if let Some(runtime) = runtime_slot.take() {
                runtime.shutdown_timeout(RUNTIME_DRAIN);
            }
            // The event loop ends the process without returning to `main`.
            crate::logging::finish();
        }
        // A click on the Dock icon brings back a window closed to the menu bar.
        #[cfg(target_os = "macos")]
        RunEvent::Reopen {
            has_visible_windows: false,
            ..
        } => show_window(_app),
        _ => {}
    });
    Ok(())
}

/// How long the last tasks may take to end once the app has stopped every instance.
const RUNTIME_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The window over the engine's UI. Links leaving the engine open in the user's browser.
fn open_window(app: &AppHandle, dashboard: &str, base: &str) -> Result<(), tauri::Error> {
    let url = dashboard.parse().map_err(tauri::Error::InvalidUrl)?;
    let origin = format!("{base}/");
    let nav_app = app.clone();
    let new_window_app = app.clone();
    WebviewWindowBuilder::new(app, MAIN_WINDOW, WebviewUrl::External(url))
        .title("Corral")
        .inner_size(1100.0, 720.0)
        .min_inner_size(800.0, 500.0)
        .on_navigation(move |url| {
            let inside = url.as_str().starts_with(&origin);
            if !inside {
                open_outside(&nav_app, url.as_str());
            }
            inside
        })
        .on_new_window(move |url, _| {
            open_outside(&new_window_app, url.as_str());
            tauri::webview::NewWindowResponse::Deny
        })
        .build()?;
    Ok(())
}

fn open_outside(app: &AppHandle, url: &str) {
    if url.starts_with("http://") || url.starts_with("https://") {
        if let Err(e) = app.opener().open_url(url, None::<&str>) {
            tracing::warn!("cannot open {url}: {e}");
        }
    }
}

/// Shows, unminimizes and focuses the window (tray "Open dashboard", a second launch).
pub fn show_window(app: &AppHandle) {
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let shown = window
            .show()
            .and_then(|()| window.unminimize())
            .and_then(|()| window.set_focus());
        if let Err(e) = shown {
            tracing::warn!("cannot show the window: {e}");
        }
    }
}

/// SIGTERM and Ctrl-C (a logout, `kill`, a terminal) quit like the tray's Quit: backends stop
/// gracefully instead of dying with the app.
fn quit_on_signals(app: AppHandle) {
    tauri::async_runtime::spawn(async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate => {}
        }
        tracing::info!("signal received: quitting");
        app.exit(0);
    });
}
