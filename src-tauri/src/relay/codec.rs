//! HTTP/1.1 on the backend side of the relay, as bytes: the request head a backend gets (built
//! from a borrowed view of the client's headers, whichever server parsed them), the backend's
//! answer head and how its body is framed. Both client-side servers (the fast path's byte codec
//! and hyper) hand the relay the same things, so a backend sees the same request from either.

use axum::http::StatusCode;

use super::chunked::{Chunked, Malformed};
use super::policy::{self, RequestHeader};
use crate::instances::Upstream;

/// Headers a backend's answer may have.
const MAX_RESPONSE_HEADERS: usize = 100;

/// How the request body is delimited on the way to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no length header (a `GET`).
    None,
    Length(u64),
    Chunked,
}

/// The request head the backend at `upstream` gets: origin-form `path_and_query` over HTTP/1.1,
/// Corral's own `Host` and credential for it, the body's framing, then `forwarded` (the client's
/// headers as [`forwarded_headers`] wrote them).
pub fn request_head(
    method: &str,
    path_and_query: &str,
    upstream: &Upstream,
    framing: RequestFraming,
    forwarded: &[u8],
    extra: usize,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(path_and_query.len() + forwarded.len() + 128 + extra);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(path_and_query.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(upstream.authority.as_bytes());
    head.extend_from_slice(b"\r\n");
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(length) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(length.to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if let Some(credential) = &upstream.credential {
        head.extend_from_slice(b"authorization: Bearer ");
        head.extend_from_slice(credential.expose().as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(forwarded);
    head.extend_from_slice(b"\r\n");
    head
}

/// Appends to `out`, as `name: value\r\n` lines, the client's `headers` that reach the backend
/// ([`policy::request_header`]; the ones `Connection` names are hop-by-hop too), its other
/// cookies in one `Cookie` header, and where the request was sent (`X-Forwarded-Host`, from the
/// first `Host`, and `X-Forwarded-Proto`). Framing headers are left out: the relay frames the
/// body it sends.
pub fn forwarded_headers<'a, I>(headers: I, out: &mut Vec<u8>)
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
    I::IntoIter: Clone,
{
    let headers = headers.into_iter();
    let named: Vec<&[u8]> = headers
        .clone()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
        .collect();
    let mut host = None;
    let mut cookies = Vec::new();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length")
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        match policy::request_header(name) {
            RequestHeader::Forward => {}
            RequestHeader::SetByCorral => {
                if name.eq_ignore_ascii_case("host") {
                    host = host.or(Some(value));
                }
                continue;
            }
            RequestHeader::HopByHop | RequestHeader::ClientCredential => continue,
            RequestHeader::Cookie => {
                cookies.extend(std::str::from_utf8(value).ok());
                continue;
            }
        }
        push_header(out, name.as_bytes(), value);
    }
    if let Some(cookie) = policy::backend_cookies(cookies) {
        push_header(out, b"cookie", cookie.as_bytes());
    }
    if let Some(host) = host {
        push_header(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunks: the body ends when the backend closes the connection.
    UntilClose,
}

/// The backend's answer head, and the one the client gets.
pub struct ResponseHead {
    /// Its length on the wire.
    pub len: usize,
    pub status: StatusCode,
    pub content_type: String,
    pub framing: Framing,
    /// The backend connection can carry another request after this answer.
    pub keep_alive: bool,
    /// The head for the client, as an HTTP/1.1 head: the backend's headers less hop-by-hop and
    /// CORS ones, with the framing headers of the body as it goes on unchanged.
    pub client_head: Vec<u8>,
}

pub enum Parsed {
    Partial,
    /// A 1xx answer of `len` bytes, which a client that did not ask for one does not get.
    Interim(usize),
    Final(ResponseHead),
}

/// Reads an answer head off the front of `buf`; `to_head` says the request was a `HEAD`, whose
/// answer has no body whatever its length header says.
pub fn parse_response(buf: &[u8], to_head: bool) -> Result<Parsed, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(format!("invalid answer: {e}")),
    };
    let (Some(code), Some(version)) = (parsed.code, parsed.version) else {
        return Err("invalid answer".to_owned());
    };
    let status = StatusCode::from_u16(code).map_err(|e| format!("invalid answer: {e}"))?;
    if status.is_informational() {
        if code == 101 {
            return Err("the backend switched protocols unasked".to_owned());
        }
        return Ok(Parsed::Interim(len));
    }
    let token_in = |value: &[u8], token: &str| {
        value
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let mut length = None;
    let mut chunked = false;
    let mut close = version == 0;
    let mut content_type = String::new();
    let mut named = Vec::new();
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or("invalid Content-Length in the answer")?;
            if length.is_some_and(|length| length != value) {
                return Err("conflicting Content-Length in the answer".to_owned());
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked is always the last coding when it applies.
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                length = None;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close |= token_in(header.value, "close");
            named.extend(
                header
                    .value
                    .split(|&b| b == b',')
                    .map(|item| item.trim_ascii().to_ascii_lowercase()),
            );
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = String::from_utf8_lossy(header.value).into_owned();
        }
    }
    let framing = if code == 204 || code == 304 || to_head {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };

    let mut client_head = Vec::with_capacity(len + 64);
    client_head.extend_from_slice(b"HTTP/1.1 ");
    client_head.extend_from_slice(status.as_str().as_bytes());
    client_head.push(b' ');
    client_head.extend_from_slice(parsed.reason.unwrap_or_default().as_bytes());
    client_head.extend_from_slice(b"\r\n");
    for header in parsed.headers.iter() {
        let name = header.name;
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        // The body goes on as it came, so its framing headers do too (a `HEAD` answer's
        // length describes the body a `GET` would get: it goes on as well).
        let dropped = !policy::response_header_kept(name)
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            || (is("transfer-encoding") && !chunked)
            || (is("content-length") && chunked);
        if dropped {
            continue;
        }
        push_header(&mut client_head, name.as_bytes(), header.value);
    }
    if framing == Framing::UntilClose {
        client_head.extend_from_slice(b"connection: close\r\n");
    }
    client_head.extend_from_slice(b"\r\n");
    Ok(Parsed::Final(ResponseHead {
        len,
        status,
        content_type,
        framing,
        keep_alive: !close && framing != Framing::UntilClose,
        client_head,
    }))
}

/// Where the relay is in the answer's body.
pub enum BodyState {
    Empty,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    /// The chunked framing broke: relay what came and stop.
    Broken,
}

impl BodyState {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyState::Empty,
            Framing::Length(length) => BodyState::Length(length),
            Framing::Chunked => BodyState::Chunked(Chunked::default()),
            Framing::UntilClose => BodyState::UntilClose,
        }
    }

    /// How many of `bytes` belong to the body, and whether it ended with them; the body's data
    /// within them goes to `data` (without the chunked framing). An error means the framing
    /// broke: the bytes are relayed as they came, and the body ends there.
    pub fn take(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), Malformed> {
        match self {
            BodyState::Empty => Ok((0, true)),
            BodyState::Length(left) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                data(&bytes[..take]);
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            BodyState::Chunked(chunked) => match chunked.feed(bytes, data) {
                Ok(Some(end)) => Ok((end, true)),
                Ok(None) => Ok((bytes.len(), false)),
                Err(malformed) => {
                    *self = BodyState::Broken;
                    Err(malformed)
                }
            },
            BodyState::UntilClose => {
                data(bytes);
                Ok((bytes.len(), false))
            }
            BodyState::Broken => Err(Malformed),
        }
    }

    /// The connection ends with this answer: its end is the close (or could not be found).
    pub fn ends_at_close(&self) -> bool {
        matches!(self, BodyState::UntilClose | BodyState::Broken)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn answer(head: &str) -> ResponseHead {
        match parse_response(head.as_bytes(), false).unwrap() {
            Parsed::Final(head) => head,
            _ => panic!("not a final answer: {head}"),
        }
    }

    #[test]
    fn the_answer_head_loses_hop_by_hop_and_cors_headers_and_keeps_its_framing() {
        let head = answer(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: 9\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Access-Control-Allow-Origin: *\r\nX-Kept: yes\r\n\r\ndata",
        );
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.content_type, "text/event-stream");
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        assert_eq!(
            String::from_utf8(head.client_head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
             Transfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n"
        );

        let sized = answer("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(sized.framing, Framing::Length(5));
        let closing = answer("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(closing.framing, Framing::Empty);
        assert!(!closing.keep_alive);
        let unframed = answer("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n");
        assert_eq!(unframed.framing, Framing::UntilClose);
        assert!(!unframed.keep_alive);
        assert!(String::from_utf8(unframed.client_head)
            .unwrap()
            .ends_with("connection: close\r\n\r\n"));
        assert_eq!(
            answer("HTTP/1.1 204 No Content\r\n\r\n").framing,
            Framing::Empty
        );

        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false),
            Ok(Parsed::Interim(25))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n", false),
            Ok(Parsed::Partial)
        ));
        for broken in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_response(broken, false).is_err());
        }
    }

    #[test]
    fn the_answer_to_a_head_request_has_no_body_but_keeps_its_length() {
        let Parsed::Final(head) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap()
        else {
            panic!("not a final answer");
        };
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert!(String::from_utf8(head.client_head)
            .unwrap()
            .contains("Content-Length: 5\r\n"));
    }

    fn forwarded(headers: &[(&str, &str)]) -> String {
        let mut out = Vec::new();
        forwarded_headers(
            headers
                .iter()
                .map(|(name, value)| (*name, value.as_bytes())),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_backend_gets_the_clients_headers_less_connection_credentials_and_framing() {
        let cookie = format!("theme=dark; {}=abc", crate::api::auth::PROXY_COOKIE);
        assert_eq!(
            forwarded(&[
                ("Host", "localhost:8080"),
                ("Host", "second"),
                ("Authorization", "Bearer sk-1"),
                ("X-API-Key", "sk-1"),
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "1"),
                ("Content-Length", "2"),
                ("Transfer-Encoding", "chunked"),
                ("Cookie", &cookie),
                ("X-Forwarded-Host", "evil"),
                ("X-Request-Id", "7"),
            ]),
            "X-Request-Id: 7\r\ncookie: theme=dark\r\nx-forwarded-host: localhost:8080\r\n\
             x-forwarded-proto: http\r\n"
        );
        assert_eq!(forwarded(&[]), "x-forwarded-proto: http\r\n");
    }

    #[test]
    fn the_request_head_names_the_backend_and_frames_the_body() {
        let upstream = Upstream {
            name: "a".to_owned(),
            authority: "127.0.0.1:9".to_owned(),
            credential: None,
        };
        let head = request_head(
            "POST",
            "/v1/x?a=1",
            &upstream,
            RequestFraming::Length(2),
            b"x-a: 1\r\n",
            0,
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /v1/x?a=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-length: 2\r\nx-a: 1\r\n\r\n"
        );
        let chunked = request_head("PUT", "/", &upstream, RequestFraming::Chunked, b"", 0);
        assert!(String::from_utf8(chunked)
            .unwrap()
            .contains("\r\ntransfer-encoding: chunked\r\n"));
    }
}
