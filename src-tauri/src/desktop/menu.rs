//! The tray menu as data: one line per instance with its status dot, the menu's actions and
//! their ids, and what changed between two looks at the registry (to rebuild the menu and to
//! notify failures). The Tauri side (`tray.rs`) only turns this into native menu items.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::instances::{InstanceView, Registry};
use crate::supervisor::{Health, Status};

/// What the tray shows of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLine {
    pub name: String,
    pub status: Status,
    pub health: Option<Health>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl From<&InstanceView> for InstanceLine {
    fn from(view: &InstanceView) -> Self {
        Self {
            name: view.name.clone(),
            status: view.status,
            health: view.health,
            error: view.error.clone(),
        }
    }
}

impl InstanceLine {
    /// `● name — ready`: a filled dot when it serves, half while it changes, a cross when it
    /// failed, an empty one when stopped.
    pub fn label(&self) -> String {
        let (dot, word) = match (self.status, self.health) {
            (Status::Failed, _) => ("✕", "failed"),
            (Status::Stopped, _) => ("○", "stopped"),
            (Status::Running, Some(Health::Starting)) => ("◐", "starting"),
            (Status::Running, Some(Health::Restarting)) => ("◐", "restarting"),
            (Status::Running, Some(Health::Stopping)) => ("◐", "stopping"),
            (Status::Running, Some(Health::Unhealthy)) => ("●", "unhealthy"),
            (Status::Running, _) => ("●", "running"),
        };
        format!("{dot} {} — {word}", self.name)
    }

    pub fn can_start(&self) -> bool {
        self.status != Status::Running
    }

    pub fn can_stop(&self) -> bool {
        self.status == Status::Running
    }
}

/// Everything the tray menu can do; the menu item ids are these, spelled by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Stop(String),
    OpenDashboard,
    CopyBaseUrl,
    PauseAll,
    ResumeAll,
    Quit,
}

impl Action {
    pub fn id(&self) -> String {
        match self {
            Action::Start(name) => format!("start:{name}"),
            Action::Stop(name) => format!("stop:{name}"),
            Action::OpenDashboard => "open-dashboard".into(),
            Action::CopyBaseUrl => "copy-base-url".into(),
            Action::PauseAll => "pause-all".into(),
            Action::ResumeAll => "resume-all".into(),
            Action::Quit => "quit".into(),
        }
    }

    pub fn parse(id: &str) -> Option<Action> {
        if let Some(name) = id.strip_prefix("start:") {
            return Some(Action::Start(name.to_owned()));
        }
        if let Some(name) = id.strip_prefix("stop:") {
            return Some(Action::Stop(name.to_owned()));
        }
        Some(match id {
            "open-dashboard" => Action::OpenDashboard,
            "copy-base-url" => Action::CopyBaseUrl,
            "pause-all" => Action::PauseAll,
            "resume-all" => Action::ResumeAll,
            "quit" => Action::Quit,
            _ => return None,
        })
    }
}

/// A failure worth a notification: an instance that was not failed before and is now (a crash
/// without auto-restart, or one that used up its restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub message: String,
}

pub fn new_failures(before: &[InstanceLine], after: &[InstanceLine]) -> Vec<Failure> {
    after
        .iter()
        .filter(|line| line.status == Status::Failed)
        .filter(|line| {
            !before
                .iter()
                .any(|old| old.name == line.name && old.status == Status::Failed)
        })
        .map(|line| Failure {
            name: line.name.clone(),
            message: line
                .error
                .clone()
                .unwrap_or_else(|| "it stopped and will not be restarted".into()),
        })
        .collect()
}

/// "Pause all": stops every running instance and answers their names, for `resume`. Failures
/// to stop are logged; the instance stays listed so that resume tries it again.
pub async fn pause_all(registry: &Registry) -> Vec<String> {
    let running: Vec<String> = lines(registry)
        .into_iter()
        .filter(InstanceLine::can_stop)
        .map(|line| line.name)
        .collect();
    let stops = running.iter().map(|name| registry.stop(name));
    for (name, stopped) in running
        .iter()
        .zip(futures_util::future::join_all(stops).await)
    {
        if let Err(e) = stopped {
            tracing::warn!("cannot pause {name}: {e}");
        }
    }
    running
}

/// "Resume all": starts the paused instances again; answers those that did not start, with why
/// (one deleted meanwhile is not an error).
pub async fn resume(registry: &Registry, paused: &[String]) -> Vec<(String, String)> {
    let starts = paused.iter().map(|name| registry.start(name));
    paused
        .iter()
        .zip(futures_util::future::join_all(starts).await)
        .filter_map(|(name, started)| match started {
            Ok(_) | Err(crate::instances::InstanceError::NotFound(_)) => None,
            Err(e) => Some((name.clone(), e.to_string())),
        })
        .collect()
}

/// The instances as the tray shows them, sorted by name.
pub fn lines(registry: &Registry) -> Vec<InstanceLine> {
    registry.list().iter().map(InstanceLine::from).collect()
}

/// Calls `on_change(before, after)` whenever what the tray shows changes (the registry's change
/// feed says when to look); the first call has `before` equal to `after` (what was failed before
/// the app started is no news). Ends when `on_change` answers false or the registry is gone.
pub async fn watch(
    registry: Arc<Registry>,
    mut on_change: impl FnMut(&[InstanceLine], &[InstanceLine]) -> bool,
) {
    // Subscribed before the first look, so that no change falls in between.
    let mut changes = registry.subscribe();
    let mut shown = lines(&registry);
    if !on_change(&shown, &shown) {
        return;
    }
    loop {
        match changes.recv().await {
            // Counters change often and are not shown: only a different menu is news. After
            // a lag the full list below catches up all the same.
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        let now = lines(&registry);
        if now != shown {
            if !on_change(&shown, &now) {
                return;
            }
            shown = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, status: Status, health: Option<Health>) -> InstanceLine {
        InstanceLine {
            name: name.into(),
            status,
            health,
            error: None,
        }
    }

    #[test]
    fn each_instance_shows_a_dot_for_its_status() {
        assert_eq!(
            line("a", Status::Running, Some(Health::Ready)).label(),
            "● a — running"
        );
        assert_eq!(
            line("a", Status::Running, Some(Health::Starting)).label(),
            "◐ a — starting"
        );
        assert_eq!(line("a", Status::Stopped, None).label(), "○ a — stopped");
        assert_eq!(line("a", Status::Failed, None).label(), "✕ a — failed");
    }

    #[test]
    fn start_is_offered_for_stopped_and_failed_stop_for_running() {
        assert!(line("a", Status::Stopped, None).can_start());
        assert!(line("a", Status::Failed, None).can_start());
        assert!(!line("a", Status::Stopped, None).can_stop());
        let running = line("a", Status::Running, Some(Health::Ready));
        assert!(running.can_stop() && !running.can_start());
    }

    #[test]
    fn menu_ids_name_their_action_and_instance() {
        for action in [
            Action::Start("my-model".into()),
            Action::Stop("a:b".into()),
            Action::OpenDashboard,
            Action::CopyBaseUrl,
            Action::PauseAll,
            Action::ResumeAll,
            Action::Quit,
        ] {
            assert_eq!(Action::parse(&action.id()), Some(action));
        }
        assert_eq!(Action::parse("something-else"), None);
    }

    #[test]
    fn a_failure_is_notified_once_when_it_happens() {
        let running = vec![line("a", Status::Running, Some(Health::Ready))];
        let mut failed = line("a", Status::Failed, None);
        failed.error = Some("exited with code 1 after 3 restarts".into());
        let failed = vec![failed];
        assert_eq!(
            new_failures(&running, &failed),
            vec![Failure {
                name: "a".into(),
                message: "exited with code 1 after 3 restarts".into()
            }]
        );
        assert!(new_failures(&failed, &failed).is_empty(), "no repeat");
        assert!(new_failures(&failed, &running).is_empty());
    }
}
