//! The app's side of `/api/v1/desktop`: close-to-tray kept in `desktop.json`, start at login
//! through the OS's login items (autostart plugin), folders shown with the opener plugin.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use tauri::AppHandle;
use tauri_plugin_autostart::ManagerExt as _;
use tauri_plugin_opener::OpenerExt as _;

use super::settings::{SavedSettings, SettingsError};
use crate::api::desktop::{
    DesktopActionError, DesktopControl, DesktopSettings, DesktopSettingsChange,
};
use crate::config::Config;

pub struct Control {
    /// Set once Tauri is up; the engine starts first and may be asked before that.
    app: OnceLock<AppHandle>,
    /// The config's default for settings the user never changed in the app.
    default_close_to_tray: bool,
    /// What the user changed; a std Mutex held only to read or to save the small file, so
    /// two changes at once are written one after the other.
    saved: Mutex<SavedSettings>,
    /// `<data_dir>/desktop.json`.
    path: PathBuf,
}

impl Control {
    pub fn new(config: &Config) -> Result<Control, SettingsError> {
        let path = config.instances.data_dir.join(super::settings::FILE_NAME);
        Ok(Control {
            app: OnceLock::new(),
            default_close_to_tray: config.desktop.close_to_tray,
            saved: Mutex::new(SavedSettings::load(&path)?),
            path,
        })
    }

    pub fn attach(&self, app: AppHandle) {
        let _ = self.app.set(app);
    }

    pub fn close_to_tray(&self) -> bool {
        self.saved()
            .close_to_tray
            .unwrap_or(self.default_close_to_tray)
    }

    fn saved(&self) -> std::sync::MutexGuard<'_, SavedSettings> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn app(&self) -> Result<&AppHandle, DesktopActionError> {
        self.app.get().ok_or(DesktopActionError::NotReady)
    }
}

impl DesktopControl for Control {
    fn settings(&self) -> Result<DesktopSettings, DesktopActionError> {
        let start_at_login = self
            .app()?
            .autolaunch()
            .is_enabled()
            .map_err(|e| DesktopActionError::Autostart(e.to_string()))?;
        Ok(DesktopSettings {
            close_to_tray: self.close_to_tray(),
            start_at_login,
        })
    }

    fn update(&self, change: DesktopSettingsChange) -> Result<DesktopSettings, DesktopActionError> {
        if let Some(enable) = change.start_at_login {
            let autolaunch = self.app()?.autolaunch();
            let done = if enable {
                autolaunch.enable()
            } else {
                autolaunch.disable()
            };
            done.map_err(|e| DesktopActionError::Autostart(e.to_string()))?;
        }
        if let Some(close_to_tray) = change.close_to_tray {
            let mut saved = self.saved();
            let next = SavedSettings {
                close_to_tray: Some(close_to_tray),
            };
            next.save(&self.path).map_err(|e| match e {
                SettingsError::Read { path, source } | SettingsError::Write { path, source } => {
                    DesktopActionError::Save { path, source }
                }
            })?;
            *saved = next;
        }
        self.settings()
    }

    fn open(&self, path: &Path) -> Result<(), DesktopActionError> {
        let failed = |reason: String| DesktopActionError::Open {
            path: path.to_path_buf(),
            reason,
        };
        // A folder that was never written to yet is still worth showing.
        std::fs::create_dir_all(path).map_err(|e| failed(e.to_string()))?;
        self.app()?
            .opener()
            .open_path(path.to_string_lossy(), None::<&str>)
            .map_err(|e| failed(e.to_string()))
    }
}
