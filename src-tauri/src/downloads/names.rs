//! What a client and a hub may name: repositories, tags, files, commits and blobs. Each is
//! checked before it becomes part of a path or a URL, so that nothing a LAN client, a web page
//! or a hostile endpoint sends can point outside the repository's cache folder.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DownloadError;

/// Hugging Face's limit on the owner and on the name of a repository.
const MAX_PART_LEN: usize = 96;
/// Longer quantization tags than this do not exist; the bound keeps error messages short.
const MAX_TAG_LEN: usize = 64;
/// Longer file names than this are no file a model repository holds.
const MAX_FILE_NAME_LEN: usize = 1024;

/// A model repository, `org/name`, in Hugging Face's charset: ASCII letters, digits, `-`, `_`
/// and `.`, neither part starting with `.` or `-` nor holding `--` or `..` (HF refuses those
/// too). So it is safe in a URL path as it is, and in the cache's folder name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId(String);

impl RepoId {
    pub fn parse(text: &str) -> Result<RepoId, DownloadError> {
        let invalid = |why: &str| DownloadError::InvalidRepo {
            repo: text.chars().take(200).collect(),
            why: why.to_owned(),
        };
        let (org, name) = text
            .split_once('/')
            .ok_or_else(|| invalid("it must be `org/name`"))?;
        for part in [org, name] {
            if part.is_empty() || part.len() > MAX_PART_LEN {
                return Err(invalid("each part must be 1 to 96 characters"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(invalid(
                    "only ASCII letters, digits, `-`, `_` and `.` are allowed, in two parts",
                ));
            }
            if part.starts_with(['.', '-']) || part.ends_with('.') {
                return Err(invalid(
                    "a part may not start with `.` or `-`, nor end with `.`",
                ));
            }
            if part.contains("--") || part.contains("..") {
                return Err(invalid("`--` and `..` are not allowed"));
            }
        }
        Ok(RepoId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The repository's folder in the cache, `models--org--name`, as the hub's own clients
    /// name it.
    pub fn folder_name(&self) -> String {
        hf_hub::Repo::model(self.0.clone()).folder_name()
    }
}

impl TryFrom<String> for RepoId {
    type Error = DownloadError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        RepoId::parse(&text)
    }
}

impl From<RepoId> for String {
    fn from(repo: RepoId) -> String {
        repo.0
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `org/name[:tag]` as llama.cpp's `-hf` takes it.
pub fn parse_reference(text: &str) -> Result<(RepoId, Option<String>), DownloadError> {
    match text.split_once(':') {
        None => Ok((RepoId::parse(text)?, None)),
        Some((repo, tag)) => Ok((RepoId::parse(repo)?, Some(check_tag(tag)?))),
    }
}

/// A quantization tag (`Q4_K_M`, `UD-Q4_K_XL`, `bf16`).
pub fn check_tag(tag: &str) -> Result<String, DownloadError> {
    let valid = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !tag.contains("..");
    if valid {
        Ok(tag.to_owned())
    } else {
        Err(DownloadError::InvalidTag(tag.chars().take(80).collect()))
    }
}

/// A file name the hub listed, as a path below the snapshot folder: relative, `/`-separated,
/// with no empty, `.` or `..` part, no backslash (a separator on Windows), no `:` (a drive or
/// a stream on Windows), no control character. Whatever else a hostile endpoint sends is
/// refused, never cleaned up into something else.
pub fn file_path(name: &str) -> Result<PathBuf, DownloadError> {
    let refuse = || DownloadError::UnsafeFileName(name.chars().take(200).collect());
    if name.is_empty()
        || name.len() > MAX_FILE_NAME_LEN
        || name.starts_with('/')
        || name
            .chars()
            .any(|c| c == '\\' || c == ':' || c.is_control())
    {
        return Err(refuse());
    }
    let mut path = PathBuf::new();
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(refuse());
        }
        path.push(part);
    }
    // Belt and braces: what was built has only plain parts.
    if !path
        .components()
        .all(|part| matches!(part, std::path::Component::Normal(_)))
    {
        return Err(refuse());
    }
    Ok(path)
}

/// A commit of the repository: 40 hex digits, as the hub answers them.
pub fn check_commit(commit: &str) -> Result<String, DownloadError> {
    if commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(commit.to_ascii_lowercase())
    } else {
        Err(DownloadError::Protocol(format!(
            "the hub named a commit that is not 40 hex digits: {:?}",
            commit.chars().take(80).collect::<String>()
        )))
    }
}

/// What a file's content must hash to, from its ETag: an LFS file's `X-Linked-Etag` is the
/// sha256 of its bytes, a small file's `ETag` the git blob id (sha1). Either is also the name of
/// its blob in the cache, so only hex of those lengths is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Digest {
    Sha256(String),
    GitSha1(String),
}

impl Digest {
    pub fn from_etag(etag: &str) -> Result<Digest, DownloadError> {
        let bare = etag.trim().trim_start_matches("W/").trim_matches('"');
        let hex = bare.bytes().all(|b| b.is_ascii_hexdigit());
        match bare.len() {
            64 if hex => Ok(Digest::Sha256(bare.to_ascii_lowercase())),
            40 if hex => Ok(Digest::GitSha1(bare.to_ascii_lowercase())),
            _ => Err(DownloadError::Protocol(format!(
                "the hub sent an ETag that is neither a sha256 nor a git blob id: {:?}",
                etag.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// The blob's file name in `blobs/`.
    pub fn blob_name(&self) -> &str {
        match self {
            Digest::Sha256(hex) | Digest::GitSha1(hex) => hex,
        }
    }
}

/// The snapshot entry's link target, relative so that the cache may move: one `..` per part of
/// `file` below the snapshot folder, one for the snapshot folder, then `blobs/<blob>`.
pub fn link_target(file: &Path, blob: &str) -> PathBuf {
    let mut target = PathBuf::new();
    for _ in 0..file.components().count() + 1 {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob);
    target
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn repositories_in_the_hubs_charset_are_taken_and_anything_path_like_is_refused() {
        for good in [
            "unsloth/Qwen3-0.6B-GGUF",
            "org/name",
            "a_b/c.d-e",
            "ggml-org/gemma-3",
        ] {
            assert_eq!(RepoId::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "name",
            "org/",
            "/name",
            "org/name/extra",
            "../x",
            "org/..",
            "org/.hidden",
            "org/a..b",
            "org/a--b",
            "/etc/passwd",
            "org/na%2fme",
            "org/na me",
            "org\\name",
            "-org/name",
            "org/name.",
            "ørg/name",
            "org/name\n",
        ] {
            assert!(RepoId::parse(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(
            RepoId::parse("unsloth/Qwen3-GGUF").unwrap().folder_name(),
            "models--unsloth--Qwen3-GGUF"
        );
    }

    #[test]
    fn a_reference_splits_into_the_repository_and_its_tag() {
        let (repo, tag) = parse_reference("org/model-GGUF:Q4_K_M").unwrap();
        assert_eq!(
            (repo.as_str(), tag.as_deref()),
            ("org/model-GGUF", Some("Q4_K_M"))
        );
        assert_eq!(parse_reference("org/model").unwrap().1, None);
        for bad in [
            "org/model:",
            "org/model:a/b",
            "org/model:..",
            "org/model:a:b",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn file_names_stay_below_the_snapshot_folder() {
        assert_eq!(
            file_path("Q4_K_M/model-00001-of-00002.gguf").unwrap(),
            Path::new("Q4_K_M").join("model-00001-of-00002.gguf")
        );
        for bad in [
            "",
            "../../.bashrc",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
            "..",
            "a\\..\\b",
            "C:evil",
            "a\0b",
            "a\nb",
        ] {
            assert!(file_path(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn only_hex_etags_and_commits_name_blobs_and_snapshots() {
        let sha = "a".repeat(64);
        assert_eq!(
            Digest::from_etag(&format!("\"{sha}\"")).unwrap(),
            Digest::Sha256(sha.clone())
        );
        assert_eq!(
            Digest::from_etag(&format!("W/\"{}\"", "B".repeat(40))).unwrap(),
            Digest::GitSha1("b".repeat(40))
        );
        for bad in ["\"../../x\"", "", "\"abc\"", &"g".repeat(64)] {
            assert!(Digest::from_etag(bad).is_err(), "{bad:?} was taken");
        }
        assert!(check_commit(&"0".repeat(40)).is_ok());
        assert!(check_commit("../../../../tmp/x").is_err());
    }

    #[test]
    fn a_link_climbs_out_of_the_snapshot_to_the_blobs_folder() {
        assert_eq!(
            link_target(Path::new("a.gguf"), "b"),
            Path::new("../../blobs/b")
        );
        assert_eq!(
            link_target(&Path::new("dir").join("a.gguf"), "b"),
            Path::new("../../../blobs/b")
        );
    }
}
