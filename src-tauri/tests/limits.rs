//! The server under abuse, at the socket level: slow heads (slowloris), stalled bodies, idle
//! keep-alive connections, the connection cap, oversized heads, and a backend that reads a
//! request and dies without answering. Deadlines are shortened to about a second here; the
//! defaults are in `config/mod.rs`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Long enough for any deadline above to pass on a loaded machine, short of hanging the suite.
const CLOSE_WITHIN: Duration = Duration::from_secs(8);

async fn engine(max_connections: usize) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.limits.head_timeout = HEAD_TIMEOUT;
    config.server.limits.body_idle_timeout = BODY_IDLE_TIMEOUT;
    config.server.limits.keep_alive_timeout = KEEP_ALIVE_TIMEOUT;
    config.server.limits.max_connections = max_connections;
    let engine = Engine::start(config).await;
    engine.create("m", llama(json!({}))).await;
    engine.wait_ready("m").await;
    (dir, engine)
}

fn post(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chat() -> Vec<u8> {
    post(
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
}

/// The status of the answer at the start of `read`, once its head is complete.
fn status_of(read: &[u8]) -> Option<u16> {
    head_of(read).map(|(status, _, _)| status)
}

/// The status, head length and body length (`None`: chunked) of the answer at the start of
/// `read`, once its head is complete.
fn head_of(read: &[u8]) -> Option<(u16, usize, Option<usize>)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = response.parse(read) else {
        return None;
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
    Some((response.code.unwrap(), len, length))
}

/// Sends `request` and reads one whole answer (framed by its length, or chunked); returns its
/// status.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> u16 {
    stream.write_all(request).await.unwrap();
    let mut read = Vec::new();
    loop {
        if let Some((status, head, length)) = head_of(&read) {
            let complete = match length {
                Some(length) => read.len() >= head + length,
                None => read[head..].ends_with(b"0\r\n\r\n"),
            };
            if complete {
                return status;
            }
        }
        let mut buf = [0u8; 16 * 1024];
        let n = timeout(CLOSE_WITHIN, stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before an answer");
        read.extend_from_slice(&buf[..n]);
    }
}

/// Reads until the server closes the connection (EOF or reset); panics if it stays open past
/// `within`. Returns what was read before the close.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut read = Vec::new();
    loop {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after {within:?}; read {:?}",
                String::from_utf8_lossy(&read)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return read,
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
}

/// Raises the soft file-descriptor limit as far as the hard one allows (up to `wanted`), so
/// that hundreds of sockets on both ends fit; panics with the reason when they cannot.
#[allow(unsafe_code)]
fn allow_descriptors(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "getrlimit failed");
    if limit.rlim_cur >= wanted {
        return;
    }
    limit.rlim_cur = limit.rlim_max.min(wanted);
    // SAFETY: as above.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(set, 0, "setrlimit failed");
    assert!(
        limit.rlim_cur >= wanted,
        "this test needs {wanted} file descriptors; `ulimit -Hn` allows {}",
        limit.rlim_max
    );
}

#[tokio::test]
async fn slowloris_connections_do_not_stop_a_request_and_are_closed_after_the_head_timeout() {
    const SLOW: usize = 500;
    // Both ends of every slow connection live in this process, plus the engine's own files.
    allow_descriptors(2 * SLOW as u64 + 512);
    let (_dir, engine) = engine(4096).await;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        // Before the connection exists, so before the server's clock for it starts.
        let opened = Instant::now();
        let mut stream = TcpStream::connect(engine.addr).await.unwrap();
        stream
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        slow.push((stream, opened));
    }
    // Half of them go on trickling a header byte by byte, the others stall.
    let mut trickling = Vec::new();
    for (mut stream, opened) in slow.split_off(SLOW / 2) {
        trickling.push(tokio::spawn(async move {
            for byte in b"X-Slow: ".iter().cycle() {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                sleep(Duration::from_millis(100)).await;
                if opened.elapsed() > CLOSE_WITHIN {
                    panic!("a trickling head was never cut");
                }
            }
            // The write failed: the server closed it; what is left to read ends at once.
            closed_within(&mut stream, Duration::from_secs(1)).await;
            opened.elapsed()
        }));
    }

    // Meanwhile a normal client is served, on both paths.
    let mut client = TcpStream::connect(engine.addr).await.unwrap();
    assert_eq!(exchange(&mut client, &chat()).await, 200);
    let listed = engine.get("/api/v1/instances").await;
    assert_eq!(listed.status(), 200);
    // ... while the slow ones are still open (the last one opened, at least).
    let (last, _) = slow.last().unwrap();
    let mut probe = [0u8; 1];
    assert!(
        matches!(last.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the normal requests were only served after the slow heads were closed"
    );

    for (i, (stream, opened)) in slow.iter_mut().enumerate() {
        let read = closed_within(stream, CLOSE_WITHIN).await;
        assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));
        assert!(
            opened.elapsed() >= HEAD_TIMEOUT,
            "connection {i} closed {:?} after it opened, before the timeout",
            opened.elapsed()
        );
    }
    for task in trickling {
        let closed_after = task.await.unwrap();
        assert!(closed_after >= HEAD_TIMEOUT, "closed before the timeout");
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_slow_next_head_after_a_routed_or_router_answer_is_closed_after_the_head_timeout() {
    let (_dir, engine) = engine(4096).await;
    for first in [
        chat(),
        b"GET /api/v1/instances HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
    ] {
        let mut stream = TcpStream::connect(engine.addr).await.unwrap();
        assert_eq!(exchange(&mut stream, &first).await, 200);
        stream
            .write_all(b"GET /api/v1/instances HTTP/1.1\r\nHost: loc")
            .await
            .unwrap();
        let started = Instant::now();
        closed_within(&mut stream, CLOSE_WITHIN).await;
        // Cut by the head timeout, not the (longer) keep-alive one.
        assert!(started.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(300));
        assert!(
            started.elapsed() < KEEP_ALIVE_TIMEOUT + HEAD_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }
    engine.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_keep_alive_timeout_on_both_paths() {
    let (_dir, engine) = engine(4096).await;
    for first in [
        chat(),
        b"GET /api/v1/instances HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
    ] {
        let mut stream = TcpStream::connect(engine.addr).await.unwrap();
        assert_eq!(exchange(&mut stream, &first).await, 200);
        let idle_from = Instant::now();
        // Still open past the head timeout: idle is not slow.
        sleep(HEAD_TIMEOUT + Duration::from_millis(300)).await;
        assert_eq!(exchange(&mut stream, &first).await, 200);
        let idle_from_again = Instant::now();
        closed_within(&mut stream, CLOSE_WITHIN).await;
        assert!(idle_from_again.elapsed() >= KEEP_ALIVE_TIMEOUT - Duration::from_millis(300));
        assert!(idle_from.elapsed() < CLOSE_WITHIN);
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_after_the_body_idle_timeout_on_both_paths() {
    let (_dir, engine) = engine(4096).await;
    for path in ["/v1/chat/completions", "/api/v1/instances/other"] {
        let mut stream = TcpStream::connect(engine.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{{\"model\": \"m\", "
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let read = closed_within(&mut stream, CLOSE_WITHIN).await;
        assert!(
            started.elapsed() >= BODY_IDLE_TIMEOUT - Duration::from_millis(300),
            "{path}"
        );
        // The router may say why before it closes; the fast path just closes.
        if let Some(status) = status_of(&read) {
            assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&read));
        }
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_long_answer_with_pauses_longer_than_every_timeout_is_not_cut() {
    let (_dir, engine) = engine(4096).await;
    let slow = json!({"model": "m", "chunks": 3, "interval": 1.5});
    // The fast path, and the router (the per-instance proxy).
    for path in [
        "/v1/slow_stream",
        "/api/v1/instances/m/proxy/v1/slow_stream",
    ] {
        let answer = engine.post_json(path, &slow).await;
        assert_eq!(answer.status(), 200, "{path}");
        let text = answer.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{path}: {text}");
        assert_eq!(text.matches("data: ").count(), 5, "{path}: {text}");
    }
    engine.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_at_once_while_the_others_are_served() {
    const CAP: usize = 4;
    let (_dir, engine) = engine(CAP).await;
    // The engine's own client (for `create` and readiness) may still hold a connection.
    engine
        .client
        .get(engine.url("/api/v1/instances"))
        .send()
        .await
        .unwrap();
    sleep(KEEP_ALIVE_TIMEOUT + Duration::from_secs(1)).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(engine.addr).await.unwrap();
        assert_eq!(exchange(&mut stream, &chat()).await, 200);
        held.push(stream);
    }
    let mut over = TcpStream::connect(engine.addr).await.unwrap();
    let refused_at = Instant::now();
    let read = closed_within(&mut over, Duration::from_secs(2)).await;
    assert!(refused_at.elapsed() < Duration::from_secs(1));
    if !read.is_empty() {
        assert_eq!(
            status_of(&read),
            Some(503),
            "{}",
            String::from_utf8_lossy(&read)
        );
        assert!(String::from_utf8_lossy(&read).contains("too_many_connections"));
    }
    // The held connections are still served, on both paths.
    assert_eq!(exchange(&mut held[0], &chat()).await, 200);
    assert_eq!(
        exchange(
            &mut held[1],
            b"GET /api/v1/instances HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .await,
        200
    );
    // A freed slot takes a new connection.
    drop(held.pop());
    let deadline = Instant::now() + CLOSE_WITHIN;
    loop {
        let mut stream = TcpStream::connect(engine.addr).await.unwrap();
        stream.write_all(&chat()).await.unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = stream.read(&mut buf).await {
            if status_of(&buf[..n]) == Some(200) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        sleep(Duration::from_millis(100)).await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_answered_431_and_closed_on_both_paths() {
    let (_dir, engine) = engine(4096).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    let many: String = (0..200).map(|i| format!("X-Many-{i}: 1\r\n")).collect();
    for extra in [&big, &many] {
        for (first, request) in [
            (None, format!("POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: 2\r\n\r\n{{}}")),
            (None, format!("GET /api/v1/instances HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n")),
            // After a request each path served, on the same connection.
            (Some(chat()), format!("POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: 2\r\n\r\n{{}}")),
            (
                Some(b"GET /api/v1/instances HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
                format!("GET /api/v1/instances HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n"),
            ),
        ] {
            let mut stream = TcpStream::connect(engine.addr).await.unwrap();
            if let Some(first) = first {
                assert_eq!(exchange(&mut stream, &first).await, 200);
            }
            // The server may close before it read all of a too-large head.
            let _ = stream.write_all(request.as_bytes()).await;
            let read = closed_within(&mut stream, CLOSE_WITHIN).await;
            assert_eq!(
                status_of(&read),
                Some(431),
                "{}: {}",
                &request[..40],
                String::from_utf8_lossy(&read[..read.len().min(300)])
            );
        }
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_request_a_backend_read_on_a_reused_connection_is_sent_once_and_answered_502() {
    let (_dir, engine) = engine(4096).await;
    let mut client = TcpStream::connect(engine.addr).await.unwrap();
    // The first request leaves a backend connection in the pool; the next one reuses it.
    assert_eq!(exchange(&mut client, &chat()).await, 200);
    let dropped = exchange(&mut client, &post("/v1/drop", &json!({"model": "m"}))).await;
    assert_eq!(dropped, 502);
    let drops: Value = engine
        .get("/api/v1/instances/m/proxy/drops")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(drops["drops"], 1, "the request was sent again");
    engine.stop().await;
}

#[tokio::test]
async fn a_large_body_reaches_a_vllm_backend_with_only_its_model_rewritten_and_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_inference_body_bytes = 8 * 1024 * 1024;
    let engine = Engine::start(config).await;
    engine
        .create(
            "v",
            json!({"backend_type": "vllm",
                   "backend_options": {"model": "org/model", "served_model_name": "served"}}),
        )
        .await;
    engine.wait_ready("v").await;
    // Past the fast path's 1 MiB: the router reads it, and sends it on in pieces.
    let pad = "x".repeat(3 * 1024 * 1024);
    let sent = format!(
        r#"{{ "messages" : [{{"role":"user","content":"a \"model\": b"}}],"model":  "v" , "pad":"{pad}","n":1.50}}"#
    );
    let answer = engine
        .client
        .post(engine.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let echo: Value = answer.json().await.unwrap();
    let expected = sent.replace(r#""model":  "v""#, r#""model":  "served""#);
    assert!(
        echo["body"] == expected.as_str(),
        "the body changed beyond its model"
    );
    assert_eq!(
        echo["headers"]["content-length"],
        expected.len().to_string()
    );
    assert!(echo["headers"].get("transfer-encoding").is_none());
    engine.stop().await;
}

#[tokio::test]
async fn a_body_nested_too_deeply_is_refused_with_400_on_v1_and_ollama() {
    let (_dir, engine) = engine(4096).await;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    for path in ["/v1/chat/completions", "/v1/embeddings"] {
        let body = format!(r#"{{"model": "m", "input": {deep}}}"#);
        let answer = engine
            .client
            .post(engine.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{path}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_request_body", "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("recursion limit"),
            "{error}"
        );
    }
    let body = format!(r#"{{"model": "m", "messages": {deep}}}"#);
    let answer = engine
        .client
        .post(engine.url("/api/chat"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    // The engine is still there.
    assert_eq!(
        exchange(&mut TcpStream::connect(engine.addr).await.unwrap(), &chat()).await,
        200
    );
    engine.stop().await;
}

#[tokio::test]
async fn instance_numbers_past_their_range_are_refused_with_400_naming_the_field() {
    let (_dir, engine) = engine(4096).await;
    for (field, value) in [
        ("idle_timeout", json!(1_000_000_000_000_i64)),
        ("restart_delay", json!(i64::MAX)),
        ("max_restarts", json!(1_000_000)),
    ] {
        let mut body = llama(json!({}));
        body[field] = value;
        let answer = engine.post_json("/api/v1/instances/big", &body).await;
        assert_eq!(answer.status(), 400, "{field}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["field"], field, "{error}");
    }
    assert_eq!(engine.get("/api/v1/instances/big").await.status(), 404);
    engine.stop().await;
}

#[tokio::test]
async fn a_json_body_of_millions_of_tiny_values_is_refused_before_it_is_built_into_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_body_bytes = 8 * 1024 * 1024;
    let engine = Engine::start(config).await;
    // 4 MB of text, a tree of ~2M values (60+ MB) if parsed.
    let flat = format!(
        r#"{{"model": "m", "messages": [{}0]}}"#,
        "0,".repeat(2_000_000)
    );
    for path in ["/api/chat", "/api/v1/instances/m"] {
        let answer = engine
            .client
            .post(engine.url(path))
            .header("content-type", "application/json")
            .body(flat.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 413, "{path}");
        let text = answer.text().await.unwrap();
        assert!(text.contains("JSON values"), "{path}: {text}");
    }
    engine.stop().await;
}
