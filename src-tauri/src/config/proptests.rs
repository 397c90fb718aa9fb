//! Property tests of config loading: no config file and no environment value makes it panic;
//! what is wrong comes back as an error that names it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed case, with the value in the message

use proptest::prelude::*;

use super::*;

/// Every setting of the config file, by section.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "host",
            "port",
            "allowed_origins",
            "allowed_hosts",
            "max_body_bytes",
            "max_inference_body_bytes",
            "allow_insecure_remote",
            "request_head_timeout_seconds",
            "request_body_idle_timeout_seconds",
            "keep_alive_timeout_seconds",
            "max_connections",
        ],
    ),
    (
        "backends",
        &[
            "llama_executable",
            "mlx_lm_executable",
            "vllm_executable",
            "llama-cpp",
            "llama_cpp",
            "mlx",
            "mlx_lm",
            "vllm",
        ],
    ),
    (
        "instances",
        &[
            "port_range",
            "data_dir",
            "configs_dir",
            "instances_dir",
            "logs_dir",
            "run_dir",
            "auto_create_dirs",
            "max_instances",
            "max_running_instances",
            "enable_lru_eviction",
            "default_auto_restart",
            "default_max_restarts",
            "default_restart_delay",
            "default_on_demand_start",
            "default_idle_timeout",
            "on_demand_start_timeout",
            "idle_timeout_unit_seconds",
            "stop_grace_seconds",
            "log_max_bytes",
            "log_keep_files",
        ],
    ),
    (
        "auth",
        &[
            "require_inference_auth",
            "inference_keys",
            "require_management_auth",
            "management_keys",
        ],
    ),
    ("desktop", &["close_to_tray"]),
];

/// YAML scalars, flows and blocks of every kind a user can write, edge values included.
fn yaml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        proptest::sample::select(vec![
            "0",
            "-1",
            "1",
            "65535",
            "65536",
            "-9223372036854775809",
            "18446744073709551616",
            "1e308",
            "1e309",
            "-1e309",
            ".nan",
            ".inf",
            "-.inf",
            "0.0",
            "-0.0",
            "5e-324",
            "true",
            "false",
            "yes",
            "~",
            "null",
            "''",
            "\"\"",
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "[8000, 9000]",
            "[9000, 8000]",
            "[0, 0]",
            "[1]",
            "[1, 2, 3]",
            "{}",
            "[]",
            "{command: x, args: [a]}",
            "{environment: {A: B}}",
            "\"*\"",
            "!!binary aGk=",
            "&a 1",
            "*a",
            "|\n  text",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[ -~]{0,12}",
    ];
    scalar
}

/// A config file: known sections and keys with any values, sometimes indented wrong.
fn config_file() -> impl Strategy<Value = String> {
    let entry = proptest::sample::select(SECTIONS.to_vec()).prop_flat_map(|(section, keys)| {
        (
            Just(section),
            proptest::collection::vec(
                (proptest::sample::select(keys.to_vec()), yaml_value()),
                0..5,
            ),
        )
    });
    proptest::collection::vec(entry, 0..5).prop_map(|sections| {
        let mut text = String::new();
        for (section, entries) in sections {
            text.push_str(section);
            text.push_str(":\n");
            for (key, value) in entries {
                text.push_str(&format!("  {key}: {value}\n"));
            }
        }
        text
    })
}

/// Text a config file could hold: YAML syntax and known words in any order, or any string.
fn yamlish() -> impl Strategy<Value = String> {
    let mut words: Vec<&str> = SECTIONS
        .iter()
        .flat_map(|(section, keys)| std::iter::once(*section).chain(keys.iter().copied()))
        .collect();
    words.extend([
        ":", ": ", "\n", "\n  ", "- ", "[", "]", "{", "}", ",", "#", "'", "\"", "&a", "*a",
        "!!str", "---", "...", "? ", "|", ">", "\t", "0", "-1", "1e999", "~",
    ]);
    prop_oneof![
        4 => proptest::collection::vec(proptest::sample::select(words), 0..40)
            .prop_map(|words| words.concat()),
        1 => any::<String>(),
    ]
}

/// Reads `text` as the config file, as `corral serve --config <file>` does.
fn load(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let file = read_file(&path)?;
    let data = Overrides {
        data_dir: Some(PathBuf::from("/data")),
        ..Overrides::default()
    };
    Config::merge(file, env, &data)
}

/// Environment variables given as a list, for the properties.
#[derive(Debug)]
struct ListEnv(Vec<(String, String)>);

impl Env for ListEnv {
    fn var(&self, name: &str) -> Option<(String, String)> {
        let key = format!("CORRAL_{name}");
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (key.clone(), v.clone()))
    }
}

fn environment() -> impl Strategy<Value = ListEnv> {
    proptest::collection::vec(
        (
            proptest::sample::select(env::VARIABLES.iter().map(|v| v.name).collect::<Vec<_>>())
                .prop_map(|name| format!("CORRAL_{name}")),
            prop_oneof![yaml_value(), any::<String>()],
        ),
        0..6,
    )
    .prop_map(ListEnv)
}

proptest! {
    #![proptest_config(crate::fuzz::config(256))]

    #[test]
    fn no_config_file_makes_loading_panic_and_a_refusal_is_an_error_that_says_why(
        text in prop_oneof![config_file(), yamlish()],
    ) {
        if let Err(e) = load(&text, &ListEnv(Vec::new())) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn no_environment_value_makes_loading_panic(env in environment(), text in config_file()) {
        if let Err(e) = load(&text, &env) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
