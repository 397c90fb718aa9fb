//! HTTP/1.1 written and read as raw bytes, for the tests that look at the connection itself
//! (pipelining, `100 Continue`, framing, which relay wrote a head).

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One answer as the client read it: header names as they were on the wire, the body with its
/// framing taken off.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived to its end (its length, its last chunk, or the close that ends it).
    pub whole: bool,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads more from `stream` into `read`; false at its close (or a reset).
pub async fn more(stream: &mut TcpStream, read: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            read.extend_from_slice(&buf[..n]);
            true
        }
        Ok(_) => false,
        Err(_) => panic!("the answer stalled for 30 s"),
    }
}

/// Reads one answer from `stream`, starting with what `read` already holds; what arrives past
/// its end stays in `read` for the next one. `None` when the connection closed before a whole
/// head.
pub async fn read_answer(stream: &mut TcpStream, read: &mut Vec<u8>) -> Option<Answer> {
    let (status, headers, head_len) = loop {
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut parsed);
        if let httparse::Status::Complete(len) = response.parse(read).unwrap() {
            let headers = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (response.code.unwrap(), headers, len);
        }
        if !more(stream, read).await {
            return None;
        }
    };
    read.drain(..head_len);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    // An interim answer (`100 Continue`) has no body.
    let whole = if status == 100 {
        true
    } else if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        'chunks: loop {
            let line_end = loop {
                if let Some(at) = read.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                if !more(stream, read).await {
                    break 'chunks false;
                }
            };
            let size_line = String::from_utf8_lossy(&read[..line_end]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap(), 16).unwrap();
            while read.len() < line_end + 2 + size + 2 {
                if !more(stream, read).await {
                    break 'chunks false;
                }
            }
            body.extend_from_slice(&read[line_end + 2..line_end + 2 + size]);
            read.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break true;
            }
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().unwrap();
        let mut whole = true;
        while read.len() < length {
            if !more(stream, read).await {
                whole = false;
                break;
            }
        }
        body = read.drain(..length.min(read.len())).collect();
        whole
    } else {
        while more(stream, read).await {}
        body = std::mem::take(read);
        true
    };
    Some(Answer {
        status,
        headers,
        body,
        whole,
    })
}

/// A `POST` with a JSON body and the `extra` header lines (and Host, type, length).
pub fn post(path: &str, body: &Value, extra: &str) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}
