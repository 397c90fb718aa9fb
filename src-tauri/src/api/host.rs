//! The Host-header check against DNS rebinding: while Corral listens on loopback, a request must
//! name it as `localhost`, `127.0.0.1`, `[::1]` or one of `server.allowed_hosts`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::Config;

pub async fn check_host(
    State(config): State<Arc<Config>>,
    request: Request,
    next: Next,
) -> Response {
    if !config.server.host.is_loopback() {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().host().map(str::to_owned));
    match host {
        // Browsers always send Host, so a request without one is no rebinding attack.
        None => next.run(request).await,
        Some(host) if is_allowed(&config, &host) => next.run(request).await,
        Some(host) => ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "the Host header '{host}' is not accepted while Corral listens on {}: use localhost or add the name to server.allowed_hosts",
                config.server.host
            ),
        )
        .into_response(),
    }
}

fn is_allowed(config: &Config, host: &str) -> bool {
    let name = host_name(host).to_ascii_lowercase();
    let listen = config.server.host.to_string();
    ["localhost", "127.0.0.1", "::1", listen.as_str()].contains(&name.as_str())
        || config
            .server
            .allowed_hosts
            .iter()
            .any(|allowed| allowed == "*" || host_name(allowed).eq_ignore_ascii_case(&name))
}

/// `host[:port]` or `[v6][:port]` without the port and brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::host_name;

    #[test]
    fn ports_and_brackets_are_ignored() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("::1"), "::1");
        assert_eq!(host_name("example.com"), "example.com");
    }
}
