//! A local stand-in for huggingface.co: the model-info API and the file endpoints over
//! generated files, with LFS files redirected to a CDN-like path, and knobs to cut a transfer
//! once, serve wrong bytes, or throttle. It records the ranges it was asked for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use sha2::Digest;

/// Bytes per chunk of a served body.
const CHUNK: usize = 16 * 1024;

/// One file of a fake repository.
#[derive(Clone)]
pub struct FakeFile {
    pub name: String,
    pub bytes: Bytes,
    /// Served through the CDN redirect, with the sha256 as `X-Linked-Etag`; otherwise inline
    /// with the git blob id as `ETag`.
    pub lfs: bool,
    /// Hashed once: the bench serves files of hundreds of MiB.
    sha256: String,
    git_sha1: String,
}

impl FakeFile {
    /// `size` bytes that differ per file name (so a mix-up shows).
    pub fn generated(name: &str, size: usize, lfs: bool) -> FakeFile {
        let seed = name
            .bytes()
            .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
        let bytes: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 11) as u8)
            .collect();
        let mut git = sha1::Sha1::new();
        git.update(format!("blob {}\0", bytes.len()).as_bytes());
        git.update(&bytes);
        FakeFile {
            name: name.to_owned(),
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            git_sha1: hex::encode(git.finalize()),
            bytes: bytes.into(),
            lfs,
        }
    }

    pub fn sha256(&self) -> String {
        self.sha256.clone()
    }

    pub fn git_sha1(&self) -> String {
        self.git_sha1.clone()
    }

    /// The blob's name in the cache.
    pub fn blob_name(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_sha1()
        }
    }
}

/// A repository: its commit and files.
#[derive(Clone)]
pub struct FakeRepo {
    pub commit: String,
    pub files: Vec<FakeFile>,
    /// Names listed in the model info but never served (a hostile hub's `../../.bashrc`).
    pub extra_names: Vec<String>,
}

impl FakeRepo {
    pub fn new(commit_seed: char, files: Vec<FakeFile>) -> FakeRepo {
        FakeRepo {
            commit: commit_seed.to_string().repeat(40),
            files,
            extra_names: Vec::new(),
        }
    }

    pub fn file(&self, name: &str) -> &FakeFile {
        self.files
            .iter()
            .find(|file| file.name == name)
            .unwrap_or_else(|| panic!("no file {name}"))
    }
}

/// What the tests turn and read.
#[derive(Default)]
pub struct Knobs {
    /// Bytes per second of every body; 0 means as fast as it goes.
    pub throttle: AtomicU64,
    /// Cut the next transfer of this file after this many bytes (once).
    pub cut_once: Mutex<Option<(String, usize)>>,
    /// Files served with flipped bytes.
    pub corrupt: Mutex<Vec<String>>,
    /// Every GET of file bytes: the file and the start of its range (0 without one).
    pub gets: Mutex<Vec<(String, u64)>>,
    /// Files whose announced size (`X-Linked-Size`) is this instead of their own: a hub that
    /// claims more than any disk has.
    pub announced_size: Mutex<Vec<(String, u64)>>,
}

impl Knobs {
    /// The ranged GETs (start > 0) of `file`.
    pub fn ranges_of(&self, file: &str) -> Vec<u64> {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, start)| name == file && *start > 0)
            .map(|(_, start)| *start)
            .collect()
    }

    pub fn set_throttle(&self, bytes_per_second: u64) {
        self.throttle.store(bytes_per_second, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Hub {
    repos: Arc<HashMap<String, FakeRepo>>,
    knobs: Arc<Knobs>,
    /// The CDN's own listener: another origin, as cdn-lfs.hf.co is.
    cdn: SocketAddr,
}

/// A running fake hub.
pub struct FakeHub {
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    pub repos: Arc<HashMap<String, FakeRepo>>,
}

impl FakeHub {
    pub async fn start(repos: Vec<(&str, FakeRepo)>) -> FakeHub {
        let repos: Arc<HashMap<String, FakeRepo>> = Arc::new(
            repos
                .into_iter()
                .map(|(id, repo)| (id.to_owned(), repo))
                .collect(),
        );
        let knobs = Arc::new(Knobs::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cdn_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Hub {
            repos: Arc::clone(&repos),
            knobs: Arc::clone(&knobs),
            cdn: cdn_listener.local_addr().unwrap(),
        };
        let app = Router::new()
            .route("/api/models/{org}/{name}", get(info))
            .route("/api/models/{org}/{name}/revision/{rev}", get(info_at))
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
            .route("/cdn/{repo}/{*file}", get(cdn))
            .with_state(state);
        let cdn = app.clone();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        tokio::spawn(async move { axum::serve(cdn_listener, cdn).await.unwrap() });
        FakeHub { addr, knobs, repos }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn repo(&self, id: &str) -> &FakeRepo {
        &self.repos[id]
    }
}

async fn info(State(hub): State<Hub>, Path((org, name)): Path<(String, String)>) -> Response {
    model_info(&hub, &format!("{org}/{name}"), None)
}

async fn info_at(
    State(hub): State<Hub>,
    Path((org, name, rev)): Path<(String, String, String)>,
) -> Response {
    model_info(&hub, &format!("{org}/{name}"), Some(&rev))
}

fn model_info(hub: &Hub, id: &str, rev: Option<&str>) -> Response {
    let Some(repo) = hub.repos.get(id) else {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    };
    if rev.is_some_and(|rev| rev != repo.commit && rev != "main") {
        return (StatusCode::NOT_FOUND, "Revision not found").into_response();
    }
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|file| file.name.clone())
        .chain(repo.extra_names.iter().cloned())
        .map(|name| serde_json::json!({ "rfilename": name }))
        .collect();
    axum::Json(serde_json::json!({
        "id": id,
        "modelId": id,
        "sha": repo.commit,
        "siblings": siblings,
    }))
    .into_response()
}

async fn resolve(
    State(hub): State<Hub>,
    Path((org, name, rev, file)): Path<(String, String, String, String)>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    let id = format!("{org}/{name}");
    let Some(repo) = hub.repos.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(found) = repo.files.iter().find(|f| f.name == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if rev != repo.commit && rev != "main" {
        return StatusCode::NOT_FOUND.into_response();
    }
    if found.lfs {
        // As huggingface.co: a redirect to the CDN, the metadata on the redirect itself.
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(
                header::LOCATION,
                format!("http://{}/cdn/{org}--{name}/{file}", hub.cdn),
            )
            .header("x-repo-commit", &repo.commit)
            .header("x-linked-etag", format!("\"{}\"", found.sha256()))
            .header(
                "x-linked-size",
                hub.knobs
                    .announced_size
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(name, _)| *name == file)
                    .map_or(found.bytes.len() as u64, |(_, size)| *size)
                    .to_string(),
            )
            .header(header::ETAG, format!("\"{}\"", found.git_sha1()))
            .body(Body::empty())
            .unwrap();
    }
    let mut response = if method == axum::http::Method::HEAD {
        Response::builder()
            .header(header::CONTENT_LENGTH, found.bytes.len().to_string())
            .body(Body::empty())
            .unwrap()
    } else {
        serve_bytes(&hub, found, &headers)
    };
    let extra = response.headers_mut();
    extra.insert("x-repo-commit", repo.commit.parse().unwrap());
    extra.insert(
        header::ETAG,
        format!("\"{}\"", found.git_sha1()).parse().unwrap(),
    );
    response
}

async fn cdn(
    State(hub): State<Hub>,
    Path((repo, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = repo.replacen("--", "/", 1);
    let Some(found) = hub
        .repos
        .get(&id)
        .and_then(|repo| repo.files.iter().find(|f| f.name == file))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A CDN never sees the hub's token.
    if headers.contains_key(header::AUTHORIZATION) {
        return (StatusCode::BAD_REQUEST, "token sent to the CDN").into_response();
    }
    serve_bytes(&hub, found, &headers)
}

/// The file's bytes, from the `Range` start if one is asked, with the knobs applied.
fn serve_bytes(hub: &Hub, file: &FakeFile, headers: &HeaderMap) -> Response {
    let total = file.bytes.len();
    let start = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("bytes="))
        .and_then(|value| value.strip_suffix('-'))
        .and_then(|value| value.parse::<usize>().ok());
    if start.is_some_and(|start| start >= total) {
        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    }
    hub.knobs
        .gets
        .lock()
        .unwrap()
        .push((file.name.clone(), start.unwrap_or(0) as u64));
    let offset = start.unwrap_or(0);
    let mut bytes = file.bytes.slice(offset..);
    if hub.knobs.corrupt.lock().unwrap().contains(&file.name) {
        let mut flipped = bytes.to_vec();
        for byte in flipped.iter_mut().step_by(997) {
            *byte ^= 0xff;
        }
        bytes = flipped.into();
    }
    let cut = {
        let mut cut = hub.knobs.cut_once.lock().unwrap();
        match cut.as_ref() {
            Some((name, after)) if *name == file.name => {
                let after = *after;
                *cut = None;
                Some(after)
            }
            _ => None,
        }
    };
    let knobs = Arc::clone(&hub.knobs);
    let body = futures_util::stream::unfold((bytes, 0usize), move |(bytes, sent)| {
        let knobs = Arc::clone(&knobs);
        async move {
            if sent >= bytes.len() {
                return None;
            }
            if cut.is_some_and(|cut| sent >= cut) {
                return Some((
                    Err(std::io::Error::other("connection cut by the test")),
                    (bytes, usize::MAX),
                ));
            }
            let mut end = (sent + CHUNK).min(bytes.len());
            if let Some(cut) = cut {
                if sent < cut {
                    end = end.min(cut);
                }
            }
            let rate = knobs.throttle.load(Ordering::SeqCst);
            if rate > 0 {
                let pause = (end - sent) as f64 / rate as f64;
                tokio::time::sleep(Duration::from_secs_f64(pause)).await;
            }
            Some((Ok(bytes.slice(sent..end)), (bytes, end)))
        }
    });
    let mut response = Response::builder()
        .header(header::CONTENT_LENGTH, (total - offset).to_string())
        .header(header::ACCEPT_RANGES, "bytes");
    response = match start {
        Some(start) => response.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1),
        ),
        None => response.status(StatusCode::OK),
    };
    response.body(Body::from_stream(body)).unwrap()
}
