//! What one start of an instance runs: the backend's configured command (or, when that is not
//! found, the one Corral installed), the instance's own arguments, and a fresh key for the
//! backend to require from Corral.

use std::path::PathBuf;

use super::options::InstanceOptions;
use super::registry::Registry;
use crate::backends::BackendSecret;
use crate::supervisor::{LaunchSpec, ReadyRequest};

impl Registry {
    /// Where a backend that reads its key from a file (llama-server) finds the key Corral
    /// presents to it.
    pub(super) fn key_file(&self, name: &str) -> PathBuf {
        self.config
            .load()
            .instances
            .run_dir
            .join(format!("{name}.key"))
    }

    /// Program, arguments and environment from the backend's configured command, plus the
    /// instance's own arguments; a fresh secret for the backend is part of each start's spec.
    /// The program is the configured one, searched by the spawn as always, unless only Corral's
    /// own install of the backend is found.
    pub(super) fn launch_spec(&self, name: &str, options: &InstanceOptions) -> LaunchSpec {
        let config = self.config.load_full();
        let command = config.backends.command(options.backend_type());
        let program = match &options.command_override {
            Some(path) => path.clone(),
            None => self.installs().program(options.backend_type(), command),
        };
        // The instance's variables over the configured command's; Corral's own (the backend's
        // key) go over both at the spawn. A user's own vLLM key among them is the one presented.
        let mut env = command.environment.clone();
        env.extend(options.environment.clone());
        let secret =
            options
                .backend
                .secret_handover(BackendSecret::generate(), self.key_file(name), &env);
        let mut args = command.args.clone();
        args.extend(options.backend.launch_args());
        args.extend(secret.args.iter().cloned());
        let port = options.backend.port().unwrap_or_default();
        let lookup = |name: &str| env.get(name).cloned().or_else(|| std::env::var(name).ok());
        if let Some(folder) = options.backend_type().folder_to_create(lookup) {
            // Best effort: without it the backend still serves, only a listing fails.
            if let Err(e) = std::fs::create_dir_all(&folder) {
                tracing::warn!("cannot create {}: {e}", folder.display());
            }
        }
        LaunchSpec {
            program,
            args,
            env: env.into_iter().collect(),
            health_url: format!(
                "http://{}:{port}{}",
                connect_host(options.backend.host()),
                options.backend.health_path()
            ),
            secret: Box::new(secret),
            ready_request: options
                .backend
                .ready_request()
                .map(|(path, body)| ReadyRequest {
                    path: path.to_owned(),
                    body,
                }),
            stop_signal: options.backend.stop_signal(),
        }
    }
}

/// `host:port` where the proxies dial an instance's backend (and where its pooled connections
/// are kept).
pub(super) fn backend_authority(options: &InstanceOptions) -> String {
    let port = options.backend.port().unwrap_or_default();
    format!("{}:{port}", connect_host(options.backend.host()))
}

/// The host to dial for a backend bound to `host`: loopback unless it names a concrete address
/// (a wildcard bind cannot be dialled everywhere, and `localhost` may resolve to IPv6 only).
pub(super) fn connect_host(host: Option<&str>) -> String {
    let host = host.map(str::trim).unwrap_or_default();
    match host {
        "" | "0.0.0.0" | "::" | "[::]" | "localhost" => "127.0.0.1".to_owned(),
        _ if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
        _ => host.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn wildcard_and_missing_hosts_are_dialled_on_loopback() {
        assert_eq!(connect_host(None), "127.0.0.1");
        assert_eq!(connect_host(Some("0.0.0.0")), "127.0.0.1");
        assert_eq!(connect_host(Some("::")), "127.0.0.1");
        assert_eq!(connect_host(Some("192.168.1.5")), "192.168.1.5");
        assert_eq!(connect_host(Some("::1")), "[::1]");
    }
}
