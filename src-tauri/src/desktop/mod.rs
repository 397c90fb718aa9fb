//! The desktop shell (feature `desktop`): a Tauri window over the engine running in this process.
//! The window loads the engine's own address, so the app and a browser run the same UI.

use tauri::{RunEvent, WebviewUrl, WebviewWindowBuilder};

use crate::config::Config;
use crate::Engine;

#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
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

/// Starts the engine, opens the window on it, and stops every backend when the app exits.
pub fn run(config: Config) -> Result<(), DesktopError> {
    let runtime = tokio::runtime::Runtime::new().map_err(DesktopError::Runtime)?;
    let engine = runtime.block_on(Engine::start(config))?;
    let url = format!("http://{}/", engine.addr);
    tauri::async_runtime::set(runtime.handle().clone());
    let app = tauri::Builder::default()
        .setup(move |app| {
            WebviewWindowBuilder::new(app, "main", WebviewUrl::External(url.parse()?))
                .title("Corral")
                .inner_size(1024.0, 640.0)
                .min_inner_size(800.0, 500.0)
                .build()?;
            Ok(())
        })
        .build(tauri::generate_context!("../tauri.conf.json"))?;
    let mut engine = Some(engine);
    app.run(move |_, event| {
        if let RunEvent::Exit = event {
            if let Some(engine) = engine.take() {
                runtime.block_on(engine.shutdown());
            }
        }
    });
    Ok(())
}
