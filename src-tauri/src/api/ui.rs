//! The web UI: `ui/dist` embedded in the binary and served at `/` and every other path that is
//! not an API route, with the single-page app's fallback to `index.html`.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

use super::error::ApiError;

/// `ui/dist` as it was when this binary was built (`build.rs` rebuilds the crate when it
/// changes); empty when the UI was not built.
#[derive(Embed)]
#[folder = "../ui/dist"]
#[allow_missing = true]
struct Dist;

/// Vite puts content-hashed files here: a name never changes meaning, so browsers may keep them.
const HASHED_DIR: &str = "assets/";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Shown instead of the app when the binary was built without `ui/dist`.
const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Corral: the web UI is not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>Corral is running, but its web UI is not built</h1>
<p>This binary was built without <code>ui/dist</code>. Build the UI with
<code>scripts/build-ui.sh</code> (needs Node.js and npm), then build Corral again;
<code>scripts/run.sh</code> does both.</p>
<p>The API works meanwhile: see <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
</body>
</html>
"#;

/// Whether this binary carries the web UI.
pub fn is_embedded() -> bool {
    Dist::get("index.html").is_some()
}

/// Serves a file of the UI, or `index.html` for the app's own routes. Paths under `/api/` and
/// `/v1/` that no route took stay API errors: the UI never answers for the API.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    let is_api = ["/api", "/v1"]
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")));
    if is_api {
        return super::unknown_route().await.into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the web UI's files are read with GET",
        )
        .into_response();
    }
    let file = path.trim_start_matches('/');
    if !file.is_empty() {
        if let Some(content) = Dist::get(file) {
            let cache = if file.starts_with(HASHED_DIR) {
                IMMUTABLE
            } else {
                "no-cache"
            };
            return file_response(&headers, content, cache);
        }
        // A missing script or image is a 404, not the app's page in its place.
        let last = file.rsplit('/').next().unwrap_or_default();
        if last.contains('.') {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("the web UI has no file /{file}"),
            )
            .into_response();
        }
    }
    match Dist::get("index.html") {
        Some(index) => file_response(&headers, index, "no-cache"),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            NOT_BUILT,
        )
            .into_response(),
    }
}

/// The file with its type, cache policy and an ETag (its SHA-256), answering 304 to a
/// matching `If-None-Match`.
fn file_response(headers: &HeaderMap, file: rust_embed::EmbeddedFile, cache: &str) -> Response {
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tags| tags.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(file.data))
    };
    let headers = response.headers_mut();
    let content_type = match file.metadata.mimetype() {
        // Text without a charset would be read as Latin-1 by some browsers.
        text if text.starts_with("text/") && !text.contains("charset") => {
            format!("{text}; charset=utf-8")
        }
        other => other.to_owned(),
    };
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, cache.to_owned()),
        (header::ETAG, etag),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}
