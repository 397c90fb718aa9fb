//! One file's bytes into its blob: appended to `blobs/<digest>.incomplete`, continued with
//! `Range` after a dropped connection, a cancel or a restart, hashed as they arrive, and renamed
//! to the blob only when size and digest match.
//!
//! The network side runs on the runtime; writing and hashing run on one blocking thread fed
//! through a bounded channel, so the socket is read while the disk writes and nothing blocks a
//! runtime thread.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::hub::{Hub, RemoteFile};
use super::names::Digest;
use super::{io_error, DownloadError, Stop};

/// Attempts at one file before the job fails: a dropped connection is tried again from where
/// it stopped.
const MAX_ATTEMPTS: u32 = 6;
/// A transfer that sends nothing for this long is dropped and tried again.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Batches waiting for the disk.
const QUEUE: usize = 16;
/// The network's chunks (16 to 64 KiB) go to the writer in batches of this size, or this old:
/// one hand-over per chunk cost more than the hashing. The age keeps a slow transfer's bytes
/// reaching the disk (and a crash's resume point) steadily.
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_AGE: Duration = Duration::from_millis(50);
/// Reads of a partial file's bytes, to hash them before resuming.
const READ_BUFFER: usize = 1024 * 1024;

/// The `.incomplete` file of a blob, as the hub's Python client names it.
pub fn partial_path(blob: &Path) -> PathBuf {
    let mut name = blob.as_os_str().to_owned();
    name.push(".incomplete");
    PathBuf::from(name)
}

/// Fetches `remote` into `blob`. `progress` gets the file's bytes on disk so far, at each
/// chunk (the caller rate-limits what it publishes).
pub async fn fetch_blob(
    hub: &Hub,
    remote: &RemoteFile,
    blob: &Path,
    name: &str,
    stop: &mut watch::Receiver<Stop>,
    mut progress: impl FnMut(u64),
) -> Result<(), DownloadError> {
    let partial = partial_path(blob);
    let have = kept_bytes(&partial, remote.size)?;
    progress(have);
    let (chunks, writer) = Writer::start(partial.clone(), have, remote.digest.clone(), remote.size);
    let result = receive(hub, remote, have, &chunks, stop, &mut progress).await;
    drop(chunks);
    let written = writer
        .await
        .map_err(|e| DownloadError::Internal(format!("the writer of {name} stopped: {e}")))?;
    result?;
    let (length, digest) = written.map_err(|e| io_error("write", &partial, e))?;
    let expected = remote.digest.blob_name();
    let why = if length != remote.size {
        Some(format!(
            "{length} bytes where the hub announced {}",
            remote.size
        ))
    } else if digest != expected {
        Some(format!("its hash is {digest}, the hub's is {expected}"))
    } else {
        None
    };
    if let Some(why) = why {
        // Started over next time: bytes that hash wrong cannot be told apart from good ones.
        let _ = std::fs::remove_file(&partial);
        return Err(DownloadError::Corrupt {
            file: name.to_owned(),
            why,
        });
    }
    std::fs::rename(&partial, blob).map_err(|e| io_error("rename", &partial, e))
}

/// What may be kept of an earlier attempt: a regular file no longer than the blob.
fn kept_bytes(partial: &Path, size: u64) -> Result<u64, DownloadError> {
    match std::fs::symlink_metadata(partial) {
        Ok(meta) if meta.is_file() && meta.len() <= size => Ok(meta.len()),
        Ok(_) => {
            std::fs::remove_file(partial).map_err(|e| io_error("remove", partial, e))?;
            Ok(0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_error("read", partial, e)),
    }
}

/// Reads the bytes from the network into the writer until the file is whole, retrying dropped
/// connections from where they stopped.
async fn receive(
    hub: &Hub,
    remote: &RemoteFile,
    have: u64,
    chunks: &mpsc::Sender<Chunk>,
    stop: &mut watch::Receiver<Stop>,
    progress: &mut impl FnMut(u64),
) -> Result<(), DownloadError> {
    let mut offset = have;
    let mut attempt = 0;
    let mut batch = Batch::default();
    while offset < remote.size {
        attempt += 1;
        let outcome = stoppable(stop, async {
            let fetch = hub.fetch(remote, offset).await?;
            if fetch.from != offset {
                // The server ignored the range: start the file over.
                offset = 0;
                progress(0);
                send(chunks, Chunk::Restart).await?;
            }
            let mut body = fetch.response.bytes_stream();
            while offset < remote.size {
                let next = tokio::time::timeout(IDLE_TIMEOUT, body.next())
                    .await
                    .map_err(|_| DownloadError::Protocol("the transfer stalled".into()))?;
                let Some(bytes) = next else { break };
                let bytes = bytes?;
                if offset + bytes.len() as u64 > remote.size {
                    return Err(DownloadError::Corrupt {
                        file: remote.url.path().to_owned(),
                        why: "more bytes than the hub announced".into(),
                    });
                }
                offset += bytes.len() as u64;
                batch.push(bytes);
                if batch.len >= BATCH_BYTES || batch.since.elapsed() >= BATCH_AGE {
                    send(chunks, Chunk::Data(batch.take())).await?;
                }
                progress(offset);
            }
            Ok(())
        })
        .await;
        // Whatever the outcome, what arrived is kept: a resume starts after it.
        if batch.len > 0 {
            send(chunks, Chunk::Data(batch.take())).await?;
        }
        match outcome {
            Ok(()) if offset == remote.size => return Ok(()),
            // The body ended early: the connection was cut.
            Ok(()) => {}
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) if attempt >= MAX_ATTEMPTS => return Err(e),
            Err(e) => tracing::warn!("download of {} interrupted ({e}); resuming", remote.url),
        }
        if attempt >= MAX_ATTEMPTS {
            return Err(DownloadError::Protocol(
                "the connection kept closing before the end of the file".into(),
            ));
        }
        let pause = Duration::from_millis(250 * u64::from(attempt));
        stoppable(stop, async {
            tokio::time::sleep(pause).await;
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// `work`, unless the job is told to stop first.
pub async fn stoppable<T>(
    stop: &mut watch::Receiver<Stop>,
    work: impl std::future::Future<Output = Result<T, DownloadError>>,
) -> Result<T, DownloadError> {
    let stopped = async {
        let stop = stop.wait_for(|stop| *stop != Stop::Run).await;
        match stop.map(|stop| *stop) {
            Ok(Stop::Cancel) => DownloadError::Cancelled,
            _ => DownloadError::ShuttingDown,
        }
    };
    tokio::select! {
        result = work => result,
        error = stopped => Err(error),
    }
}

async fn send(chunks: &mpsc::Sender<Chunk>, chunk: Chunk) -> Result<(), DownloadError> {
    chunks
        .send(chunk)
        .await
        .map_err(|_| DownloadError::Internal("the file writer stopped".into()))
}

/// Chunks from the network not handed to the writer yet.
struct Batch {
    parts: Vec<Bytes>,
    len: usize,
    /// When the first of them arrived.
    since: std::time::Instant,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            parts: Vec::new(),
            len: 0,
            since: std::time::Instant::now(),
        }
    }
}

impl Batch {
    fn push(&mut self, bytes: Bytes) {
        if self.parts.is_empty() {
            self.since = std::time::Instant::now();
        }
        self.len += bytes.len();
        self.parts.push(bytes);
    }

    fn take(&mut self) -> Vec<Bytes> {
        self.len = 0;
        std::mem::take(&mut self.parts)
    }
}

enum Chunk {
    Data(Vec<Bytes>),
    /// Truncate and hash from the start again.
    Restart,
}

/// The running hash of the file's bytes, with ring's digests (assembly with SHA extensions:
/// the hash is most of a download's CPU time).
struct Hasher(ring::digest::Context);

impl Hasher {
    fn new(digest: &Digest, size: u64) -> Hasher {
        match digest {
            Digest::Sha256(_) => Hasher(ring::digest::Context::new(&ring::digest::SHA256)),
            Digest::GitSha1(_) => {
                // A git blob id hashes a header before the bytes.
                let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
                sha1.update(format!("blob {size}\0").as_bytes());
                Hasher(sha1)
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn hex(self) -> String {
        hex::encode(self.0.finish())
    }
}

/// The blocking side: appends what arrives, hashes it, and answers the length and hash.
struct Writer;

type Written = std::io::Result<(u64, String)>;

impl Writer {
    fn start(
        path: PathBuf,
        have: u64,
        digest: Digest,
        size: u64,
    ) -> (mpsc::Sender<Chunk>, tokio::task::JoinHandle<Written>) {
        let (sender, mut chunks) = mpsc::channel(QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            let mut hasher = Hasher::new(&digest, size);
            let mut file = open(&path)?;
            let mut length = hash_prefix(&mut file, have, &mut hasher)?;
            // Each batch goes out in one vectored write, straight from the network's buffers:
            // no copy on the way, and what arrived is on its way to the disk at once.
            while let Some(chunk) = chunks.blocking_recv() {
                match chunk {
                    Chunk::Data(parts) => {
                        let start = length;
                        for bytes in &parts {
                            hasher.update(bytes);
                            length += bytes.len() as u64;
                        }
                        write_parts(&mut file, &parts)?;
                        start_writeback(&file, start, length - start);
                    }
                    Chunk::Restart => {
                        file.set_len(0)?;
                        hasher = Hasher::new(&digest, size);
                        length = 0;
                    }
                }
            }
            // What was written survives a crash, so a restart resumes from it.
            file.sync_data()?;
            Ok((length, hasher.hex()))
        });
        (sender, handle)
    }
}

/// Writes every part, in as few `writev` calls as the kernel allows.
fn write_parts(file: &mut std::fs::File, parts: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = parts
        .iter()
        .map(|part| std::io::IoSlice::new(part))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let written = file.write_vectored(rest)?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// Asks the kernel to start writing `len` bytes at `offset` to the disk now, without waiting
/// for them. The `sync_data` at the end of the file then waits only for the last batches:
/// left to the end, writing back half a gigabyte took a quarter of a second on its own, a third
/// of the whole download over loopback.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed; the call only reads its
    // arguments. A failure only means the final sync does all the waiting, so it is ignored.
    #[allow(unsafe_code)]
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// Opens the partial file for appending, never through a link.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Hashes the `have` bytes a previous attempt left and answers how many there were.
fn hash_prefix(file: &mut std::fs::File, have: u64, hasher: &mut Hasher) -> std::io::Result<u64> {
    let mut buffer = vec![0; READ_BUFFER];
    let mut left = have;
    while left > 0 {
        let want = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
        let read = file.read(&mut buffer[..want])?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        left -= read as u64;
    }
    // The file was opened for appending: writes land at its end, whatever was read.
    file.set_len(have - left)?;
    Ok(have - left)
}
