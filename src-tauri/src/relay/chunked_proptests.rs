//! Property tests of the chunked decoder that follows backends' answers on the fast path: no
//! bytes, however they are split, make it panic, and on chunked bodies (valid ones and broken
//! ones) it finds the same data and the same end as hyper, which the router's side uses.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed case, with the value in the message

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Chunked, State};

/// How our decoder read a body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The message ended `at` bytes into the input, with this data.
    Ended {
        at: usize,
        data: Vec<u8>,
    },
    /// All the input was read and the message has not ended yet.
    Unfinished,
    Malformed,
}

/// Feeds `wire` to a fresh decoder in the pieces that `splits` cut it into.
fn decode(wire: &[u8], splits: &[usize]) -> Verdict {
    let mut cuts: Vec<usize> = splits.iter().map(|at| at % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut chunked = Chunked::default();
    let mut data = Vec::new();
    let mut from = 0;
    for to in cuts {
        let piece = &wire[from..to];
        match chunked.feed(piece, |bytes| data.extend_from_slice(bytes)) {
            Ok(Some(end)) => {
                assert!(
                    end <= piece.len(),
                    "end {end} past the piece of {}",
                    piece.len()
                );
                return Verdict::Ended {
                    at: from + end,
                    data,
                };
            }
            Ok(None) => {}
            Err(_) => return Verdict::Malformed,
        }
        from = to;
    }
    Verdict::Unfinished
}

/// What hyper's HTTP/1 server reads from `POST` with `body` as its chunked body, then a
/// pipelined `GET /next`: the body's data when hyper took the body whole and found its end
/// exactly where the body ends (the next request was then read as one), or `None`.
async fn hyper_reads(body: &[u8], splits: &[usize]) -> Option<Vec<u8>> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let service = service_fn(
        |request: hyper::Request<hyper::body::Incoming>| async move {
            // Exactly the pipelined request: bytes after a body's end that hyper reads as part of
            // the next request line (`0GET /next`) are not the body's.
            let answer = if request.method() == hyper::Method::GET && request.uri() == "/next" {
                hyper::Response::new(Full::new(Bytes::from_static(b"next")))
            } else {
                match request.into_body().collect().await {
                    Ok(collected) => hyper::Response::new(Full::new(collected.to_bytes())),
                    Err(_) => hyper::Response::builder()
                        .status(400)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                }
            };
            Ok::<_, Infallible>(answer)
        },
    );
    let connection = tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), service),
    );
    let mut wire = b"POST /body HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let head = wire.len();
    wire.extend_from_slice(body);
    wire.extend_from_slice(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut cuts: Vec<usize> = splits
        .iter()
        .map(|at| head + at % (body.len() + 1))
        .collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let (mut read, mut write) = tokio::io::split(&mut client);
    let send = async {
        let mut from = 0;
        for to in cuts {
            // hyper may close the connection on a broken body before it read all of it.
            if write.write_all(&wire[from..to]).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
            from = to;
        }
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
    let answers = responses(&answers);
    match answers.as_slice() {
        [(200, data), (200, next), ..] if next == b"next" => Some(data.clone()),
        _ => None,
    }
}

/// The status and body of each `content-length` answer in `bytes`.
fn responses(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = response.parse(bytes) else {
            return out;
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let Some(body) = bytes.get(len..len + length) else {
            return out;
        };
        out.push((response.code.unwrap_or(0), body.to_vec()));
        bytes = &bytes[len + length..];
    }
}

/// A valid chunked body and its data: chunk sizes in either case with leading zeros, chunk
/// extensions (quoted or not, with whitespace before the `;`), and trailers.
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let extension = "([ \t]{0,2};[a-z]{1,5}(=([a-z0-9]{1,5}|\"[a-z ;]{0,5}\"))?){0,2}";
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..48),
        0usize..3,
        any::<bool>(),
        extension,
    );
    let trailer = "[A-Za-z][A-Za-z0-9-]{0,8}:[ ]?[!-~]([ !-~]{0,8}[!-~])?";
    (
        proptest::collection::vec(chunk, 0..6),
        extension,
        proptest::collection::vec(trailer, 0..3),
    )
        .prop_map(|(chunks, last_extension, trailers)| {
            let mut wire = Vec::new();
            let mut data = Vec::new();
            for (bytes, zeros, upper, extension) in chunks {
                let size = if upper {
                    format!("{:X}", bytes.len())
                } else {
                    format!("{:x}", bytes.len())
                };
                wire.extend_from_slice(
                    format!("{}{size}{extension}\r\n", "0".repeat(zeros)).as_bytes(),
                );
                wire.extend_from_slice(&bytes);
                wire.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            wire.extend_from_slice(format!("0{last_extension}\r\n").as_bytes());
            for trailer in trailers {
                wire.extend_from_slice(format!("{trailer}\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            (wire, data)
        })
}

/// One change to a valid body: a byte replaced, removed or added, or a CRLF cut to LF.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(proptest::sample::Index, u8),
    Remove(proptest::sample::Index),
    Insert(proptest::sample::Index, u8),
    BareLf(proptest::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        3 => proptest::sample::select(b"\r\n;= \t\"0179aAfFgG:-\x00\x7f\xff".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<proptest::sample::Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        any::<proptest::sample::Index>().prop_map(Mutation::Remove),
        (any::<proptest::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<proptest::sample::Index>().prop_map(Mutation::BareLf),
    ]
}

fn mutate(mut wire: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::Replace(at, byte) => *at.get_mut(&mut wire) = *byte,
        Mutation::Remove(at) => {
            wire.remove(at.index(wire.len()));
        }
        Mutation::Insert(at, byte) => wire.insert(at.index(wire.len() + 1), *byte),
        Mutation::BareLf(at) => {
            let crlfs: Vec<usize> = wire
                .windows(2)
                .enumerate()
                .filter(|(_, pair)| pair == b"\r\n")
                .map(|(i, _)| i)
                .collect();
            if !crlfs.is_empty() {
                wire.remove(crlfs[at.index(crlfs.len())]);
            }
        }
    }
    wire
}

/// Which of our decoder's two leniencies reading `wire` took: a size or data line ended by LF
/// alone, which RFC 9112 §2.2 lets a recipient accept, and a trailer line that is not a header
/// field (the trailers are skipped, never read). hyper refuses both.
fn leniencies(wire: &[u8]) -> (bool, bool) {
    let mut chunked = Chunked::default();
    let (mut bare_lf, mut odd_trailer) = (false, false);
    let mut trailer_from = 0;
    for (at, &byte) in wire.iter().enumerate() {
        let before = chunked.state;
        let fed = chunked.feed(&wire[at..=at], |_| {});
        if byte == b'\n' {
            bare_lf |= matches!(
                before,
                State::Size { .. } | State::SizeWs { .. } | State::Extension { .. } | State::DataCr
            );
            if before == State::TrailerLf {
                let mut line = wire[trailer_from..at - 1].to_vec();
                line.extend_from_slice(b"\r\n\r\n");
                let mut headers = [httparse::EMPTY_HEADER; 2];
                odd_trailer |= !matches!(
                    httparse::parse_headers(&line, &mut headers),
                    Ok(httparse::Status::Complete((_, [_])))
                );
            }
        }
        if before == State::TrailerStart && chunked.state == State::TrailerLine {
            trailer_from = at;
        }
        if fed != Ok(None) {
            break;
        }
    }
    (bare_lf, odd_trailer)
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
    fn no_bytes_in_any_split_make_the_chunked_decoder_panic(
        wire in prop_oneof![
            any::<Vec<u8>>(),
            proptest::collection::vec(
                proptest::sample::select(b"0123456789abcdefABCDEF;= \t\r\n\"xz".to_vec()),
                0..128,
            ),
        ],
        splits in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let verdict = decode(&wire, &splits);
        if let Verdict::Ended { at, data } = &verdict {
            prop_assert!(*at <= wire.len() && data.len() < wire.len());
        }
        // Where the bytes are cut changes nothing.
        prop_assert_eq!(decode(&wire, &[]), verdict);
    }
}

proptest! {
    #![proptest_config(crate::fuzz::config(256))]

    #[test]
    fn a_valid_chunked_body_reads_the_same_as_in_hyper(
        (wire, data) in chunked_body(),
        splits in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let ours = decode(&wire, &splits);
        prop_assert_eq!(&ours, &Verdict::Ended { at: wire.len(), data: data.clone() });
        let hyper = runtime().block_on(hyper_reads(&wire, &splits));
        prop_assert_eq!(hyper, Some(data));
    }

    #[test]
    fn a_broken_chunked_body_is_refused_or_read_as_hyper_reads_it(
        (wire, _) in chunked_body(),
        mutation in mutation(),
        splits in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let wire = mutate(wire, &mutation);
        let ours = decode(&wire, &splits);
        let hyper = runtime().block_on(hyper_reads(&wire, &splits));
        match (&ours, hyper) {
            // Where hyper takes the body, we find the same data and the same end: the backend
            // connection is reused exactly when a strict reader would reuse it.
            // (Empty lines after the end are skipped by hyper's request parser, as RFC 9112
            // §2.2 lets a server do, so they may stand between our end and the next request.)
            (_, Some(data)) => {
                let at = match ours {
                    Verdict::Ended { at, .. } if wire[at..].iter().all(|b| b"\r\n".contains(b)) => at,
                    _ => wire.len(),
                };
                prop_assert_eq!(ours, Verdict::Ended { at, data });
            }
            // Where hyper refuses it, we refuse it too or stop elsewhere, unless one of our
            // leniencies took it.
            (Verdict::Ended { at, .. }, None) if *at == wire.len() => {
                let (bare_lf, odd_trailer) = leniencies(&wire);
                prop_assert!(
                    bare_lf || odd_trailer,
                    "accepted what hyper refuses: {:?}",
                    String::from_utf8_lossy(&wire)
                );
            }
            (_, None) => {}
        }
    }
}
