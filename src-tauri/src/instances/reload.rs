//! Live reload of the configuration (SIGHUP, or a change to the config file): the settings the
//! registry reads as it goes (backends' commands, instance defaults and limits, the scheduler)
//! take effect at once; the ones the engine fixed when it started (the listen address, auth,
//! the folders, metrics) are reported as needing a restart and keep their running values.
//!
//! An instance keeps running untouched unless what its process was started with changed: its
//! backend's command, arguments or environment. Such an instance is restarted once, after the
//! requests it is answering have ended: new requests wait for the new process meanwhile, as
//! they do for any start.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::instance::{lock, Instance};
use super::options::InstanceOptions;
use super::registry::Registry;
use crate::config::Config;

/// How long a reload waits for an instance's requests before restarting it anyway: a stream
/// may run for minutes, but a changed backend command should not wait forever.
const RELOAD_DRAIN_LIMIT: Duration = Duration::from_secs(10 * 60);

/// Sections the engine reads once, at its start.
const FIXED_SECTIONS: [&str; 6] = ["server", "auth", "metrics", "activity", "desktop", "models"];

/// Instance settings the supervisor and the port table took at the start.
const FIXED_INSTANCE_SETTINGS: [&str; 9] = [
    "port_range",
    "data_dir",
    "configs_dir",
    "logs_dir",
    "run_dir",
    "auto_create_dirs",
    "stop_grace",
    "log_max_bytes",
    "log_keep_files",
];

/// What a reload did: the `config` event of `/api/v1/events`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ConfigReload {
    /// Whether the new configuration is in force; when not, `error` says why and the running
    /// configuration stays as it was.
    pub applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings that changed and took effect (`scheduler`, `backends`,
    /// `instances.max_running_instances`).
    pub changed: Vec<String>,
    /// Settings that changed but take effect at the next start of the engine.
    pub needs_restart: Vec<String>,
    /// Instances restarting, once their requests end, because their backend's command,
    /// arguments or environment changed.
    pub restarting: Vec<String>,
    /// Unix seconds.
    pub at: i64,
}

/// The JSON of each setting of `section`, by name.
fn settings(section: &Value) -> impl Iterator<Item = (&String, &Value)> {
    section.as_object().into_iter().flatten()
}

/// `section.setting` for every setting that differs between `old` and `new` (`section` when a
/// section is not an object).
fn differences(old: &Value, new: &Value) -> Vec<String> {
    let mut changed = Vec::new();
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return changed;
    };
    for (section, new_section) in new {
        let old_section = old.get(section).unwrap_or(&Value::Null);
        if old_section == new_section {
            continue;
        }
        if !(old_section.is_object() && new_section.is_object()) {
            changed.push(section.clone());
            continue;
        }
        for (name, value) in settings(new_section) {
            if old_section.get(name) != Some(value) {
                changed.push(format!("{section}.{name}"));
            }
        }
        for (name, _) in settings(old_section) {
            if new_section.get(name).is_none() {
                changed.push(format!("{section}.{name}"));
            }
        }
    }
    changed
}

fn is_fixed(setting: &str) -> bool {
    let (section, name) = setting.split_once('.').unwrap_or((setting, ""));
    FIXED_SECTIONS.contains(&section)
        || (section == "instances" && FIXED_INSTANCE_SETTINGS.contains(&name))
}

/// `new`, with what cannot change while the engine runs taken from `old`.
fn applicable(old: &Config, mut new: Config) -> Config {
    new.server = old.server.clone();
    new.auth = old.auth.clone();
    new.metrics = old.metrics.clone();
    new.activity = old.activity.clone();
    new.desktop = old.desktop.clone();
    new.models = old.models.clone();
    let (o, n) = (&old.instances, &mut new.instances);
    n.port_range = o.port_range;
    n.data_dir = o.data_dir.clone();
    n.configs_dir = o.configs_dir.clone();
    n.logs_dir = o.logs_dir.clone();
    n.run_dir = o.run_dir.clone();
    n.auto_create_dirs = o.auto_create_dirs;
    n.stop_grace = o.stop_grace;
    n.log_max_bytes = o.log_max_bytes;
    n.log_keep_files = o.log_keep_files;
    new
}

/// Whether the instance's process would be started differently under `new`: the backend's
/// program (unless the instance overrides it), arguments or environment.
fn launch_changed(old: &Config, new: &Config, options: &InstanceOptions) -> bool {
    let backend = options.backend_type();
    let (old, new) = (old.backends.command(backend), new.backends.command(backend));
    (options.command_override.is_none() && old.command != new.command)
        || old.args != new.args
        || old.environment != new.environment
}

impl Registry {
    /// Applies `new` (already loaded and checked) where it can change live, restarts the
    /// instances whose launch changed once their requests end, and announces it all.
    pub fn reload(self: &Arc<Self>, new: Config) -> ConfigReload {
        let old = self.config.load_full();
        let (old_json, new_json) = match (serde_json::to_value(&*old), serde_json::to_value(&new)) {
            (Ok(old), Ok(new)) => (old, new),
            (Err(e), _) | (_, Err(e)) => {
                return self.reload_refused(format!("cannot compare the configurations: {e}"))
            }
        };
        let (needs_restart, changed): (Vec<String>, Vec<String>) =
            differences(&old_json, &new_json)
                .into_iter()
                .partition(|setting| is_fixed(setting));
        let new = Arc::new(applicable(&old, new));
        let restarting: Vec<Arc<Instance>> = lock(&self.table)
            .all()
            .into_iter()
            .filter(|instance| instance.supervisor.state().state.is_active())
            .filter(|instance| launch_changed(&old, &new, &instance.options()))
            .collect();
        self.config.store(Arc::clone(&new));
        // Limits may have grown: requests waiting for room look again.
        self.room.notify_waiters();
        let report = ConfigReload {
            applied: true,
            error: None,
            changed,
            needs_restart,
            restarting: restarting.iter().map(|i| i.name.clone()).collect(),
            at: chrono::Utc::now().timestamp(),
        };
        tracing::info!(
            changed = ?report.changed,
            needs_restart = ?report.needs_restart,
            restarting = ?report.restarting,
            "configuration reloaded"
        );
        for instance in restarting {
            let registry = Arc::clone(self);
            tokio::spawn(async move { registry.restart_after_drain(&instance.name).await });
        }
        self.feed.config_reload(report.clone());
        report
    }

    /// A new configuration that did not load: said in the log and on the feed; nothing changes.
    pub fn reload_refused(&self, error: String) -> ConfigReload {
        tracing::error!("configuration not reloaded, the running one stays: {error}");
        let report = ConfigReload {
            applied: false,
            error: Some(error),
            changed: Vec::new(),
            needs_restart: Vec::new(),
            restarting: Vec::new(),
            at: chrono::Utc::now().timestamp(),
        };
        self.feed.config_reload(report.clone());
        report
    }

    /// Restarts the instance once its requests have ended; new requests wait meanwhile (the
    /// instance drains), then go to the new process.
    async fn restart_after_drain(&self, name: &str) {
        let Ok((instance, _op)) = self.lock_instance(name).await else {
            return;
        };
        // Stopped or deleted while the reload waited for the lock: nothing to restart.
        if !instance.supervisor.state().state.is_active() {
            return;
        }
        instance.usage.set_draining(true);
        if !instance.usage.drain(RELOAD_DRAIN_LIMIT).await {
            tracing::warn!(
                "instance '{name}' still has {} requests in flight after {} s; restarting it \
                 for the new configuration anyway",
                instance.usage.in_flight(),
                RELOAD_DRAIN_LIMIT.as_secs()
            );
        }
        tracing::info!("instance '{name}' restarts for the new configuration");
        let stopped = self.stop_locked(&instance).await;
        instance.usage.set_draining(false);
        if let Err(e) = stopped {
            tracing::warn!("{e}");
            return;
        }
        if let Err(e) = self.start_locked(&instance).await {
            tracing::warn!("instance '{name}' did not start again after the reload: {e}");
        }
        if let Err(e) = instance.persist().await {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_named_by_setting_and_split_into_live_and_fixed() {
        let old = json!({
            "server": {"port": 8080, "host": "127.0.0.1"},
            "instances": {"max_running_instances": null, "log_max_bytes": 1, "data_dir": "/a"},
            "backends": {"llama_cpp": {"command": "llama-server"}},
        });
        let new = json!({
            "server": {"port": 9090, "host": "127.0.0.1"},
            "instances": {"max_running_instances": 2, "log_max_bytes": 1, "data_dir": "/b"},
            "backends": {"llama_cpp": {"command": "/opt/llama-server"}},
        });
        let changed = differences(&old, &new);
        assert_eq!(
            changed,
            [
                "server.port",
                "instances.max_running_instances",
                "instances.data_dir",
                "backends.llama_cpp"
            ]
        );
        let fixed: Vec<&String> = changed.iter().filter(|s| is_fixed(s)).collect();
        assert_eq!(fixed, ["server.port", "instances.data_dir"]);
    }

    #[test]
    fn what_cannot_change_live_keeps_its_running_value() {
        let old = Config::with_data_dir("/data/old".into());
        let mut new = Config::with_data_dir("/data/new".into());
        new.server.port = 1;
        new.auth.management_keys = vec!["sk-new".into()];
        new.instances.max_running_instances = Some(3);
        new.scheduler.max_queue = 7;
        let applied = applicable(&old, new);
        assert_eq!(applied.server.port, old.server.port);
        assert!(applied.auth.management_keys.is_empty());
        assert_eq!(applied.instances.data_dir, old.instances.data_dir);
        assert_eq!(applied.instances.logs_dir, old.instances.logs_dir);
        assert_eq!(applied.instances.max_running_instances, Some(3));
        assert_eq!(applied.scheduler.max_queue, 7);
    }
}
