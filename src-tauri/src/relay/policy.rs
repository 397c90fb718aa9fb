//! The header policy of the relay: which of a client's request headers reach the backend and
//! which of a backend's answer headers reach the client, whichever server parsed the request.

/// What happens to one header of a client's request on its way to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestHeader {
    /// Passed on as it is.
    Forward,
    /// Describes the client's connection, not the request (RFC 9110 §7.6.1): never passed on.
    HopByHop,
    /// Authenticated the client to Corral: never passed on, the backend gets the key Corral
    /// holds for it instead (a backend's page could read the client's).
    ClientCredential,
    /// Corral writes its own (`Host` for the backend, `X-Forwarded-*`); the client's would lie
    /// to the backend about where the request came from.
    SetByCorral,
    /// Cookies: Corral's page cookie is taken out, the backend's own go on (see
    /// [`backend_cookies`]).
    Cookie,
}

/// Headers that describe one connection, not the message.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What happens to request header `name` (any case). Headers that `Connection` names are
/// hop-by-hop too; the caller checks those.
pub fn request_header(name: &str) -> RequestHeader {
    let is = |other: &str| name.eq_ignore_ascii_case(other);
    // Corral answers a client's `Expect: 100-continue` itself and sends the body whole: the
    // backend is not to be asked again.
    if HOP_BY_HOP.into_iter().any(is) || is("expect") {
        RequestHeader::HopByHop
    } else if is("authorization") || is("x-api-key") {
        RequestHeader::ClientCredential
    } else if is("host") || is("x-forwarded-host") || is("x-forwarded-proto") {
        RequestHeader::SetByCorral
    } else if is("cookie") {
        RequestHeader::Cookie
    } else {
        RequestHeader::Forward
    }
}

/// Whether answer header `name` (any case) reaches the client: not hop-by-hop, and not CORS,
/// since Corral's own CORS policy applies, not the backend's. Framing headers are the relay's
/// to keep or rewrite.
pub fn response_header_kept(name: &str) -> bool {
    let hop_by_hop = HOP_BY_HOP
        .into_iter()
        .filter(|&hop| hop != "transfer-encoding")
        .any(|hop| name.eq_ignore_ascii_case(hop));
    let cors = name
        .get(..15)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("access-control-"));
    !hop_by_hop && !cors
}

/// The `Cookie` header the backend gets from the client's `values`: every cookie but Corral's
/// own page cookie, joined into one header; `None` when none is left.
pub fn backend_cookies<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let kept: Vec<&str> = values
        .into_iter()
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !crate::api::auth::is_corral_cookie(pair))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Whether a backend connection may carry another request after an answer of `content_type`
/// ended. Not after a stream (SSE): llama-server closes its connection right after every
/// streamed answer, without saying so in the answer, and a request sent on it in that moment
/// is lost (it was written, so it cannot be sent again safely). A stream lasts seconds; a new
/// loopback connection costs a fraction of a millisecond.
pub fn reuse_after(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    !media.eq_ignore_ascii_case("text/event-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_connection_headers_and_forwarding_claims_never_reach_the_backend() {
        use RequestHeader as R;
        for (name, rule) in [
            ("Authorization", R::ClientCredential),
            ("X-API-Key", R::ClientCredential),
            ("Connection", R::HopByHop),
            ("Proxy-Authorization", R::HopByHop),
            ("TE", R::HopByHop),
            ("Expect", R::HopByHop),
            ("Host", R::SetByCorral),
            ("X-Forwarded-Host", R::SetByCorral),
            ("x-forwarded-proto", R::SetByCorral),
            ("Cookie", R::Cookie),
            ("Accept", R::Forward),
            ("X-Forwarded-For", R::Forward),
            ("Content-Type", R::Forward),
        ] {
            assert_eq!(request_header(name), rule, "{name}");
        }
    }

    #[test]
    fn the_backends_cors_and_connection_headers_never_reach_the_client() {
        for name in [
            "Access-Control-Allow-Origin",
            "access-control-allow-credentials",
            "Connection",
            "Keep-Alive",
            "Upgrade",
            "Trailer",
        ] {
            assert!(!response_header_kept(name), "{name}");
        }
        for name in [
            "Content-Type",
            "Set-Cookie",
            "Transfer-Encoding",
            "X-Request-Id",
            "Access",
        ] {
            assert!(response_header_kept(name), "{name}");
        }
    }

    #[test]
    fn a_connection_is_reused_after_any_answer_but_a_stream() {
        assert!(reuse_after("application/json"));
        assert!(reuse_after(""));
        assert!(!reuse_after("text/event-stream"));
        assert!(!reuse_after("Text/Event-Stream; charset=utf-8"));
    }

    #[test]
    fn only_corrals_page_cookie_is_taken_out() {
        let cookie = format!("{}=secret", crate::api::auth::PROXY_COOKIE);
        assert_eq!(
            backend_cookies(
                ["a=1; ".to_owned() + &cookie, "b=2".into()]
                    .iter()
                    .map(String::as_str)
            ),
            Some("a=1; b=2".to_owned())
        );
        assert_eq!(backend_cookies([cookie.as_str()]), None);
    }
}
