//! The secret Corral alone presents to a backend it started. Every backend listens on a loopback
//! port that any local process (and any web page, through the browser) can reach; a backend that
//! checks a key answers only Corral then, which adds the secret to what it forwards.
//!
//! The secret never appears in the backend's command line (another local user can read
//! `/proc/<pid>/cmdline`): llama-server reads it from a key file, vLLM from its environment.
//! `mlx_lm.server` has no key option at all: it answers anyone who reaches its port.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::{BackendOptions, BackendType, OptionValue};

/// One start's secret. Not serializable, and its `Debug` shows nothing of it, so it cannot end
/// up in an instance's JSON or a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendSecret(Arc<str>);

impl BackendSecret {
    /// 256 random bits, hex-encoded.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(hex::encode(bytes).into())
    }

    /// A key the user chose, which Corral must present instead of one of its own.
    fn from_user(key: &str) -> Self {
        Self(key.into())
    }

    /// The secret itself, for the `Authorization` header to the backend and its key file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BackendSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackendSecret(hidden)")
    }
}

/// How one start of a backend learns the key Corral will present to it.
#[derive(Debug, Clone, Default)]
pub struct SecretHandover {
    /// What Corral sends as `Authorization: Bearer`; `None` when the backend checks no key.
    pub credential: Option<BackendSecret>,
    /// Arguments added to the backend's own (a file name, never the secret).
    pub args: Vec<String>,
    /// A file the secret is written to before the start (llama-server's `--api-key-file`).
    pub key_file: Option<(PathBuf, BackendSecret)>,
    /// An environment variable set to the secret (vLLM's `VLLM_API_KEY`).
    pub env: Option<(&'static str, BackendSecret)>,
}

impl BackendOptions {
    /// How `secret` reaches this backend. `key_file` is where a backend that reads keys from a
    /// file finds it (Corral's run folder); `configured_env` is the environment the backend's
    /// configured command already sets, which may carry a key of the user's.
    pub fn secret_handover(
        &self,
        secret: BackendSecret,
        key_file: PathBuf,
        configured_env: &BTreeMap<String, String>,
    ) -> SecretHandover {
        match self.backend {
            // llama-server adds the keys of `--api-key-file` (one per line) to those of
            // `--api-key` (comma-separated), so a user's own `api_key` keeps working beside it.
            BackendType::LlamaCpp => SecretHandover {
                credential: Some(secret.clone()),
                args: vec![
                    "--api-key-file".to_owned(),
                    key_file.to_string_lossy().into_owned(),
                ],
                key_file: Some((key_file, secret)),
                env: None,
            },
            // vLLM takes one source of keys: `--api-key` when given (older releases:
            // `VLLM_API_KEY` first), so a user's own key is the one Corral presents then.
            BackendType::Vllm => {
                if let Some(key) = self.user_api_keys().into_iter().next() {
                    return SecretHandover {
                        credential: Some(BackendSecret::from_user(&key)),
                        ..SecretHandover::default()
                    };
                }
                if let Some(key) = configured_env
                    .get(super::vllm::API_KEY_VAR)
                    .filter(|key| !key.is_empty())
                {
                    return SecretHandover {
                        credential: Some(BackendSecret::from_user(key)),
                        ..SecretHandover::default()
                    };
                }
                SecretHandover {
                    credential: Some(secret.clone()),
                    env: Some((super::vllm::API_KEY_VAR, secret)),
                    ..SecretHandover::default()
                }
            }
            // mlx_lm.server has no key option: it stays on loopback, open to local processes.
            BackendType::MlxLm => SecretHandover::default(),
        }
    }

    /// The keys set with the `api_key` option, split as the backend splits them.
    fn user_api_keys(&self) -> Vec<String> {
        match self.values.get("api_key") {
            Some(OptionValue::String(keys)) => keys
                .split(',')
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(OptionValue::StringList(keys)) => {
                keys.iter().filter(|key| !key.is_empty()).cloned().collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn options(backend: BackendType, json: serde_json::Value) -> BackendOptions {
        BackendOptions::from_json(backend, &json).unwrap()
    }

    fn no_env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn secrets_are_fresh_and_never_shown_by_debug() {
        let (a, b) = (BackendSecret::generate(), BackendSecret::generate());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(!format!("{a:?}").contains(a.expose()));
        let handover = options(BackendType::Vllm, serde_json::json!({"model": "m"}))
            .secret_handover(a.clone(), PathBuf::from("/run/x.key"), &no_env());
        assert!(!format!("{handover:?}").contains(a.expose()));
    }

    #[test]
    fn llama_server_reads_the_secret_from_a_file_named_in_its_arguments() {
        let secret = BackendSecret::generate();
        let llama = options(
            BackendType::LlamaCpp,
            serde_json::json!({"model": "m.gguf", "api_key": "mine"}),
        );
        let handover =
            llama.secret_handover(secret.clone(), PathBuf::from("/run/a.key"), &no_env());
        assert_eq!(handover.args, ["--api-key-file", "/run/a.key"]);
        assert!(!handover
            .args
            .iter()
            .any(|arg| arg.contains(secret.expose())));
        assert_eq!(handover.credential, Some(secret.clone()));
        assert_eq!(
            handover.key_file,
            Some((PathBuf::from("/run/a.key"), secret))
        );
        assert!(handover.env.is_none());
        // The user's own key stays in the arguments, where they put it.
        assert!(llama.to_args().contains(&"mine".to_owned()));
    }

    #[test]
    fn vllm_gets_the_secret_in_its_environment_unless_the_user_set_a_key() {
        let secret = BackendSecret::generate();
        let plain = options(BackendType::Vllm, serde_json::json!({"model": "m"}));
        let handover = plain.secret_handover(secret.clone(), PathBuf::from("/k"), &no_env());
        assert_eq!(handover.env, Some(("VLLM_API_KEY", secret.clone())));
        assert_eq!(handover.credential, Some(secret.clone()));
        assert!(handover.args.is_empty() && handover.key_file.is_none());

        let keyed = options(
            BackendType::Vllm,
            serde_json::json!({"model": "m", "api_key": ["mine", "other"]}),
        );
        let handover = keyed.secret_handover(secret.clone(), PathBuf::from("/k"), &no_env());
        assert!(handover.env.is_none(), "vLLM would ignore one of the two");
        assert_eq!(handover.credential.unwrap().expose(), "mine");

        let env = BTreeMap::from([("VLLM_API_KEY".to_owned(), "from-config".to_owned())]);
        let handover = plain.secret_handover(secret, PathBuf::from("/k"), &env);
        assert!(handover.env.is_none());
        assert_eq!(handover.credential.unwrap().expose(), "from-config");
    }

    #[test]
    fn mlx_takes_no_key() {
        let mlx = options(BackendType::MlxLm, serde_json::json!({"model": "m"}));
        let handover =
            mlx.secret_handover(BackendSecret::generate(), PathBuf::from("/k"), &no_env());
        assert!(handover.credential.is_none() && handover.args.is_empty());
        assert!(handover.key_file.is_none() && handover.env.is_none());
    }
}
