//! Backend ports: which are free at the OS, the lowest free one of the configured range, and
//! which port an instance gets when it is created, changed, or finds its port taken.

use std::net::{Ipv4Addr, TcpListener};

use super::catalogue::Catalogue;
use super::instance::{lock, Instance};
use super::registry::Registry;
use super::InstanceError;

/// Whether a backend could listen on `port`: binding 127.0.0.1 succeeds right now. A listener
/// on any address (0.0.0.0 included) makes this bind fail. std sets SO_REUSEADDR on Unix, so a
/// port our own just-stopped backend left in TIME_WAIT still counts as free.
pub fn is_free_at_os(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The lowest port of `range` (inclusive) that no instance reserved and nothing listens on.
pub fn lowest_free(range: (u16, u16), reserved: impl Fn(u16) -> bool) -> Option<u16> {
    let (first, last) = range;
    (first..=last).find(|&port| port != 0 && !reserved(port) && is_free_at_os(port))
}

impl Registry {
    /// The port `name` will use: the requested one if no other instance owns it and (unless it
    /// is already `current`) nothing listens on it; else `current`; else the lowest free port of
    /// the range.
    pub(super) fn assign_port(
        &self,
        table: &Catalogue,
        name: &str,
        requested: Option<u16>,
        current: Option<u16>,
    ) -> Result<u16, InstanceError> {
        match (requested, current) {
            (Some(port), _) => {
                if let Some(owner) = table.port_owner(port).filter(|owner| *owner != name) {
                    return Err(InstanceError::PortTaken {
                        port,
                        owner: owner.to_owned(),
                    });
                }
                if Some(port) != current && !is_free_at_os(port) {
                    return Err(InstanceError::PortInUse(port));
                }
                Ok(port)
            }
            (None, Some(port)) => Ok(port),
            (None, None) => table.free_port(self.config.load().instances.port_range),
        }
    }

    /// Moves `instance` from `busy`, a port Corral chose for it that another program took, to
    /// the lowest free port of the range.
    pub(super) fn move_port(&self, instance: &Instance, busy: u16) -> Result<(), InstanceError> {
        let port = {
            let mut table = lock(&self.table);
            // `busy` is still this instance's in the table, so it is not picked again.
            let port = table.free_port(self.config.load().instances.port_range)?;
            table.release_port(busy, &instance.name);
            table.reserve_port(port, &instance.name);
            port
        };
        instance.set_port(port);
        tracing::info!(
            "instance '{}': port {busy} was taken by another program, using {port}",
            instance.name
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_not_free() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!is_free_at_os(port));
        assert_eq!(lowest_free((port, port), |_| false), None);
        drop(listener);
        assert!(is_free_at_os(port));
        assert_eq!(lowest_free((port, port), |_| false), Some(port));
        assert_eq!(lowest_free((port, port), |p| p == port), None);
    }
}
