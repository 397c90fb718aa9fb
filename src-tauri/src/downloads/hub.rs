//! The hub's HTTP API as Corral uses it: a repository's file list at a commit
//! (`/api/models/{repo}[/revision/{rev}]`), a file's metadata (`HEAD /{repo}/resolve/{rev}/{file}`,
//! whose redirect names the CDN copy of an LFS file), and ranged GETs of the bytes.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, LOCATION, RANGE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::names::{self, Digest, RepoId};
use super::DownloadError;

/// The model-info answer is a list of names; more than this is no model repository.
const MAX_INFO_BYTES: usize = 32 * 1024 * 1024;
/// Same-host redirects followed to find a file (a renamed repository), at most.
const MAX_REDIRECTS: usize = 5;

/// Where the hub is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Hub {
    client: reqwest::Client,
    /// `HF_ENDPOINT`. One that is no http(s) URL fails each download with the reason, rather
    /// than the engine's start.
    endpoint: Result<Url, String>,
    /// `HF_TOKEN`: sent to the endpoint only, never to the CDN it redirects to.
    token: Option<String>,
}

/// A repository at one commit: its files.
#[derive(Debug)]
pub struct ModelInfo {
    pub commit: String,
    pub files: Vec<String>,
}

/// What the hub says about one file before it is fetched.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub size: u64,
    pub digest: Digest,
    /// The bytes' URL: the CDN's for an LFS file, the resolve URL otherwise.
    pub url: Url,
}

#[derive(Deserialize)]
struct RawInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
}

impl Hub {
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Hub, DownloadError> {
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| format!("HF_ENDPOINT {endpoint:?} is not an http(s) URL"));
        if let Err(why) = &endpoint {
            tracing::warn!("{why}: downloads will fail");
        }
        let client = reqwest::Client::builder()
            // Redirects are read by hand: the token must not follow one to another host, and
            // the LFS redirect carries the file's metadata.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DownloadError::Settings(format!("cannot build the HTTP client: {e}")))?;
        Ok(Hub {
            client,
            endpoint,
            token: token.filter(|token| !token.trim().is_empty()),
        })
    }

    fn url(&self, path: &str) -> Result<Url, DownloadError> {
        let endpoint = self
            .endpoint
            .as_ref()
            .map_err(|why| DownloadError::Settings(why.clone()))?;
        // Every part of `path` was checked or percent-encoded by the caller.
        Url::parse(&format!(
            "{}{path}",
            endpoint.as_str().trim_end_matches('/')
        ))
        .map_err(|e| DownloadError::Protocol(format!("bad URL {path:?}: {e}")))
    }

    /// A GET or HEAD with the token when it goes to the endpoint itself.
    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let same_origin = self
            .endpoint
            .as_ref()
            .is_ok_and(|endpoint| endpoint.origin() == url.origin());
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) if same_origin => request.header(AUTHORIZATION, format!("Bearer {token}")),
            _ => request,
        }
    }

    /// The repository's commit and file list, at `revision` (a commit) or `main`.
    pub async fn model_info(
        &self,
        repo: &RepoId,
        revision: Option<&str>,
    ) -> Result<ModelInfo, DownloadError> {
        let path = match revision {
            Some(commit) => format!("/api/models/{repo}/revision/{commit}"),
            None => format!("/api/models/{repo}"),
        };
        let response = self
            .request(reqwest::Method::GET, self.url(&path)?)
            .send()
            .await?;
        check_status(response.status(), repo, None)?;
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk?);
            if body.len() > MAX_INFO_BYTES {
                return Err(DownloadError::Protocol(
                    "the model info is larger than 32 MiB".into(),
                ));
            }
        }
        let raw: RawInfo = serde_json::from_slice(&body)
            .map_err(|e| DownloadError::Protocol(format!("the model info is not valid: {e}")))?;
        Ok(ModelInfo {
            commit: names::check_commit(&raw.sha)?,
            files: raw.siblings.into_iter().map(|s| s.rfilename).collect(),
        })
    }

    /// The file's size, digest and the URL of its bytes.
    pub async fn file(
        &self,
        repo: &RepoId,
        commit: &str,
        file: &str,
    ) -> Result<RemoteFile, DownloadError> {
        let encoded: Vec<String> = file
            .split('/')
            .map(|part| percent_encoding::utf8_percent_encode(part, PATH_PART).to_string())
            .collect();
        let mut url = self.url(&format!("/{repo}/resolve/{commit}/{}", encoded.join("/")))?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self
                .request(reqwest::Method::HEAD, url.clone())
                .send()
                .await?;
            let status = response.status();
            let headers = response.headers();
            let linked = header(headers, "x-linked-etag");
            if status.is_redirection() {
                let location = header(headers, LOCATION.as_str()).ok_or_else(|| {
                    DownloadError::Protocol(format!("a redirect without Location for {file}"))
                })?;
                let next = url.join(location).map_err(|e| {
                    DownloadError::Protocol(format!("bad redirect for {file}: {e}"))
                })?;
                if !matches!(next.scheme(), "http" | "https") {
                    return Err(DownloadError::Protocol(format!(
                        "a redirect to a {} URL for {file}",
                        next.scheme()
                    )));
                }
                // The LFS redirect to the CDN carries the metadata; any other (a renamed
                // repository, the hub's resolve cache) is followed.
                if let Some(etag) = linked {
                    let size = header(headers, "x-linked-size").ok_or_else(|| {
                        DownloadError::Protocol(format!("no X-Linked-Size for {file}"))
                    })?;
                    return Ok(RemoteFile {
                        size: parse_size(size, file)?,
                        digest: Digest::from_etag(etag)?,
                        url: next,
                    });
                }
                url = next;
                continue;
            }
            check_status(status, repo, Some(file))?;
            let etag = linked
                .or_else(|| header(headers, ETAG.as_str()))
                .ok_or_else(|| DownloadError::Protocol(format!("no ETag for {file}")))?;
            let size = header(headers, "x-linked-size")
                .or_else(|| header(headers, CONTENT_LENGTH.as_str()))
                .ok_or_else(|| DownloadError::Protocol(format!("no size for {file}")))?;
            return Ok(RemoteFile {
                size: parse_size(size, file)?,
                digest: Digest::from_etag(etag)?,
                url,
            });
        }
        Err(DownloadError::Protocol(format!(
            "more than {MAX_REDIRECTS} redirects for {file}"
        )))
    }

    /// The file's bytes from `offset` on. A server that ignores the range answers 200 with the
    /// whole file; the caller sees which in `Fetch::from`.
    pub async fn fetch(&self, file: &RemoteFile, offset: u64) -> Result<Fetch, DownloadError> {
        let mut request = self.request(reqwest::Method::GET, file.url.clone());
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let response = request.send().await?;
        let from = match response.status() {
            StatusCode::OK => 0,
            StatusCode::PARTIAL_CONTENT => {
                let start = header(response.headers(), "content-range")
                    .and_then(|range| range.strip_prefix("bytes "))
                    .and_then(|range| range.split('-').next())
                    .and_then(|start| start.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(DownloadError::Protocol(
                        "the server answered another range than asked".into(),
                    ));
                }
                offset
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(DownloadError::Protocol(
                    "the server has fewer bytes than it announced".into(),
                ))
            }
            status => {
                return Err(DownloadError::Http {
                    status: status.as_u16(),
                    what: "the file's bytes".into(),
                })
            }
        };
        Ok(Fetch { from, response })
    }
}

/// An answer whose body holds the file's bytes from `from` on.
pub struct Fetch {
    pub from: u64,
    pub response: reqwest::Response,
}

/// Path characters a file name may keep in its URL; everything else is percent-encoded.
const PATH_PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn parse_size(text: &str, file: &str) -> Result<u64, DownloadError> {
    text.trim()
        .parse()
        .map_err(|_| DownloadError::Protocol(format!("bad size {text:?} for {file}")))
}

fn check_status(
    status: StatusCode,
    repo: &RepoId,
    file: Option<&str>,
) -> Result<(), DownloadError> {
    match status {
        status if status.is_success() => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(DownloadError::Unauthorized(repo.to_string()))
        }
        StatusCode::NOT_FOUND => Err(DownloadError::RemoteNotFound(match file {
            Some(file) => format!("{repo}: {file}"),
            None => repo.to_string(),
        })),
        status => Err(DownloadError::Http {
            status: status.as_u16(),
            what: file.map_or_else(|| format!("the model info of {repo}"), str::to_owned),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn sent_token(hub: &Hub, url: &str) -> Option<String> {
        let request = hub
            .request(reqwest::Method::GET, Url::parse(url).unwrap())
            .build()
            .unwrap();
        request
            .headers()
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_token_goes_to_the_endpoint_and_never_to_another_origin() {
        let hub = Hub::new("https://hub.test/", Some("hf_secret".into())).unwrap();
        assert_eq!(
            sent_token(&hub, "https://hub.test/api/models/a/b").as_deref(),
            Some("Bearer hf_secret")
        );
        for elsewhere in [
            "https://cdn.hub.test/blob",
            "https://hub.test:8443/blob",
            "http://hub.test/blob",
        ] {
            assert_eq!(sent_token(&hub, elsewhere), None, "{elsewhere}");
        }
    }

    #[test]
    fn an_endpoint_that_is_no_http_url_fails_the_request_not_the_engine() {
        for bad in ["file:///etc", "not a url", "ftp://hub.test"] {
            let hub = Hub::new(bad, None).unwrap();
            assert!(
                matches!(hub.url("/api/models/a/b"), Err(DownloadError::Settings(_))),
                "{bad}"
            );
        }
    }
}
