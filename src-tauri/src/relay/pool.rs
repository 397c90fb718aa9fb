//! Keep-alive connections to the backends, shared by every request the relay carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long dialling a backend may take before the request fails with 502.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections older than this are not reused (backends close theirs after ~5 s).
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(4);

/// Idle connections kept per backend; more concurrent requests open more, then close them.
pub(crate) const MAX_IDLE_PER_BACKEND: usize = 64;

/// What the relay reads from a backend at a time.
const READ_SIZE: usize = 16 * 1024;

/// One connection to a backend, with the buffer its answers are read into (kept with it, so a
/// reused connection reuses its buffer too).
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) read: BytesMut,
}

impl Conn {
    pub(crate) async fn open(authority: &str) -> Result<Conn, String> {
        let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
        };
        // Tokens of a stream go out one small write at a time: don't let Nagle hold them back.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_SIZE),
        })
    }

    /// Room for the next read.
    pub(crate) fn reserve(&mut self) {
        self.read.reserve(READ_SIZE);
    }
}

/// A pooled connection and when it went back to the pool.
type Idle = (Conn, Instant);

/// Idle keep-alive connections by backend address, most recently used last.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<Box<str>, Vec<Idle>>>,
}

impl Pool {
    /// An idle connection to `authority` that is still open; none when `fresh_only`.
    pub(crate) fn checkout(&self, authority: &str, fresh_only: bool) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let conns = idle.get_mut(authority)?;
        if fresh_only {
            // The backend closed one: it likely closed all (it restarted or timed them out).
            conns.clear();
            return None;
        }
        while let Some((conn, since)) = conns.pop() {
            // Backends close idle keep-alive connections after a few seconds (llama-server and
            // uvicorn after 5): older ones are dropped rather than raced against that close.
            if since.elapsed() >= MAX_IDLE {
                continue;
            }
            // An idle connection has nothing to read: EOF or stray bytes mean it is done.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    /// Closes every idle connection to `authority`.
    pub(crate) fn forget(&self, authority: &str) {
        lock(&self.idle).remove(authority);
    }

    pub(crate) fn checkin(&self, authority: &str, mut conn: Conn) {
        conn.read.clear();
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        // Expired connections of every backend go here, so that one that stopped (its
        // instance stopped or moved) does not keep closed sockets around.
        idle.retain(|_, conns| {
            conns.retain(|(_, since)| now.duration_since(*since) < MAX_IDLE);
            !conns.is_empty()
        });
        match idle.get_mut(authority) {
            Some(conns) if conns.len() >= MAX_IDLE_PER_BACKEND => {}
            Some(conns) => conns.push((conn, now)),
            None => {
                idle.insert(authority.into(), vec![(conn, now)]);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The pool holds no invariant a panic could break halfway: keep using it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A stop closes its backend's idle connections: the backend sees them end (its read
    /// returns EOF), and the other backends' stay.
    #[tokio::test]
    async fn forgetting_a_backend_closes_its_idle_connections_and_only_those() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let pool = Pool::default();
        let conn = Conn::open(&authority).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        pool.checkin(&authority, conn);
        let other = "127.0.0.1:9";
        let listener2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority2 = listener2.local_addr().unwrap().to_string();
        pool.checkin(&authority2, Conn::open(&authority2).await.unwrap());

        pool.forget(&authority);
        pool.forget(other);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), accepted.read(&mut byte))
            .await
            .expect("the connection is closed, not left open");
        assert_eq!(read.unwrap(), 0, "EOF");
        assert!(pool.checkout(&authority, false).is_none());
        assert!(pool.checkout(&authority2, false).is_some());
    }
}
