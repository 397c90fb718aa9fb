//! The config loader's rules, each on the smallest file and environment that shows it.

use super::*;

/// `yaml` as the config file, `env` as the environment, and `/data` as `--data-dir`.
fn build(yaml: &str, env: &dyn Env) -> Result<Config, ConfigError> {
    let file: Config = serde_yaml::from_str(yaml).expect("test yaml");
    Config::merge(file, env, &in_data())
}

fn in_data() -> Overrides {
    Overrides {
        data_dir: Some(PathBuf::from("/data")),
        ..Overrides::default()
    }
}

const NO_ENV: [(&str, &str); 0] = [];

#[test]
fn defaults_listen_on_loopback_8080_with_llamactl_limits() {
    let c = Config::with_data_dir(PathBuf::from("/data"));
    assert_eq!(c.server.host, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(c.server.port, 8080);
    assert_eq!(c.instances.port_range, (8000, 9000));
    assert_eq!(c.instances.configs_dir, PathBuf::from("/data/instances"));
    assert_eq!(c.instances.logs_dir, PathBuf::from("/data/logs"));
    assert_eq!(c.instances.max_instances, None);
    assert!(c.instances.default_auto_restart);
    assert_eq!(c.instances.default_max_restarts, 3);
    assert_eq!(c.instances.default_restart_delay, 5);
    assert_eq!(c.backends.llama_cpp.command, "llama-server");
    assert_eq!(c.backends.vllm.args, vec!["serve".to_string()]);
    assert_eq!(c.server.max_inference_body_bytes, 64 * 1024 * 1024);
    assert_eq!(c.instances.idle_timeout_unit, Duration::from_secs(60));
}

#[test]
fn connection_deadlines_and_cap_have_defaults_a_file_and_variables_can_change() {
    let c = build("", &NO_ENV).expect("valid");
    assert_eq!(c.server.limits, ConnectionLimits::default());
    assert_eq!(c.server.limits.head_timeout, Duration::from_secs(10));
    let yaml = "server: {request_head_timeout_seconds: 1.5, request_body_idle_timeout_seconds: 2, \
                keep_alive_timeout_seconds: 3, max_connections: 7}";
    let env = [("CORRAL_KEEP_ALIVE_TIMEOUT_SECONDS", "0.25")];
    let c = build(yaml, &env).expect("valid");
    assert_eq!(
        c.server.limits,
        ConnectionLimits {
            head_timeout: Duration::from_millis(1500),
            body_idle_timeout: Duration::from_secs(2),
            keep_alive_timeout: Duration::from_millis(250),
            max_connections: 7,
        }
    );
    for bad in [
        "server: {request_head_timeout_seconds: 0}",
        "server: {keep_alive_timeout_seconds: -1}",
        "server: {max_connections: 0}",
    ] {
        let err = build(bad, &NO_ENV).expect_err(bad);
        assert!(err.to_string().contains("server."), "{err}");
    }
    let err = build("", &[("CORRAL_MAX_CONNECTIONS", "many")]).expect_err("not a number");
    assert!(err.to_string().contains("CORRAL_MAX_CONNECTIONS"), "{err}");
}

#[test]
fn idle_timeout_unit_can_be_shortened_for_tests_but_not_zeroed() {
    let c = build("", &[("CORRAL_IDLE_TIMEOUT_UNIT_SECONDS", "0.5")]).expect("valid");
    assert_eq!(c.instances.idle_timeout_unit, Duration::from_millis(500));
    let c = build("instances: {idle_timeout_unit_seconds: 2}", &NO_ENV).expect("valid");
    assert_eq!(c.instances.idle_timeout_unit, Duration::from_secs(2));
    let err = build("instances: {idle_timeout_unit_seconds: 0}", &NO_ENV).expect_err("zero");
    assert!(
        err.to_string().contains("idle_timeout_unit_seconds"),
        "{err}"
    );
}

#[test]
fn llamactl_rev_a_config_file_is_understood() {
    let yaml = r#"
server: {host: "127.0.0.1", port: 9090, allowed_origins: ["http://a"]}
backends: {llama_executable: /opt/llama-server, mlx_lm_executable: mlx, vllm_executable: /v/vllm}
instances:
  port_range: [7000, 7100]
  configs_dir: /c
  logs_dir: /l
  max_running_instances: 2
  on_demand_start_timeout: 0
auth: {inference_keys: [sk-inf-1], management_keys: [sk-mgmt-1]}
"#;
    let c = build(yaml, &NO_ENV).expect("valid");
    assert_eq!(c.server.port, 9090);
    assert_eq!(c.server.allowed_origins, vec!["http://a".to_string()]);
    assert_eq!(c.backends.llama_cpp.command, "/opt/llama-server");
    assert_eq!(c.backends.vllm.command, "/v/vllm");
    assert_eq!(c.backends.vllm.args, vec!["serve".to_string()]);
    assert_eq!(c.instances.port_range, (7000, 7100));
    assert_eq!(c.instances.configs_dir, PathBuf::from("/c"));
    assert_eq!(c.instances.max_running_instances, Some(2));
    assert_eq!(c.instances.on_demand_start_timeout, Duration::from_secs(30));
    assert_eq!(c.auth.management_keys, vec!["sk-mgmt-1".to_string()]);
}

#[test]
fn structured_backend_form_carries_args_and_environment() {
    let yaml = r#"
backends:
  llama_executable: old-name
  llama-cpp: {command: /bin/llama, args: ["--no-webui"], environment: {CUDA_VISIBLE_DEVICES: "1"}}
  vllm: {command: /bin/vllm, args: ["serve", "--disable-log-requests"]}
"#;
    let c = build(yaml, &NO_ENV).expect("valid");
    assert_eq!(c.backends.llama_cpp.command, "/bin/llama");
    assert_eq!(c.backends.llama_cpp.args, vec!["--no-webui".to_string()]);
    assert_eq!(
        c.backends.llama_cpp.environment.get("CUDA_VISIBLE_DEVICES"),
        Some(&"1".to_string())
    );
    assert_eq!(c.backends.vllm.args.len(), 2);
    assert_eq!(c.backends.mlx.command, "mlx_lm.server");
}

#[test]
fn environment_wins_over_file_and_corral_wins_over_llamactl() {
    let env = [
        ("LLAMACTL_PORT", "7000"),
        ("CORRAL_PORT", "7001"),
        ("LLAMACTL_INSTANCE_PORT_RANGE", "8000 , 8100"),
        ("LLAMACTL_MANAGEMENT_KEYS", "a, b"),
        ("CORRAL_DEFAULT_ON_DEMAND_START", "F"),
    ];
    let c = build("server: {port: 6000}", &env).expect("valid");
    assert_eq!(c.server.port, 7001);
    assert_eq!(c.instances.port_range, (8000, 8100));
    assert_eq!(
        c.auth.management_keys,
        vec!["a".to_string(), "b".to_string()]
    );
    assert!(!c.instances.default_on_demand_start);
}

#[test]
fn closing_the_window_keeps_the_app_in_the_tray_unless_configured_otherwise() {
    assert!(build("", &NO_ENV).expect("valid").desktop.close_to_tray);
    let c = build("desktop: {close_to_tray: false}", &NO_ENV).expect("valid");
    assert!(!c.desktop.close_to_tray);
    let env = [("CORRAL_DESKTOP_CLOSE_TO_TRAY", "true")];
    let c = build("desktop: {close_to_tray: false}", &env).expect("valid");
    assert!(c.desktop.close_to_tray);
}

#[test]
fn invalid_environment_values_are_reported_by_name() {
    let err = build("", &[("CORRAL_PORT", "invalid-port")]).expect_err("bad port");
    assert!(err.to_string().contains("CORRAL_PORT"), "{err}");
    let err = build("", &[("LLAMACTL_INSTANCE_PORT_RANGE", "8000")]).expect_err("bad range");
    assert!(err.to_string().contains("8000-9000"), "{err}");
}

#[test]
fn port_ranges_parse_like_llamactl() {
    for ok in ["8000-9000", "8000,9000", "8000 - 9000", "8000 , 9000"] {
        assert_eq!(parse_port_range(ok), Some((8000, 9000)), "{ok}");
    }
    for bad in [
        "8000",
        "not-a-range",
        "start-end",
        "",
        "8000-9000-10000",
        "-1000--500",
    ] {
        assert_eq!(parse_port_range(bad), None, "{bad}");
    }
}

#[test]
fn remote_listen_without_inference_keys_is_refused() {
    let err = build("server: {host: 0.0.0.0}", &NO_ENV).expect_err("insecure");
    assert!(err.to_string().contains("inference_keys"), "{err}");
    build(
        "server: {host: 0.0.0.0}\nauth: {inference_keys: [k]}",
        &NO_ENV,
    )
    .expect("keys set");
    build(
        "server: {host: 0.0.0.0, allow_insecure_remote: true}",
        &NO_ENV,
    )
    .expect("explicitly allowed");
}

#[test]
fn remote_listen_without_management_auth_is_refused() {
    let yaml =
        "server: {host: 0.0.0.0}\nauth: {inference_keys: [k], require_management_auth: false}";
    let err = build(yaml, &NO_ENV).expect_err("insecure");
    assert!(err.to_string().contains("require_management_auth"), "{err}");
    build(
        "server: {host: 0.0.0.0, allow_insecure_remote: true}\nauth: {inference_keys: [k], require_management_auth: false}",
        &NO_ENV,
    )
    .expect("explicitly allowed");
    build(
        "server: {host: 127.0.0.1}\nauth: {require_management_auth: false}",
        &NO_ENV,
    )
    .expect("loopback needs no auth");
    let err = build(
        "server: {host: \"::\"}\nauth: {inference_keys: [k]}",
        &[("CORRAL_REQUIRE_MANAGEMENT_AUTH", "false")],
    )
    .expect_err("from the environment too");
    assert!(err.to_string().contains("require_management_auth"), "{err}");
}

#[test]
fn no_other_origin_is_allowed_unless_listed_and_a_star_is_warned_about() {
    let defaults = build("", &NO_ENV).expect("defaults");
    assert!(defaults.server.allowed_origins.is_empty());
    assert!(defaults.warnings().is_empty(), "{:?}", defaults.warnings());
    let star = build("server: {allowed_origins: [\"*\"]}", &NO_ENV).expect("star");
    assert_eq!(star.server.allowed_origins, vec!["*".to_owned()]);
    let warnings = star.warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("allowed_origins"),
        "{warnings:?}"
    );
}

#[test]
fn empty_or_blank_keys_are_refused_naming_the_setting() {
    for (yaml, setting) in [
        (r#"auth: {management_keys: [""]}"#, "auth.management_keys"),
        (
            r#"auth: {management_keys: [ok, "   "]}"#,
            "auth.management_keys",
        ),
        (r#"auth: {inference_keys: ["\t"]}"#, "auth.inference_keys"),
    ] {
        let err = build(yaml, &NO_ENV).expect_err(yaml);
        assert!(err.to_string().contains(setting), "{yaml}: {err}");
        assert!(err.to_string().contains("empty key"), "{yaml}: {err}");
    }
    build("auth: {management_keys: [sk-real]}", &NO_ENV).expect("a real key");
}

#[test]
fn invalid_yaml_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "server: [unclosed").expect("write");
    let err = read_file(&path).expect_err("invalid");
    assert!(err.to_string().contains("config.yaml"), "{err}");
    let err = read_file(&dir.path().join("missing.yaml")).expect_err("missing");
    assert!(matches!(err, ConfigError::Read { .. }));
}

#[test]
fn a_variable_overrides_the_file_and_leaves_the_file_s_other_settings() {
    let yaml = "instances: {max_running_instances: 2, logs_dir: /l, default_idle_timeout: 7}\n\
                server: {allowed_hosts: [a.lan], request_body_idle_timeout_seconds: 4}";
    let env = [
        ("CORRAL_MAX_RUNNING_INSTANCES", "-1"),
        ("CORRAL_ALLOWED_HOSTS", "b.lan, c.lan"),
        ("CORRAL_REQUEST_BODY_IDLE_TIMEOUT_SECONDS", "0.5"),
        ("LLAMACTL_ON_DEMAND_START_TIMEOUT", "-3"),
    ];
    let c = build(yaml, &env).expect("valid");
    assert_eq!(c.instances.max_running_instances, None);
    assert_eq!(c.server.allowed_hosts, ["b.lan", "c.lan"]);
    assert_eq!(
        c.server.limits.body_idle_timeout,
        Duration::from_millis(500)
    );
    assert_eq!(c.instances.on_demand_start_timeout, Duration::from_secs(30));
    assert_eq!(c.instances.logs_dir, PathBuf::from("/l"));
    assert_eq!(c.instances.default_idle_timeout, 7);
    // A valid variable wins over a file value that alone would be refused.
    let env = [("CORRAL_STOP_GRACE_SECONDS", "2")];
    let c = build("instances: {stop_grace_seconds: -1}", &env).expect("valid");
    assert_eq!(c.instances.stop_grace, Duration::from_secs(2));
}

#[test]
fn a_bad_variable_is_refused_with_its_name_its_value_and_the_reason() {
    for (env, message) in [
        (
            [("CORRAL_MAX_INSTANCES", "lots")],
            "environment variable CORRAL_MAX_INSTANCES=\"lots\" is invalid: invalid digit found in string",
        ),
        (
            [("LLAMACTL_ENABLE_LRU_EVICTION", "yes")],
            "environment variable LLAMACTL_ENABLE_LRU_EVICTION=\"yes\" is invalid: expected true or false",
        ),
        (
            [("CORRAL_HOST", "localhost")],
            "environment variable CORRAL_HOST=\"localhost\" is invalid: invalid IP address syntax",
        ),
        (
            [("CORRAL_INSTANCE_PORT_RANGE", "9000-8000")],
            "environment variable CORRAL_INSTANCE_PORT_RANGE=\"9000-8000\" is invalid: expected a range like 8000-9000",
        ),
        (
            [("CORRAL_KEEP_ALIVE_TIMEOUT_SECONDS", "0")],
            "invalid configuration: server.keep_alive_timeout_seconds must be a positive number of seconds, got 0",
        ),
        (
            [("CORRAL_IDLE_TIMEOUT_UNIT_SECONDS", "-2")],
            "invalid configuration: instances.idle_timeout_unit_seconds must be a positive number, got -2",
        ),
    ] {
        let err = build("", &env).expect_err(message);
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn bad_file_values_are_refused_with_the_same_words_as_bad_variables() {
    for (yaml, message) in [
        (
            "server: {request_head_timeout_seconds: -1}",
            "invalid configuration: server.request_head_timeout_seconds must be a positive number of seconds, got -1",
        ),
        (
            "instances: {stop_grace_seconds: .nan}",
            "invalid configuration: instances.stop_grace_seconds must be a non-negative number, got NaN",
        ),
        (
            "instances: {port_range: [9000, 8000]}",
            "invalid configuration: instances.port_range [9000, 8000] must be two ports, the first not above the second",
        ),
    ] {
        let err = build(yaml, &NO_ENV).expect_err(yaml);
        assert_eq!(err.to_string(), message);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "server:\n  port: high\n").expect("write");
    let err = read_file(&path).expect_err("not a port");
    assert_eq!(
        err.to_string(),
        format!(
            "config file {} is not valid YAML for Corral: server.port: invalid type: string \
             \"high\", expected u16 at line 2 column 9",
            path.display()
        )
    );
}

#[test]
fn unknown_keys_in_the_file_are_ignored_as_llamactl_ignores_them() {
    let yaml = "server: {port: 9000, colour: blue}\n\
                instances: {port_range: [7000, 7100], future_knob: {a: 1}}\n\
                telemetry: {enabled: true}";
    let c = build(yaml, &NO_ENV).expect("unknown keys are not an error");
    assert_eq!(c.server.port, 9000);
    assert_eq!(c.instances.port_range, (7000, 7100));
}

#[test]
fn a_key_without_a_value_keeps_its_default_as_in_llamactl() {
    let yaml = "server:\n  port:\n  allowed_origins: ~\ninstances:\n  max_instances:\n  \
                port_range: null\n  on_demand_start_timeout:\n  data_dir:\nbackends:\n  \
                vllm: {command: /v/vllm, args: ~}\nauth:\n";
    let c = build(yaml, &NO_ENV).expect("valid");
    let defaults = Config::with_data_dir(PathBuf::from("/data"));
    assert_eq!(c.server.port, 8080);
    assert!(c.server.allowed_origins.is_empty());
    assert_eq!(c.instances.max_instances, None);
    assert_eq!(c.instances.port_range, defaults.instances.port_range);
    assert_eq!(
        c.instances.on_demand_start_timeout,
        defaults.instances.on_demand_start_timeout
    );
    assert_eq!(c.instances.configs_dir, PathBuf::from("/data/instances"));
    assert_eq!(c.backends.vllm.command, "/v/vllm");
    assert_eq!(c.backends.vllm.args, ["serve"]);
    assert!(c.auth.require_management_auth);
    assert!(c.desktop.close_to_tray);
}

#[test]
fn folders_follow_the_data_folder_unless_set_and_the_command_line_wins() {
    let env = [
        ("CORRAL_DATA_DIRECTORY", "/env-data"),
        ("CORRAL_LOGS_DIR", " /logs "),
    ];
    let file: Config =
        serde_yaml::from_str("instances: {data_dir: /file-data, run_dir: /r}").expect("test yaml");
    let c = Config::merge(file, &env, &Overrides::default()).expect("valid");
    assert_eq!(c.instances.data_dir, PathBuf::from("/env-data"));
    assert_eq!(
        c.instances.configs_dir,
        PathBuf::from("/env-data/instances")
    );
    assert_eq!(c.instances.logs_dir, PathBuf::from("/logs"));
    assert_eq!(c.instances.run_dir, PathBuf::from("/r"));
    let c = build("instances: {data_dir: /file-data}", &env).expect("valid");
    assert_eq!(c.instances.data_dir, PathBuf::from("/data"));
    assert_eq!(c.instances.configs_dir, PathBuf::from("/data/instances"));
}

/// The rows of docs/configuration.md's table of variables: (variable, setting).
fn documented_variables() -> Vec<(String, String)> {
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let text = std::fs::read_to_string(&doc).expect("docs/configuration.md");
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let variable = cells.get(1)?.strip_prefix("`CORRAL_")?.strip_suffix('`')?;
            let setting = cells.get(2)?.trim_matches('`');
            Some((variable.to_owned(), setting.to_owned()))
        })
        .collect()
}

#[test]
fn every_variable_is_documented_with_the_setting_it_overrides() {
    let mut table: Vec<(String, String)> = env::VARIABLES
        .iter()
        .map(|v| (v.name.to_owned(), v.setting.to_owned()))
        .collect();
    table.push((env::CONFIG_PATH.to_owned(), "(the file itself)".to_owned()));
    table.sort();
    let mut documented = documented_variables();
    documented.sort();
    assert_eq!(documented, table);
}

#[test]
fn each_variable_sets_the_same_field_as_its_file_setting() {
    for variable in env::VARIABLES {
        let (section, key) = variable.setting.split_once('.').expect("section.key");
        // A value every parser takes, written the way the file and the variable each write it.
        let (yaml, text) = match key {
            "host" => ("10.1.2.3", "10.1.2.3"),
            "port_range" => ("[7000, 7100]", "7000-7100"),
            "allowed_origins" | "allowed_hosts" | "inference_keys" | "management_keys" => {
                ("[x, y]", "x,y")
            }
            "data_dir" | "configs_dir" | "logs_dir" => ("/p", "/p"),
            "dirs" => ("[/a, /b]", "/a,/b"),
            "exclusive_groups" | "keys" => ("[x, y]", "x,y"),
            "max_entries" => ("7", "7"),
            "memory_headroom_mib" | "ram_budget_mib" | "gpu_budget_mib" | "max_queue" => ("7", "7"),
            "llama-cpp.command" | "mlx.command" | "vllm.command" => ("/bin/b", "/bin/b"),
            _ if variable.name.ends_with("SECONDS") || variable.name.ends_with("TIMEOUT") => {
                ("7", "7")
            }
            _ if [
                "MAX_",
                "DEFAULT_MAX",
                "DEFAULT_RESTART",
                "DEFAULT_IDLE",
                "PORT",
            ]
            .iter()
            .any(|prefix| variable.name.starts_with(prefix)) =>
            {
                ("7", "7")
            }
            "allow_insecure_remote" | "open_on_loopback" => ("true", "true"),
            _ => ("false", "false"),
        };
        let yaml = match key.split_once('.') {
            Some((backend, field)) => format!("{section}: {{{backend}: {{{field}: {yaml}}}}}"),
            None => format!("{section}: {{{key}: {yaml}}}"),
        };
        let mut from_file: Config = serde_yaml::from_str(&yaml).expect(&yaml);
        if from_file.instances.data_dir.as_os_str().is_empty() {
            from_file.instances.data_dir = PathBuf::from("/data");
        }
        let mut from_env = Config::default();
        from_env.instances.data_dir = PathBuf::from("/data");
        env::overlay(
            &mut from_env,
            &[(format!("CORRAL_{}", variable.name).as_str(), text)],
        )
        .expect(variable.name);
        from_file.derive().expect(&yaml);
        from_env.derive().expect(variable.name);
        assert_eq!(
            format!("{from_file:?}"),
            format!("{from_env:?}"),
            "{} and {yaml}",
            variable.name
        );
        assert_ne!(
            format!("{from_env:?}"),
            format!("{:?}", Config::with_data_dir(PathBuf::from("/data"))),
            "{} changes something",
            variable.name
        );
    }
}
