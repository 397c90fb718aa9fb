//! The desktop app: a Tauri window, tray menu and OS integrations over the engine running in this
//! process (feature `desktop`). The parts that need no window system (the tray's menu model, the
//! app's settings file, the login shell's PATH, the port choice) build and are tested
//! in the headless engine too.

pub mod login_path;
pub mod menu;
pub mod settings;

#[cfg(feature = "desktop")]
mod app;
#[cfg(feature = "desktop")]
mod control;
#[cfg(feature = "desktop")]
mod tray;

#[cfg(feature = "desktop")]
pub use app::{display_available, run, DesktopError};

use std::net::{IpAddr, SocketAddr, TcpListener};

/// How many ports after the configured one the app tries before giving up.
const PORT_TRIES: u16 = 20;

/// The configured port if nothing listens there, else the next free one (a second app or a
/// `corral serve` may hold the default). Port 0 stays 0: the system picks one.
pub fn first_free_port(host: IpAddr, port: u16) -> Option<u16> {
    if port == 0 {
        return Some(0);
    }
    (port..=port.saturating_add(PORT_TRIES))
        .find(|&candidate| TcpListener::bind(SocketAddr::new(host, candidate)).is_ok())
}

/// Where the window reaches the engine: loopback when it listens on every address.
pub fn local_base(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// What stays as it is in the key's fragment: the URL-unreserved characters, which every key
/// Corral generates is made of; anything else is %-escaped for the UI's `decodeURIComponent`.
const FRAGMENT_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The dashboard's address, carrying the management key in the fragment: the page reads it
/// and drops it from the address bar, and fragments never reach a server or a log.
pub fn dashboard_url(base: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => format!(
            "{base}/#key={}",
            percent_encoding::utf8_percent_encode(key, FRAGMENT_KEEP)
        ),
        None => format!("{base}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_skipped_for_the_next_free_one() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let taken = TcpListener::bind((loopback, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let chosen = first_free_port(loopback, port).expect("a free port nearby");
        assert_ne!(chosen, port);
        assert!(chosen > port && chosen <= port + PORT_TRIES);
        TcpListener::bind((loopback, chosen)).expect("the chosen port is free");
    }

    #[test]
    fn a_free_port_is_kept() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let port = TcpListener::bind((loopback, 0))
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        assert_eq!(first_free_port(loopback, port), Some(port));
    }

    #[test]
    fn the_window_carries_the_key_in_the_fragment_encoded() {
        assert_eq!(
            dashboard_url("http://127.0.0.1:8080", Some("sk-management-ab12")),
            "http://127.0.0.1:8080/#key=sk-management-ab12"
        );
        assert_eq!(
            dashboard_url("http://127.0.0.1:8080", Some("a&b=c d+")),
            "http://127.0.0.1:8080/#key=a%26b%3Dc%20d%2B"
        );
        assert_eq!(
            dashboard_url("http://127.0.0.1:8080", None),
            "http://127.0.0.1:8080/"
        );
    }

    #[test]
    fn an_engine_on_every_address_is_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9000".parse().expect("addr");
        assert_eq!(local_base(any), "http://127.0.0.1:9000");
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(local_base(local), "http://127.0.0.1:8080");
    }
}
