//! Readiness: polls the backend's health URL until it answers 200, then keeps checking it now and
//! then so a backend that stops answering shows as `unhealthy`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ReadyRequest;

/// Polls while starting come this often. Requests that started the instance on demand wait up
/// to this long past the moment it is ready, while a probe that finds nothing listening yet costs
/// microseconds: polling a two-minute model load at 100 Hz takes well under a second of CPU.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Period of the health check once the backend has been ready.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(2);
/// One probe gives up after this; a backend busy generating may answer slowly.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The readiness request waits for the model to load; past this it is sent again.
const READY_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error answer the failed start quotes.
const ERROR_BODY_BYTES: usize = 512;

/// What the backend answered, sent to the supervisor task (the only writer of the state).
#[derive(Debug)]
pub(super) struct Probe {
    /// Which spawn the probe belongs to; answers about an earlier process are dropped.
    pub(super) generation: u64,
    pub(super) answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    Healthy,
    Unhealthy,
    /// The backend answered the readiness request with an error: it runs but cannot serve.
    Unable(String),
}

/// Runs for the life of one process: reports readiness (or that the backend cannot answer),
/// then every change of health.
pub(super) async fn watch_health(
    url: String,
    ready_request: Option<ReadyRequest>,
    generation: u64,
    report: mpsc::UnboundedSender<Probe>,
) {
    let Some(target) = Target::parse(&url) else {
        tracing::warn!(%url, "the health URL is not a plain http:// URL; the instance will never be ready");
        return;
    };
    let send = |answer| report.send(Probe { generation, answer }).is_ok();
    match ready_request {
        None => {
            while !target.is_healthy().await {
                tokio::time::sleep(POLL_EVERY).await;
            }
        }
        Some(request) => loop {
            match target.post(&request).await {
                Some(Ok(())) => break,
                Some(Err(reason)) => {
                    send(Answer::Unable(reason));
                    return;
                }
                // Nothing listening yet (or no answer in time): try again.
                None => tokio::time::sleep(POLL_EVERY).await,
            }
        },
    }
    let mut healthy = true;
    loop {
        if !send(if healthy {
            Answer::Healthy
        } else {
            Answer::Unhealthy
        }) {
            return;
        }
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            if target.is_healthy().await != healthy {
                healthy = !healthy;
                break;
            }
        }
    }
}

/// The health check of `url`, for tests that look at a backend the way the supervisor does.
#[cfg(test)]
pub(super) fn target(url: &str) -> Option<Target> {
    Target::parse(url)
}

/// Where to send the health GET.
pub(super) struct Target {
    /// `host:port` (or `[v6]:port`), as given; also the Host header.
    authority: String,
    /// Path and query, `/` when the URL has none.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return None;
        }
        Some(Self {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// One GET; true only for a `200` status line. A minimal HTTP/1.1 request is enough here and
    /// needs no connection pool: the backend answers on 127.0.0.1.
    pub(super) async fn is_healthy(&self) -> bool {
        let probe = async {
            let mut stream = TcpStream::connect(&self.authority).await?;
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: corral\r\n\r\n",
                self.path, self.authority
            );
            stream.write_all(request.as_bytes()).await?;
            let mut head = Vec::with_capacity(64);
            let mut byte = [0u8; 256];
            while !head.contains(&b'\n') && head.len() < 1024 {
                let read = stream.read(&mut byte).await?;
                if read == 0 {
                    break;
                }
                head.extend_from_slice(&byte[..read]);
            }
            Ok::<bool, std::io::Error>(status_is_200(&head))
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Ok(true))
        )
    }

    /// POSTs the readiness request: `None` when nothing answered (not listening yet, or no
    /// answer within [`READY_REQUEST_TIMEOUT`]), `Some(Ok)` on 200, `Some(Err(why))` on any
    /// other status.
    async fn post(&self, request: &ReadyRequest) -> Option<Result<(), String>> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.authority).await?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: corral\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                request.path,
                self.authority,
                request.body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(request.body.as_bytes()).await?;
            // `Connection: close`: the answer ends where the stream does; it is short, and only
            // its first bytes are kept.
            let mut answer = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let read = stream.read(&mut chunk).await?;
                if read == 0 {
                    break;
                }
                if answer.len() < 4096 {
                    answer.extend_from_slice(&chunk[..read]);
                }
            }
            Ok::<Vec<u8>, std::io::Error>(answer)
        };
        let answer = match tokio::time::timeout(READY_REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answer)) if !answer.is_empty() => answer,
            _ => return None,
        };
        if status_is_200(&answer) {
            return Some(Ok(()));
        }
        Some(Err(describe_error_answer(&request.path, &answer)))
    }
}

/// "HTTP 404 to POST /v1/completions: {"error": "generation thread died"}".
fn describe_error_answer(path: &str, answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("?")
        .to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .trim();
    let mut body: String = body.chars().take(ERROR_BODY_BYTES).collect();
    if body.is_empty() {
        body = "(empty body)".to_owned();
    }
    format!("HTTP {status} to POST {path}: {body}")
}

fn status_is_200(head: &[u8]) -> bool {
    let line = head.split(|&byte| byte == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&byte| byte == b' ');
    matches!((words.next(), words.next()), (Some(version), Some(b"200")) if version.starts_with(b"HTTP/"))
}

#[cfg(test)]
// Tests may unwrap: a panic is how they fail.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_status_line_counts_as_healthy() {
        assert!(status_is_200(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_200(b"HTTP/1.0 200\r\n"));
        assert!(!status_is_200(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_is_200(b"HTTP/1.1 2000 odd\r\n"));
        assert!(!status_is_200(b""));
    }

    #[test]
    fn health_urls_split_into_address_and_path() {
        let target = Target::parse("http://127.0.0.1:8081/health").unwrap();
        assert_eq!(
            (target.authority.as_str(), target.path.as_str()),
            ("127.0.0.1:8081", "/health")
        );
        let bare = Target::parse("http://localhost:9").unwrap();
        assert_eq!(bare.path, "/");
        assert!(Target::parse("https://x:1/health").is_none());
    }
}
