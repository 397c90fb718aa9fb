//! Backend ports: which are free at the OS, and the lowest free one of the configured range.

use std::net::{Ipv4Addr, TcpListener};

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
