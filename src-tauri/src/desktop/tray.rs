//! The tray (menu-bar) icon: the instances with a status dot and start/stop each, open the
//! dashboard, copy the OpenAI base URL, pause/resume all, quit. Rebuilt whenever what it shows
//! changes (`menu::watch`); failures also raise a notification.

use std::sync::{Arc, Mutex, PoisonError};

use tauri::menu::{IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Manager};
use tauri_plugin_clipboard_manager::ClipboardExt as _;
use tauri_plugin_notification::NotificationExt as _;

use super::menu::{self, Action, Failure, InstanceLine};
use crate::instances::Registry;

/// What the menu's actions need, kept in Tauri's state.
struct Tray {
    icon: TrayIcon,
    registry: Arc<Registry>,
    /// The engine's address, `http://127.0.0.1:<port>`.
    base: String,
    /// Instances stopped by "Pause all", started again by "Resume all". A std Mutex: read and
    /// swapped only, never held across an await.
    paused: Mutex<Vec<String>>,
}

impl Tray {
    fn paused(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub fn install(app: &AppHandle, registry: Arc<Registry>, base: String) -> tauri::Result<()> {
    let lines = menu::lines(&registry);
    let mut builder = TrayIconBuilder::with_id("corral")
        .tooltip("Corral")
        .menu(&build_menu(app, &base, &lines, &[])?)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| {
            if let Some(action) = Action::parse(event.id().as_ref()) {
                act(app, action);
            }
        });
    if let Some(icon) = app.default_window_icon() {
        builder = builder.icon(icon.clone());
    }
    let icon = builder.build(app)?;
    app.manage(Arc::new(Tray {
        icon,
        registry: registry.clone(),
        base,
        paused: Mutex::new(Vec::new()),
    }));
    let app = app.clone();
    tauri::async_runtime::spawn(menu::watch(registry, move |before, after| {
        for failure in menu::new_failures(before, after) {
            notify_failure(&app, &failure);
        }
        refresh(&app, after);
        true
    }));
    Ok(())
}

fn build_menu(
    app: &AppHandle,
    base: &str,
    lines: &[InstanceLine],
    paused: &[String],
) -> tauri::Result<Menu<tauri::Wry>> {
    let no_accel = None::<&str>;
    let menu = Menu::new(app)?;
    menu.append(&MenuItem::new(
        app,
        format!("Corral on {base}"),
        false,
        no_accel,
    )?)?;
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    if lines.is_empty() {
        menu.append(&MenuItem::new(app, "No instances yet", false, no_accel)?)?;
    }
    for line in lines {
        let start = MenuItem::with_id(
            app,
            Action::Start(line.name.clone()).id(),
            "Start",
            line.can_start(),
            no_accel,
        )?;
        let stop = MenuItem::with_id(
            app,
            Action::Stop(line.name.clone()).id(),
            "Stop",
            line.can_stop(),
            no_accel,
        )?;
        let items: [&dyn IsMenuItem<tauri::Wry>; 2] = [&start, &stop];
        menu.append(&Submenu::with_items(app, line.label(), true, &items)?)?;
    }
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    let any_running = lines.iter().any(InstanceLine::can_stop);
    let pause = if paused.is_empty() {
        MenuItem::with_id(
            app,
            Action::PauseAll.id(),
            "Pause all",
            any_running,
            no_accel,
        )?
    } else {
        MenuItem::with_id(
            app,
            Action::ResumeAll.id(),
            format!("Resume all ({})", paused.len()),
            true,
            no_accel,
        )?
    };
    for item in [
        MenuItem::with_id(
            app,
            Action::OpenDashboard.id(),
            "Open dashboard",
            true,
            no_accel,
        )?,
        MenuItem::with_id(
            app,
            Action::CopyBaseUrl.id(),
            "Copy OpenAI base URL",
            true,
            no_accel,
        )?,
        pause,
    ] {
        menu.append(&item)?;
    }
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    menu.append(&MenuItem::with_id(
        app,
        Action::Quit.id(),
        "Quit Corral",
        true,
        no_accel,
    )?)?;
    Ok(menu)
}

/// Replaces the tray's menu with one showing `lines`, on the main thread, without waiting there.
/// Menus belong to the main thread: built from a worker, every item would block that worker until
/// the main thread ran it. While the app quits, the main thread is itself blocked on the engine's
/// shutdown, whose instance stops change the menu: a worker waiting for the main thread then
/// never comes back, and the quit could hang with it.
fn refresh(app: &AppHandle, lines: &[InstanceLine]) {
    let main_app = app.clone();
    let lines = lines.to_vec();
    if let Err(e) = app.run_on_main_thread(move || rebuild(&main_app, &lines)) {
        tracing::debug!("the tray menu was not updated: {e}");
    }
}

/// `refresh` on the main thread.
fn rebuild(app: &AppHandle, lines: &[InstanceLine]) {
    let Some(tray) = app.try_state::<Arc<Tray>>() else {
        return;
    };
    let paused = tray.paused().clone();
    let built =
        build_menu(app, &tray.base, lines, &paused).and_then(|menu| tray.icon.set_menu(Some(menu)));
    if let Err(e) = built {
        tracing::warn!("cannot update the tray menu: {e}");
    }
}

fn act(app: &AppHandle, action: Action) {
    let Some(tray) = app.try_state::<Arc<Tray>>() else {
        return;
    };
    let tray = Arc::clone(&tray);
    match action {
        Action::Start(name) => {
            let app = app.clone();
            tauri::async_runtime::spawn(async move {
                if let Err(e) = tray.registry.start(&name).await {
                    notify(&app, &format!("{name} did not start"), &e.to_string());
                }
            });
        }
        Action::Stop(name) => {
            tauri::async_runtime::spawn(async move {
                if let Err(e) = tray.registry.stop(&name).await {
                    tracing::warn!("cannot stop {name}: {e}");
                }
            });
        }
        Action::OpenDashboard => super::app::show_window(app),
        Action::CopyBaseUrl => {
            if let Err(e) = app.clipboard().write_text(format!("{}/v1", tray.base)) {
                tracing::warn!("cannot copy to the clipboard: {e}");
            }
        }
        Action::PauseAll => {
            let app = app.clone();
            tauri::async_runtime::spawn(async move {
                let paused = menu::pause_all(&tray.registry).await;
                *tray.paused() = paused;
                refresh(&app, &menu::lines(&tray.registry));
            });
        }
        Action::ResumeAll => {
            let paused = std::mem::take(&mut *tray.paused());
            let app = app.clone();
            tauri::async_runtime::spawn(async move {
                refresh(&app, &menu::lines(&tray.registry));
                for (name, why) in menu::resume(&tray.registry, &paused).await {
                    notify(&app, &format!("{name} did not resume"), &why);
                }
            });
        }
        Action::Quit => app.exit(0),
    }
}

fn notify_failure(app: &AppHandle, failure: &Failure) {
    notify(app, &format!("{} failed", failure.name), &failure.message);
}

/// A native notification; where the system has none (no notification daemon), only a log line.
fn notify(app: &AppHandle, title: &str, body: &str) {
    tracing::warn!("{title}: {body}");
    if let Err(e) = app.notification().builder().title(title).body(body).show() {
        tracing::debug!("no notification shown: {e}");
    }
}
