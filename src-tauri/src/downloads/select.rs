//! Which files of a repository a download takes, as llama.cpp's `-hf org/name[:tag]` picks
//! them for GGUF, and the whole repository for safetensors (MLX, vLLM, transformers).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::DownloadError;
use crate::models::{split_part, SplitPart};

/// The tag llama.cpp takes when none is given.
pub const DEFAULT_TAG: &str = "Q4_K_M";

/// What the download is for: one GGUF model (llama.cpp), or a whole safetensors folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

/// The files to fetch, in order; the first is the model's main file for GGUF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub format: ModelFormat,
    pub files: Vec<String>,
}

/// Picks from `names` (every file of the repository, already checked to be safe paths).
pub fn select(
    names: &[String],
    format: Option<ModelFormat>,
    tag: Option<&str>,
) -> Result<Selection, DownloadError> {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    let has_gguf = names.iter().any(|name| is_gguf(name));
    let format = format.unwrap_or(if has_gguf {
        ModelFormat::Gguf
    } else {
        ModelFormat::Safetensors
    });
    if format == ModelFormat::Safetensors {
        if tag.is_some() {
            return Err(DownloadError::TagWithoutGguf);
        }
        if names.is_empty() {
            return Err(DownloadError::NothingToDownload(
                "the repository has no files".into(),
            ));
        }
        return Ok(Selection {
            format,
            files: names.iter().map(|name| (*name).to_owned()).collect(),
        });
    }
    let models: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| is_gguf(name) && !is_mmproj(name))
        .collect();
    let main = match tag {
        Some(tag) => models
            .iter()
            .find(|name| has_tag(name, tag))
            .ok_or_else(|| {
                DownloadError::NothingToDownload(format!(
                    "no GGUF file of the repository matches the tag {tag}"
                ))
            })?,
        None => models
            .iter()
            .find(|name| has_tag(name, DEFAULT_TAG))
            .or_else(|| models.first())
            .ok_or_else(|| {
                DownloadError::NothingToDownload("the repository has no GGUF model file".into())
            })?,
    };
    let mut files = match split_part(main) {
        Some(SplitPart { prefix, count, .. }) => {
            let parts: Vec<String> = (1..=count)
                .map(|n| format!("{prefix}-{n:05}-of-{count:05}.gguf"))
                .collect();
            if let Some(missing) = parts.iter().find(|part| !names.contains(&part.as_str())) {
                return Err(DownloadError::NothingToDownload(format!(
                    "the split model lacks its part {missing}"
                )));
            }
            parts
        }
        None => vec![(*main).to_owned()],
    };
    if let Some(mmproj) = names.iter().find(|name| is_mmproj(name)) {
        files.push((*mmproj).to_owned());
    }
    Ok(Selection { format, files })
}

fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
}

fn is_mmproj(name: &str) -> bool {
    is_gguf(name) && base_name(name).to_ascii_lowercase().starts_with("mmproj")
}

/// Whether the quant `tag` appears in the file's path as a whole word, ignoring case: after the
/// start, a `-`, `.` or `/`, and before a `-` or `.`. So `Q4_K` does not take `Q4_K_M`.
fn has_tag(name: &str, tag: &str) -> bool {
    let name = name.to_ascii_uppercase();
    let tag = tag.to_ascii_uppercase();
    name.match_indices(&tag).any(|(at, _)| {
        let before = name[..at].chars().next_back();
        let after = name[at + tag.len()..].chars().next();
        matches!(before, None | Some('-' | '.' | '/')) && matches!(after, Some('-' | '.'))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    const REPO: &[&str] = &[
        "README.md",
        "model-Q8_0.gguf",
        "model-Q4_K.gguf",
        "Q4_K_M/model-Q4_K_M-00002-of-00002.gguf",
        "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf",
        "mmproj-model-f16.gguf",
    ];

    #[test]
    fn a_tag_takes_every_part_of_its_split_model_and_the_mmproj() {
        let picked = select(&names(REPO), None, Some("q4_k_m")).unwrap();
        assert_eq!(picked.format, ModelFormat::Gguf);
        assert_eq!(
            picked.files,
            [
                "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf",
                "Q4_K_M/model-Q4_K_M-00002-of-00002.gguf",
                "mmproj-model-f16.gguf",
            ]
        );
        // Q4_K is its own quant, not a prefix of Q4_K_M.
        let picked = select(&names(REPO), None, Some("Q4_K")).unwrap();
        assert_eq!(picked.files, ["model-Q4_K.gguf", "mmproj-model-f16.gguf"]);
    }

    #[test]
    fn without_a_tag_q4_k_m_is_preferred_then_the_first_gguf() {
        let picked = select(&names(REPO), None, None).unwrap();
        assert_eq!(picked.files[0], "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf");
        let picked = select(&names(&["b-Q8_0.gguf", "a-F16.gguf"]), None, None).unwrap();
        assert_eq!(picked.files, ["a-F16.gguf"]);
    }

    #[test]
    fn a_missing_tag_or_part_is_an_error_and_safetensors_take_every_file() {
        assert!(select(&names(REPO), None, Some("IQ1_S")).is_err());
        let broken = names(&[
            "m-Q4_K_M-00001-of-00003.gguf",
            "m-Q4_K_M-00003-of-00003.gguf",
        ]);
        assert!(select(&broken, None, None).is_err());
        let mlx = names(&["config.json", "model.safetensors", "tokenizer.json"]);
        let picked = select(&mlx, None, None).unwrap();
        assert_eq!(picked.format, ModelFormat::Safetensors);
        assert_eq!(picked.files.len(), 3);
        assert!(select(&mlx, Some(ModelFormat::Gguf), None).is_err());
        assert!(select(&mlx, None, Some("Q4_K_M")).is_err());
    }
}
