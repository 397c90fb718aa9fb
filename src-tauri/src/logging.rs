//! The engine's log: lines are formatted where they happen and written by a thread of their own,
//! in batches. Every routed request logs a line, and a write per line to a terminal or a pipe
//! cost the request path a system call each (and could stall it behind a slow reader).

use std::borrow::Cow;
use std::io::Write;
use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Lines the writer may fall behind by.
const BACKLOG_LINES: usize = 8 * 1024;

/// The writer thread's guard: dropping it writes out what is left.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Sends the log to `out` (`RUST_LOG` filters it; by default `info`, with hyper's chatter
/// left out). `ansi`: colour codes, for a terminal only.
pub fn init(out: impl Write + Send + 'static, ansi: bool) {
    // Never drop lines: when the writer falls this far behind, loggers wait for it. The queue's
    // slots are allocated up front (the default, 128k lines, took 4 MiB).
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BACKLOG_LINES)
        .lossy(false)
        .thread_name("corral-log")
        .finish(std::io::BufWriter::new(out));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hyper=warn".into()),
        )
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
    *WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(guard);
}

/// Writes out every line logged so far and stops the writer; for the end of the process, which
/// may exit without unwinding (the desktop event loop does).
pub fn finish() {
    let guard = WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    drop(guard);
}

/// Parts of a query parameter's name that mark its value as a credential.
const SECRET_NAMES: [&str; 6] = ["key", "token", "secret", "password", "auth", "session"];

/// `path_and_query` fit for a log line: the values of credential-like query parameters
/// (`api_key`, `key`, `token`, `access_token`, ...) replaced by `[redacted]`. Clients may send
/// their key in the query (`?api_key=`), and a log file outlives the request and has other
/// readers than the engine's owner.
pub fn redact_query(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let secret = |name: &str| {
        let name = percent_encoding::percent_decode_str(name)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        SECRET_NAMES.iter().any(|part| name.contains(part))
    };
    if !query
        .split('&')
        .any(|pair| secret(pair.split_once('=').map_or(pair, |(name, _)| name)))
    {
        return Cow::Borrowed(path_and_query);
    }
    let pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret(name) => Cow::Owned(format!("{name}=[redacted]")),
            _ => Cow::Borrowed(pair),
        })
        .collect();
    Cow::Owned(format!("{path}?{}", pairs.join("&")))
}

#[cfg(test)]
mod tests {
    use super::redact_query;

    #[test]
    fn credentials_in_the_query_are_redacted_and_the_rest_is_kept() {
        for (uri, logged) in [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/x?stream=true", "/v1/x?stream=true"),
            ("/v1/x?api_key=sk-secret", "/v1/x?api_key=[redacted]"),
            (
                "/v1/x?a=1&key=sk-secret&token=t0k&b=2",
                "/v1/x?a=1&key=[redacted]&token=[redacted]&b=2",
            ),
            ("/v1/x?API%5FKEY=sk-secret", "/v1/x?API%5FKEY=[redacted]"),
            ("/v1/x?access_token=abc", "/v1/x?access_token=[redacted]"),
        ] {
            assert_eq!(redact_query(uri), logged, "{uri}");
        }
    }
}
