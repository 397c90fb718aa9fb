//! The `backends` section: how each backend is launched, in either of llamactl's two forms.

use std::collections::BTreeMap;

use crate::backends::BackendType;

/// How one backend is launched: the executable, arguments placed before the instance's own, and
/// environment added to the child's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendCommand {
    pub command: String,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
}

/// The backends' commands. The file may give each in llamactl's old form (`llama_executable`,
/// up to llamactl v0.6) or its structured one (`llama-cpp: {command, args, environment}`); the
/// structured command wins.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(from = "FileBackends")]
pub struct BackendsConfig {
    /// Written as the file writes it.
    #[serde(rename = "llama-cpp")]
    pub llama_cpp: BackendCommand,
    pub mlx: BackendCommand,
    pub vllm: BackendCommand,
}

impl BackendsConfig {
    pub fn command(&self, backend: BackendType) -> &BackendCommand {
        match backend {
            BackendType::LlamaCpp => &self.llama_cpp,
            BackendType::MlxLm => &self.mlx,
            BackendType::Vllm => &self.vllm,
        }
    }
}

impl Default for BackendsConfig {
    fn default() -> Self {
        FileBackends::default().into()
    }
}

/// The `backends` section as written: both of llamactl's forms, every part optional. The one
/// section with a file shape of its own, since two keys set one command.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileBackends {
    // llamactl up to v0.6: one executable per backend.
    llama_executable: Option<String>,
    mlx_lm_executable: Option<String>,
    vllm_executable: Option<String>,
    // llamactl since v0.7: command, args and environment per backend.
    #[serde(rename = "llama-cpp", alias = "llama_cpp")]
    llama_cpp: Option<FileBackendCommand>,
    #[serde(alias = "mlx_lm")]
    mlx: Option<FileBackendCommand>,
    vllm: Option<FileBackendCommand>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct FileBackendCommand {
    command: Option<String>,
    args: Option<Vec<String>>,
    environment: Option<BTreeMap<String, String>>,
}

impl From<FileBackends> for BackendsConfig {
    fn from(file: FileBackends) -> Self {
        fn merge(
            executable: Option<String>,
            structured: Option<FileBackendCommand>,
            default_command: &str,
            default_args: &[&str],
        ) -> BackendCommand {
            let structured = structured.unwrap_or_default();
            BackendCommand {
                command: structured
                    .command
                    .or(executable)
                    .unwrap_or_else(|| default_command.to_owned()),
                args: structured
                    .args
                    .unwrap_or_else(|| default_args.iter().map(|s| (*s).to_owned()).collect()),
                environment: structured.environment.unwrap_or_default(),
            }
        }
        Self {
            llama_cpp: merge(file.llama_executable, file.llama_cpp, "llama-server", &[]),
            mlx: merge(file.mlx_lm_executable, file.mlx, "mlx_lm.server", &[]),
            vllm: merge(file.vllm_executable, file.vllm, "vllm", &["serve"]),
        }
    }
}
