//! The engine's log: lines are formatted where they happen and written out by a thread of their
//! own, in batches. Every routed request logs a line; a write per line to a terminal, pipe or
//! file would cost the request path a system call each (and could stall it behind a slow
//! reader), and a writer thread woken per line (as `tracing-appender`'s is) costs two context
//! switches per request, which at one request at a time was most of what the shipped binary
//! spent beyond nginx. Here a logger only appends to a shared buffer; the first line after a
//! write-out wakes the writer, which waits `FLUSH_INTERVAL` for more to gather before it writes
//! them all in one go. A line reaches the output within that interval, or at `finish`.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer lets lines gather after the first one.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Bytes the writer may fall behind by; past it, loggers wait for it (no line is dropped).
const MAX_PENDING: usize = 1024 * 1024;

/// The writer thread, stopped (and what is left written out) by `finish`.
static WRITER: Mutex<Option<Writer>> = Mutex::new(None);

/// Sends the log to `out` (`RUST_LOG` filters it; by default `info`, with hyper's chatter
/// left out). `ansi`: colour codes, for a terminal only.
pub fn init(out: impl Write + Send + 'static, ansi: bool) {
    let writer = Writer::start(out, FLUSH_INTERVAL, MAX_PENDING);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hyper=warn".into()),
        )
        .with_writer(writer.lines())
        .with_ansi(ansi)
        .init();
    *lock(&WRITER) = Some(writer);
}

/// Writes out every line logged so far and stops the writer; for the end of the process, which
/// may exit without unwinding (the desktop event loop does).
pub fn finish() {
    let writer = lock(&WRITER).take();
    drop(writer);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A logger that panicked mid-line leaves at worst half a line: keep logging.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What loggers and the writer thread share.
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: the first line after a write-out, or the end.
    lines: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
    max_pending: usize,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// The writer thread; dropping it writes out what is left and ends the thread.
struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(out: impl Write + Send + 'static, interval: Duration, max_pending: usize) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            lines: Condvar::new(),
            room: Condvar::new(),
            max_pending,
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("corral-log".to_owned())
                .spawn(move || write_out(&shared, out, interval))
        };
        Writer {
            shared,
            // Without the thread (the OS refused one) lines gather until `max_pending`, then
            // loggers would wait forever: write them in place instead.
            thread: thread.ok(),
        }
    }

    fn lines(&self) -> Lines {
        Lines {
            shared: self.thread.is_some().then(|| Arc::clone(&self.shared)),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.lines.notify_all();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: sleeps until a line comes, lets more gather, writes them all at once.
fn write_out(shared: &Shared, out: impl Write, interval: Duration) {
    let mut out = out;
    let mut batch = Vec::new();
    loop {
        let mut pending = lock(&shared.pending);
        while pending.bytes.is_empty() && !pending.closed {
            pending = shared
                .lines
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if !pending.closed {
            // Gather: the end cuts this short (`lines` is notified then).
            pending = shared
                .lines
                .wait_timeout(pending, interval)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let closed = pending.closed;
        std::mem::swap(&mut batch, &mut pending.bytes);
        drop(pending);
        shared.room.notify_all();
        // A log that cannot be written (a closed terminal) must not stop the engine.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closed && lock(&shared.pending).bytes.is_empty() {
            return;
        }
    }
}

/// A logger's handle: each formatted line is appended to the shared buffer.
#[derive(Clone)]
struct Lines {
    /// `None` when there is no writer thread: lines go to stderr directly.
    shared: Option<Arc<Shared>>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(shared) = &self.shared else {
            return std::io::stderr().write(buf);
        };
        let mut pending = lock(&shared.pending);
        while pending.bytes.len() >= shared.max_pending && !pending.closed {
            pending = shared
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(buf);
        drop(pending);
        if first {
            shared.lines.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parts of a query parameter's name that mark its value as a credential.
const SECRET_NAMES: [&str; 6] = ["key", "token", "secret", "password", "auth", "session"];

/// Whether a parameter, variable or flag named `name` holds a credential (`api_key`, `HF_TOKEN`,
/// `--hf-token`, ...).
pub fn looks_like_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|part| name.contains(part))
}

/// `path_and_query` fit for a log line: the values of credential-like query parameters
/// (`api_key`, `key`, `token`, `access_token`, ...) replaced by `[redacted]`. Clients may send
/// their key in the query (`?api_key=`), and a log file outlives the request and has other
/// readers than the engine's owner.
pub fn redact_query(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let secret = |name: &str| {
        looks_like_secret(&percent_encoding::percent_decode_str(name).decode_utf8_lossy())
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
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// An output the test can read while the writer holds it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_of_every_thread_is_written_whole_and_in_order_by_the_end() {
        let out = Shared::default();
        // A tiny limit, so that loggers also wait for room.
        let writer = Writer::start(out.clone(), Duration::from_millis(5), 64);
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let mut lines = writer.lines();
                std::thread::spawn(move || {
                    for line in 0..500 {
                        lines
                            .write_all(format!("{thread} {line}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(writer);
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
        for thread in 0..4 {
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|line| line.split_once(' '))
                .filter(|(of, _)| *of == thread.to_string())
                .map(|(_, line)| line.parse().unwrap())
                .collect();
            assert_eq!(seen, (0..500).collect::<Vec<_>>(), "thread {thread}");
        }
    }

    #[test]
    fn a_line_is_written_within_the_interval_without_waiting_for_the_end() {
        let out = Shared::default();
        let writer = Writer::start(out.clone(), Duration::from_millis(10), MAX_PENDING);
        writer.lines().write_all(b"one\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while lock(&out.0).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never came out"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*lock(&out.0), b"one\n");
        drop(writer);
    }

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
