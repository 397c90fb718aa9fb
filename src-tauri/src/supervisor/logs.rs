//! The instance's log: the append-only, size-rotated file, the in-memory ring of recent output,
//! the live broadcast of new lines, the pumps that copy the child's stdout and stderr into it,
//! and reading the file's tail.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

use super::SupervisorSettings;

/// A line longer than this is written in pieces of this size, so a child that prints megabytes
/// without a newline cannot make the pump hold it all in memory.
pub(super) const MAX_LINE_BYTES: usize = 1024 * 1024;
/// How many output lines the ring keeps for error messages.
const RING_LINES: usize = 200;
/// Lines in the ring are cut to this length: the ring is for error messages, the file has it all.
const RING_LINE_BYTES: usize = 4096;
/// Read size of the pumps and of the backwards scan of [`tail`].
const CHUNK: usize = 64 * 1024;
/// Lines a follower may fall behind by before it misses some; sending never waits for one.
const LIVE_LINES: usize = 4096;

/// The log of one instance. Writers are the two pumps and the supervisor task (markers);
/// a std mutex because no lock is held across an `.await`, only around short file writes.
pub(super) struct LogSink {
    /// `<logs_dir>/<name>.log`.
    path: PathBuf,
    /// Rotate once the file grows past this (0: never).
    max_bytes: u64,
    /// How many rotated files (`.1` newest) are kept.
    keep_files: usize,
    state: Mutex<LogState>,
    /// Every line written, as it is written, for followers of the log. Lives as long as the
    /// instance, so a follower sees the lines of every start. Sent under `state`'s lock, so the
    /// order is the file's.
    /// Made on the first follow: a channel preallocates its `LIVE_LINES` slots (~200 KiB),
    /// which most instances, never followed, would carry for nothing.
    live: OnceLock<broadcast::Sender<Arc<str>>>,
}

/// A follower of the log: the file's last lines up to the moment it subscribed, and every line
/// after that.
pub struct LogFollower {
    /// The file's last lines, oldest first; what `live` brings comes after these.
    pub tail: Vec<String>,
    pub live: broadcast::Receiver<Arc<str>>,
}

struct LogState {
    /// Open while a process runs; opened again on demand by late writes.
    file: Option<File>,
    /// Bytes in the current file, to decide when to rotate without a stat per line.
    size: u64,
    /// Recent output lines, newest last.
    ring: VecDeque<String>,
    /// A failing log disk is reported once per opening, not once per line.
    reported_error: bool,
}

impl LogSink {
    pub(super) fn new(name: &str, settings: &SupervisorSettings) -> Self {
        Self {
            path: settings.logs_dir.join(format!("{name}.log")),
            max_bytes: settings.log_max_bytes,
            keep_files: settings.log_keep_files,
            state: Mutex::new(LogState {
                file: None,
                size: 0,
                ring: VecDeque::new(),
                reported_error: false,
            }),
            live: OnceLock::new(),
        }
    }

    /// Subscribes to new lines and reads the last `lines` lines written before that, with
    /// nothing missed or repeated in between. Reads the file: call it off the async workers.
    pub(super) fn follow(&self, lines: usize) -> io::Result<LogFollower> {
        // Under the lock (only an open and a stat): every write is either in the file up to
        // `end` or comes through `live`. The open handle keeps reading the right file even if
        // a rotation renames it meanwhile.
        let (live, opened) = {
            let _state = self.lock();
            let live = self
                .live
                .get_or_init(|| broadcast::channel(LIVE_LINES).0)
                .subscribe();
            let opened = match File::open(&self.path) {
                Ok(file) => {
                    let end = file.metadata()?.len();
                    Some((file, end))
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                Err(err) => return Err(err),
            };
            (live, opened)
        };
        let tail = match opened {
            Some((mut file, end)) if lines > 0 => {
                let start = start_of_last_lines(&mut file, end, lines)?;
                file.seek(SeekFrom::Start(start))?;
                let mut bytes = Vec::new();
                (&mut file).take(end - start).read_to_end(&mut bytes)?;
                let text = String::from_utf8_lossy(&bytes);
                let text = text.strip_suffix('\n').unwrap_or(&text);
                if bytes.is_empty() {
                    Vec::new()
                } else {
                    text.split('\n').map(str::to_owned).collect()
                }
            }
            _ => Vec::new(),
        };
        Ok(LogFollower { tail, live })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock leaves at worst a half-written line: keep logging.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `\n=== Instance <name> started at <local time> ===\n`, as llamactl writes it.
    pub(super) fn started(&self, name: &str) {
        let text = format!("\n=== Instance {name} started at {} ===\n", now());
        self.write(&mut self.lock(), text.as_bytes());
    }

    /// `=== Instance <name> stopped at <local time> ===\n\n`; closes the file until the next start.
    pub(super) fn stopped(&self, name: &str) {
        let mut state = self.lock();
        let text = format!("=== Instance {name} stopped at {} ===\n\n", now());
        self.write(&mut state, text.as_bytes());
        state.file = None;
    }

    /// A line from the supervisor itself (a failed start, an auto-restart), not from the child.
    pub(super) fn note(&self, text: &str) {
        self.write(&mut self.lock(), format!("{text}\n").as_bytes());
    }

    /// One line of the child's output, without its newline.
    pub(super) fn line(&self, bytes: &[u8]) {
        let mut state = self.lock();
        let mut entry = Vec::with_capacity(bytes.len() + 1);
        entry.extend_from_slice(bytes);
        entry.push(b'\n');
        self.write(&mut state, &entry);
        let shown = &bytes[..bytes.len().min(RING_LINE_BYTES)];
        if state.ring.len() == RING_LINES {
            state.ring.pop_front();
        }
        state
            .ring
            .push_back(String::from_utf8_lossy(shown).into_owned());
    }

    /// The last `lines` lines of output kept in memory, joined with newlines.
    pub(super) fn recent(&self, lines: usize) -> String {
        let state = self.lock();
        let skip = state.ring.len().saturating_sub(lines);
        state
            .ring
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn write(&self, state: &mut LogState, bytes: &[u8]) {
        // Nothing is built for followers when there are none.
        if let Some(live) = self.live.get().filter(|live| live.receiver_count() > 0) {
            let text = String::from_utf8_lossy(bytes);
            for line in text.strip_suffix('\n').unwrap_or(&text).split('\n') {
                // An error only means the last follower just left.
                let _ = live.send(Arc::from(line));
            }
        }
        if let Err(err) = self.try_write(state, bytes) {
            if !state.reported_error {
                state.reported_error = true;
                tracing::warn!(path = %self.path.display(), "cannot write the instance log: {err}");
            }
            state.file = None;
        }
    }

    fn try_write(&self, state: &mut LogState, bytes: &[u8]) -> io::Result<()> {
        let file = match &mut state.file {
            Some(file) => file,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                state.size = file.metadata()?.len();
                state.reported_error = false;
                state.file.insert(file)
            }
        };
        file.write_all(bytes)?;
        state.size += bytes.len() as u64;
        if self.max_bytes > 0 && state.size > self.max_bytes {
            state.file = None;
            self.rotate()?;
        }
        Ok(())
    }

    /// `<name>.log` becomes `.1`, `.1` becomes `.2` …; the oldest beyond `keep_files` is dropped.
    fn rotate(&self) -> io::Result<()> {
        if self.keep_files == 0 {
            return std::fs::remove_file(&self.path);
        }
        for index in (1..self.keep_files).rev() {
            match std::fs::rename(self.rotated(index), self.rotated(index + 1)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))
    }

    fn rotated(&self, index: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{index}"));
        PathBuf::from(name)
    }
}

fn now() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Copies one of the child's output streams into the log line by line, until end of file.
/// Reads in chunks, so neither a long line nor a silent child costs more than one line's memory.
pub(super) async fn pump(mut reader: impl AsyncRead + Unpin, sink: Arc<LogSink>) {
    let mut chunk = vec![0u8; CHUNK];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let mut rest = &chunk[..read];
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            line.extend_from_slice(&rest[..end]);
            emit(&sink, &line);
            line.clear();
            rest = &rest[end + 1..];
        }
        line.extend_from_slice(rest);
        while line.len() >= MAX_LINE_BYTES {
            emit(&sink, &line[..MAX_LINE_BYTES]);
            line.drain(..MAX_LINE_BYTES);
        }
    }
    if !line.is_empty() {
        emit(&sink, &line);
    }
}

fn emit(sink: &LogSink, line: &[u8]) {
    sink.line(line.strip_suffix(b"\r").unwrap_or(line));
}

/// The last `lines` lines of the file at `path` (all when `None`), joined with `\n`; empty when
/// the file does not exist. Scans backwards from the end, so a large file is not read whole.
pub(super) fn tail(path: &Path, lines: Option<usize>) -> io::Result<String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(err) => return Err(err),
    };
    let start = match lines {
        None => 0,
        Some(0) => return Ok(String::new()),
        Some(wanted) => {
            let end = file.metadata()?.len();
            start_of_last_lines(&mut file, end, wanted)?
        }
    };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

/// Offset where the last `wanted` lines before offset `len` begin; the final newline ends the
/// last line.
fn start_of_last_lines(file: &mut File, len: u64, wanted: usize) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    let mut end = if last[0] == b'\n' { len - 1 } else { len };
    let mut chunk = vec![0u8; CHUNK];
    let mut newlines = 0;
    while end > 0 {
        let begin = end.saturating_sub(CHUNK as u64);
        let size = (end - begin) as usize;
        file.seek(SeekFrom::Start(begin))?;
        file.read_exact(&mut chunk[..size])?;
        for index in (0..size).rev() {
            if chunk[index] == b'\n' {
                newlines += 1;
                if newlines == wanted {
                    return Ok(begin + index as u64 + 1);
                }
            }
        }
        end = begin;
    }
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::time::Duration;

    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;

    fn sink(dir: &Path, max_bytes: u64) -> LogSink {
        LogSink::new(
            "follow",
            &SupervisorSettings {
                logs_dir: dir.to_path_buf(),
                run_dir: dir.to_path_buf(),
                stop_grace: Duration::from_secs(1),
                log_max_bytes: max_bytes,
                log_keep_files: 2,
                restart_reset_after: Duration::from_secs(600),
            },
        )
    }

    #[test]
    fn a_follower_gets_the_last_lines_then_each_new_one_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), 0);
        let nobody = sink.follow(10).unwrap();
        assert!(nobody.tail.is_empty(), "no file yet");
        drop(nobody);
        for n in 1..=5 {
            sink.line(format!("line {n}").as_bytes());
        }
        let mut follower = sink.follow(2).unwrap();
        assert_eq!(follower.tail, ["line 4", "line 5"]);
        assert!(matches!(follower.live.try_recv(), Err(TryRecvError::Empty)));
        sink.line(b"line 6");
        sink.note("a note");
        assert_eq!(&*follower.live.try_recv().unwrap(), "line 6");
        assert_eq!(&*follower.live.try_recv().unwrap(), "a note");
    }

    #[test]
    fn a_follower_that_never_reads_does_not_hold_up_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        // Small files: the writer also rotates while the follower sleeps.
        let sink = sink(dir.path(), 64 * 1024);
        let mut follower = sink.follow(0).unwrap();
        for n in 0..LIVE_LINES * 3 {
            sink.line(format!("line {n}").as_bytes());
        }
        assert!(matches!(
            follower.live.try_recv(),
            Err(TryRecvError::Lagged(_))
        ));
        let last = format!("line {}", LIVE_LINES * 3 - 1);
        let mut seen = None;
        while let Ok(line) = follower.live.try_recv() {
            seen = Some(line);
        }
        assert_eq!(seen.as_deref(), Some(last.as_str()));
        assert_eq!(sink.follow(1).unwrap().tail, [last]);
    }
}
