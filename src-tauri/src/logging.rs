//! The engine's log: lines are formatted where they happen and written by a thread of their own,
//! in batches. Every routed request logs a line, and a write per line to a terminal or a pipe
//! cost the request path a system call each (and could stall it behind a slow reader).

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
