//! Property tests of the fast path's head parsers: no bytes make them panic, a head arriving in
//! pieces is read as the whole head is, and a request the fast path takes is one hyper (the
//! router's side) reads with the same method, path and body.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed case, with the value in the message

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn config(key: Option<&str>) -> Config {
    let mut config = Config::with_data_dir(PathBuf::from("/data"));
    config.auth.require_inference_auth = key.is_some();
    config.auth.inference_keys = key.iter().map(|key| (*key).to_owned()).collect();
    config
}

/// A header line made of names and values the fast path looks at, in any case, with odd
/// whitespace and now and then a byte no header may hold.
fn header() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        proptest::sample::select(vec![
            "Host",
            "host",
            "Content-Length",
            "content-length",
            "Authorization",
            "X-API-Key",
            "Connection",
            "Expect",
            "Transfer-Encoding",
            "Content-Type",
            "Origin",
            "Upgrade",
            "Keep-Alive",
            "TE",
            "X-Forwarded-Host",
            "X-Request-Id",
        ])
        .prop_map(str::to_owned),
        "[!-~]{1,8}",
    ];
    let value = prop_oneof![
        proptest::sample::select(vec![
            "localhost",
            "127.0.0.1:8080",
            "evil.example",
            "2",
            "0",
            "+2",
            "2, 2",
            "00002",
            "18446744073709551617",
            "Bearer sk-1",
            "Bearer sk-2",
            "sk-1",
            "keep-alive",
            "close",
            "100-continue",
            "chunked",
            "application/json",
            "",
        ])
        .prop_map(str::to_owned),
        "[ -~\t]{0,12}",
        "[\\x00-\\xff]{0,4}",
    ];
    (name, " {0,2}", value, prop_oneof![Just("\r\n"), Just("\n")])
        .prop_map(|(name, space, value, end)| format!("{name}:{space}{value}{end}"))
}

/// A request head (and its body's first bytes) much like a client's `POST /v1/...`.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = proptest::sample::select(vec!["POST", "POST", "GET", "post", "PUT"]);
    let path = prop_oneof![
        proptest::sample::select(vec![
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/models",
            "/v1/",
            "/v1/x?api_key=sk-1",
            "/v1/a%20b",
            "/api/v1/instances",
            "*",
        ])
        .prop_map(str::to_owned),
        "/v1/[!-~]{0,12}",
    ];
    let version = proptest::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2"]);
    (
        method,
        path,
        version,
        proptest::collection::vec(header(), 0..8),
        proptest::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(method, path, version, headers, body)| {
            let mut wire =
                format!("{method} {path} {version}\r\n{}\r\n", headers.concat()).into_bytes();
            wire.extend_from_slice(&body);
            wire
        })
}

/// How hyper's HTTP/1 server reads `wire` followed by a pipelined `GET /next`: the first
/// request's method, path and body when it read both requests, or `None`.
async fn hyper_reads(wire: &[u8]) -> Option<(String, String, Vec<u8>)> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let service = service_fn(
        |request: hyper::Request<hyper::body::Incoming>| async move {
            let line = format!("{} {}", request.method(), request.uri());
            let body = match request.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::from_static(b"<broken>"),
            };
            let mut answer = line.into_bytes();
            answer.push(b'\n');
            answer.extend_from_slice(&body);
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(answer))))
        },
    );
    let connection = tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), service),
    );
    let mut request = wire.to_vec();
    request.extend_from_slice(b"GET /next HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let (mut read, mut write) = tokio::io::split(&mut client);
    let send = async {
        let _ = write.write_all(&request).await;
        let _ = write.shutdown().await;
    };
    let mut answers = Vec::new();
    let receive = read.read_to_end(&mut answers);
    let (_, received) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("hyper answers or closes once the request side is shut");
    received.unwrap();
    connection.abort();
    let mut answers = bodies(&answers).into_iter();
    let (first, second) = (answers.next()?, answers.next()?);
    if second != b"GET /next\n" {
        return None;
    }
    let newline = first.iter().position(|&b| b == b'\n')?;
    let line = String::from_utf8(first[..newline].to_vec()).ok()?;
    let (method, path) = line.split_once(' ')?;
    Some((
        method.to_owned(),
        path.to_owned(),
        first[newline + 1..].to_vec(),
    ))
}

/// The bodies of the 200 answers with a `content-length` in `bytes`.
fn bodies(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = response.parse(bytes) else {
            return out;
        };
        if response.code != Some(200) {
            return out;
        }
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let Some(body) = bytes.get(len..len + length) else {
            return out;
        };
        out.push(body.to_vec());
        bytes = &bytes[len + length..];
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(crate::fuzz::config(512))]

    #[test]
    fn no_bytes_make_the_head_parsers_panic(
        wire in prop_oneof![any::<Vec<u8>>(), request()],
        keyed in any::<bool>(),
    ) {
        let config = config(keyed.then_some("sk-1"));
        if let Head::Fast(request) = parse_request(&wire, &config, None) {
            prop_assert!(request.head_len <= wire.len());
            let kept = without_expect(BytesMut::from(&wire[..]), request.head_len);
            prop_assert!(kept.len() <= wire.len());
        }
        let _ = crate::relay::codec::parse_response(&wire, false);
    }

    #[test]
    fn a_head_in_pieces_reads_as_the_whole_head(wire in request(), keyed in any::<bool>()) {
        let config = config(keyed.then_some("sk-1"));
        let whole = parse_request(&wire, &config, None);
        let Head::Fast(whole) = whole else {
            return Ok(());
        };
        for end in 0..wire.len() {
            match parse_request(&wire[..end], &config, None) {
                Head::Partial => prop_assert!(end < whole.head_len, "partial at {}", end),
                Head::Fast(part) => {
                    prop_assert!(end >= whole.head_len, "taken at {}", end);
                    prop_assert_eq!(
                        (part.head_len, part.body_len, &part.path, &part.headers),
                        (whole.head_len, whole.body_len, &whole.path, &whole.headers)
                    );
                }
                _ => prop_assert!(false, "handed off at {} though the whole head is taken", end),
            }
        }
    }
}

proptest! {
    #![proptest_config(crate::fuzz::config(256))]

    #[test]
    fn a_request_the_fast_path_takes_is_one_hyper_reads_the_same(
        wire in request(),
        keyed in any::<bool>(),
        fill in any::<u8>(),
    ) {
        let config = config(keyed.then_some("sk-1"));
        let Head::Fast(request) = parse_request(&wire, &config, None) else {
            return Ok(());
        };
        let mut message = wire[..request.head_len].to_vec();
        message.resize(request.head_len + request.body_len, fill);
        let hyper = runtime().block_on(hyper_reads(&message));
        prop_assert_eq!(
            hyper,
            Some(("POST".to_owned(), request.path.clone(), message[request.head_len..].to_vec())),
            "{:?}",
            String::from_utf8_lossy(&message)
        );
    }
}
