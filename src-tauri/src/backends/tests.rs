//! Unit tests of the option tables, JSON validation and argv building.

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn llama(value: serde_json::Value) -> BackendOptions {
    BackendOptions::from_json(BackendType::LlamaCpp, &value).unwrap()
}

fn error(backend: BackendType, value: serde_json::Value) -> String {
    BackendOptions::from_json(backend, &value)
        .unwrap_err()
        .to_string()
}

const ALL: [BackendType; 3] = [BackendType::LlamaCpp, BackendType::MlxLm, BackendType::Vllm];

#[test]
fn zero_values_are_emitted_because_absent_and_zero_differ() {
    let options = llama(json!({"gpu_layers": 0, "temp": 0, "seed": 0, "model": "m.gguf"}));
    let args = options.to_args();
    for pair in [["--gpu-layers", "0"], ["--temp", "0"], ["--seed", "0"]] {
        assert!(
            args.windows(2).any(|w| w == pair),
            "{pair:?} missing from {args:?}"
        );
    }
    assert!(!llama(json!({"model": "m.gguf"}))
        .to_args()
        .contains(&"--gpu-layers".to_string()));
}

#[test]
fn floats_are_written_without_exponent_or_trailing_zeros() {
    let args =
        llama(json!({"min_p": 0.00001, "top_p": 0.95, "rope_freq_base": 1000000.0})).to_args();
    assert!(args.contains(&"0.00001".to_string()), "{args:?}");
    assert!(args.contains(&"0.95".to_string()), "{args:?}");
    assert!(args.contains(&"1000000".to_string()), "{args:?}");
}

#[test]
fn true_bools_are_bare_switches_and_false_uses_the_no_spelling_when_llama_has_one() {
    assert_eq!(llama(json!({"jinja": true})).to_args(), ["--jinja"]);
    assert_eq!(llama(json!({"jinja": false})).to_args(), ["--no-jinja"]);
    assert_eq!(
        llama(json!({"kv_offload": false})).to_args(),
        ["--no-kv-offload"]
    );
    // --verbose has no --no-verbose: false means "leave llama-server's default"
    assert!(llama(json!({"verbose": false})).to_args().is_empty());
    assert_eq!(llama(json!({"no_mmap": true})).to_args(), ["--no-mmap"]);
}

#[test]
fn repeatable_flags_are_repeated_per_value() {
    let args =
        llama(json!({"lora": ["a.gguf", "b.gguf"], "override_tensor": ["exps=CPU"]})).to_args();
    assert_eq!(
        args,
        [
            "--override-tensor",
            "exps=CPU",
            "--lora",
            "a.gguf",
            "--lora",
            "b.gguf"
        ]
    );
}

#[test]
fn flash_attn_takes_on_off_auto_and_reads_llamactls_old_bool() {
    assert_eq!(
        llama(json!({"flash_attn": "auto"})).to_args(),
        ["--flash-attn", "auto"]
    );
    assert_eq!(
        llama(json!({"flash_attn": true})).to_json(),
        json!({"flash_attn": "on"})
    );
    assert_eq!(
        llama(json!({"flash_attn": false})).to_json(),
        json!({"flash_attn": "off"})
    );
    let e = error(BackendType::LlamaCpp, json!({"flash_attn": "fast"}));
    assert!(
        e.contains("flash_attn") && e.contains("on, off, auto"),
        "{e}"
    );
}

#[test]
fn two_value_option_becomes_two_argv_words() {
    let args = llama(json!({"control_vector_layer_range": "10 20"})).to_args();
    assert_eq!(args, ["--control-vector-layer-range", "10", "20"]);
    let e = error(
        BackendType::LlamaCpp,
        json!({"control_vector_layer_range": "10"}),
    );
    assert!(e.contains("START END"), "{e}");
}

#[test]
fn vllm_model_is_the_first_positional_word_and_never_a_flag() {
    let options = BackendOptions::from_json(
        BackendType::Vllm,
        &json!({
            "model": "Qwen/Qwen2.5-0.5B", "port": 8001, "tensor_parallel_size": 2,
            "allowed_origins": ["http://a", "http://b"], "lora_modules": ["x=/x", "y=/y"],
            "enable_prefix_caching": false
        }),
    )
    .unwrap();
    let args = options.to_args();
    assert_eq!(args[0], "Qwen/Qwen2.5-0.5B");
    assert!(!args.contains(&"--model".to_string()));
    // vLLM reads `--allowed-origins` as one JSON array
    assert!(
        args.windows(2)
            .any(|w| w == ["--allowed-origins", r#"["http://a","http://b"]"#]),
        "{args:?}"
    );
    assert!(
        args.windows(3)
            .any(|w| w == ["--lora-modules", "x=/x", "y=/y"]),
        "{args:?}"
    );
    assert!(args.contains(&"--no-enable-prefix-caching".to_string()));
    assert!(args.windows(2).any(|w| w == ["--port", "8001"]));
}

#[test]
fn every_backend_is_started_on_loopback_unless_the_user_chose_a_host() {
    for backend in [BackendType::LlamaCpp, BackendType::MlxLm, BackendType::Vllm] {
        let unset = BackendOptions::from_json(backend, &json!({"model": "m"})).unwrap();
        let args = unset.launch_args();
        assert!(
            args.windows(2).any(|w| w == ["--host", "127.0.0.1"]),
            "{backend:?}: {args:?}"
        );
        assert!(!unset.to_args().contains(&"--host".to_owned()));
        let chosen =
            BackendOptions::from_json(backend, &json!({"model": "m", "host": "0.0.0.0"})).unwrap();
        let args = chosen.launch_args();
        assert_eq!(
            args.iter().filter(|a| *a == "--host").count(),
            1,
            "{args:?}"
        );
        assert!(args.windows(2).any(|w| w == ["--host", "0.0.0.0"]));
    }
}

#[test]
fn mlx_takes_the_model_as_a_flag() {
    let options = BackendOptions::from_json(
        BackendType::MlxLm,
        &json!({"model": "m", "temp": 0.0, "trust_remote_code": true}),
    )
    .unwrap();
    assert_eq!(
        options.to_args(),
        ["--model", "m", "--trust-remote-code", "--temp", "0"]
    );
}

#[test]
fn extra_args_accept_snake_or_kebab_keys_and_emit_kebab_flags_last() {
    let options = llama(json!({
        "model": "m.gguf",
        "extra_args": {"n-cpu-moe-x": "4", "some_switch": true, "empty_switch": "", "count": 3}
    }));
    assert_eq!(
        options.to_json()["extra_args"],
        json!({"count": "3", "empty_switch": "", "n_cpu_moe_x": "4", "some_switch": "true"})
    );
    assert_eq!(
        options.to_args(),
        [
            "--model",
            "m.gguf",
            "--count",
            "3",
            "--empty-switch",
            "--n-cpu-moe-x",
            "4",
            "--some-switch"
        ]
    );
}

#[test]
fn extra_args_refuse_typed_options_and_non_flag_keys() {
    let e = error(BackendType::LlamaCpp, json!({"extra_args": {"ngl": "5"}}));
    assert!(e.contains("gpu_layers"), "{e}");
    let e = error(BackendType::LlamaCpp, json!({"extra_args": {"--x": "5"}}));
    assert!(e.contains("without dashes"), "{e}");
    let e = error(BackendType::Vllm, json!({"extra_args": ["--x"]}));
    assert!(e.contains("object"), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_the_key_and_a_pointer_to_extra_args() {
    for backend in ALL {
        let e = error(backend, json!({"no_such_option": 1}));
        assert!(
            e.contains("no_such_option") && e.contains("extra_args"),
            "{e}"
        );
    }
}

#[test]
fn type_mismatches_name_the_option_and_what_it_wants() {
    let e = error(BackendType::LlamaCpp, json!({"ctx_size": "4096"}));
    assert!(
        e.contains("ctx_size") && e.contains("integer") && e.contains("\"4096\""),
        "{e}"
    );
    let e = error(BackendType::LlamaCpp, json!({"ctx_size": 4096.5}));
    assert!(e.contains("ctx_size") && e.contains("integer"), "{e}");
    let e = error(BackendType::LlamaCpp, json!({"ctx_size": u64::MAX}));
    assert!(e.contains("out of range"), "{e}");
    let e = error(BackendType::LlamaCpp, json!({"jinja": "yes"}));
    assert!(e.contains("jinja") && e.contains("true or false"), "{e}");
    let e = error(BackendType::LlamaCpp, json!({"lora": "a.gguf"}));
    assert!(e.contains("array of strings"), "{e}");
    let e = error(BackendType::MlxLm, json!({"temp": "hot"}));
    assert!(e.contains("temp") && e.contains("number"), "{e}");
    assert!(error(BackendType::Vllm, json!([1, 2])).contains("object"));
}

#[test]
fn port_zero_means_assign_one_and_out_of_range_ports_are_refused() {
    let options = llama(json!({"port": 0}));
    assert_eq!(options.port(), None);
    assert_eq!(options.to_json(), json!({}));
    for bad in [json!(-1), json!(65536)] {
        let e = error(BackendType::LlamaCpp, json!({"port": bad}));
        assert!(e.contains("port") && e.contains("1-65535"), "{e}");
    }
    let mut options = llama(json!({"port": 65535, "host": "0.0.0.0"}));
    assert_eq!(
        (options.port(), options.host()),
        (Some(65535), Some("0.0.0.0"))
    );
    options.set_port(8123);
    assert_eq!(options.to_args(), ["--host", "0.0.0.0", "--port", "8123"]);
    options.set_port(0);
    assert_eq!(options.port(), None);
}

#[test]
fn llamactl_alternative_keys_are_read_as_their_options() {
    let options = llama(
        json!({"t": 4, "tb": 2, "c": 2048, "ngl": 16, "m": "/m.gguf", "n_gpu_layers_draft": 8}),
    );
    assert_eq!(
        options.to_json(),
        json!({"ctx_size": 2048, "gpu_layers": 16, "model": "/m.gguf", "spec_draft_ngl": 8, "threads": 4, "threads_batch": 2})
    );
    let e = error(BackendType::LlamaCpp, json!({"ngl": 1, "gpu_layers": 2}));
    assert!(e.contains("ngl") && e.contains("gpu_layers"), "{e}");
}

#[test]
fn to_json_has_sorted_keys_and_round_trips() {
    let samples = [
        (
            BackendType::LlamaCpp,
            json!({"temp": 0.7, "model": "m", "lora": ["a"], "verbose": true, "no_mmap": false,
                   "flash_attn": "on", "seed": -1, "extra_args": {"x": "1"}}),
        ),
        (
            BackendType::MlxLm,
            json!({"top_k": 0, "model": "m", "port": 9000, "use_default_chat_template": false}),
        ),
        (
            BackendType::Vllm,
            json!({"api_key": ["k1", "k2"], "model": "m", "gpu_memory_utilization": 0.8}),
        ),
    ];
    for (backend, value) in samples {
        let options = BackendOptions::from_json(backend, &value).unwrap();
        let out = options.to_json();
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(BackendOptions::from_json(backend, &out).unwrap(), options);
        assert_eq!(options.backend_type(), backend);
        assert_eq!(options.model(), Some("m"));
    }
}

#[test]
fn every_backend_answers_health_on_slash_health() {
    for backend in ALL {
        assert_eq!(BackendOptions::empty(backend).health_path(), "/health");
    }
}

#[test]
fn options_schema_lists_every_spec_and_extra_args_and_nothing_else() {
    for backend in ALL {
        let schema = options_schema(backend);
        let properties = schema["properties"].as_object().unwrap();
        for spec in specs(backend) {
            let property = &properties[spec.name];
            let want = match spec.kind {
                OptionKind::Bool => "boolean",
                OptionKind::Int => "integer",
                OptionKind::Float => "number",
                OptionKind::String => "string",
                OptionKind::StringList => "array",
            };
            // null: not set
            let types = property["type"].as_array().unwrap();
            assert!(
                types.contains(&json!(want)) && types.contains(&json!("null")),
                "{} of {}",
                spec.name,
                backend.as_str()
            );
        }
        assert_eq!(properties.len(), specs(backend).len() + 1);
        assert_eq!(properties["extra_args"]["type"], json!(["object", "null"]));
        assert_eq!(schema["additionalProperties"], false);
    }
    let llama = options_schema(BackendType::LlamaCpp);
    assert_eq!(
        llama["properties"]["flash_attn"]["enum"],
        json!(["on", "off", "auto", null, true, false])
    );
}

#[test]
fn every_name_flag_and_alias_names_exactly_one_option() {
    for backend in ALL {
        let table = Backend::of(backend);
        let mut seen = std::collections::HashMap::new();
        for spec in table.specs {
            assert!(spec.flag.starts_with("--"), "{}", spec.flag);
            assert!(
                spec.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{} is not snake_case",
                spec.name
            );
            assert!(!spec.help.is_empty(), "{} has no help", spec.name);
            let mut keys = vec![spec.name.to_string(), flag_key(spec.flag)];
            keys.extend(spec.aliases.iter().map(|a| flag_key(a)));
            keys.dedup();
            for key in keys {
                if let Some(other) = seen.insert(key.clone(), spec.name) {
                    assert_eq!(
                        other, spec.name,
                        "{key} names both {other} and {}",
                        spec.name
                    );
                }
            }
        }
        for (name, flag) in table.negations {
            let spec = table.lookup(name).unwrap();
            assert_eq!(spec.kind, OptionKind::Bool, "{name}");
            assert!(flag.starts_with("--no-"), "{flag}");
        }
    }
}

#[test]
fn llama_table_covers_the_server_flags_people_use() {
    let table = Backend::of(BackendType::LlamaCpp);
    assert!(
        table.specs.len() > 250,
        "only {} llama-server options",
        table.specs.len()
    );
    for key in [
        "m",
        "hf",
        "c",
        "ngl",
        "n_gpu_layers",
        "fa",
        "ctk",
        "ctv",
        "ot",
        "np",
        "cb",
        "a",
        "jinja",
        "chat_template_file",
        "mmproj",
        "api_key",
        "host",
        "port",
        "embeddings",
        "reranking",
        "md",
        "draft_p_min",
        "n_predict",
        "log_verbose",
        "cache_reuse",
        "metrics",
        "slot_save_path",
    ] {
        assert!(
            table.lookup(key).is_some(),
            "llama-server key {key} missing"
        );
    }
    for removed_by_llama_cpp in ["help", "version", "draft"] {
        assert!(
            table.lookup(removed_by_llama_cpp).is_none(),
            "{removed_by_llama_cpp}"
        );
    }
}

/// Found by schema fuzzing: `5.0` is the integer 5 in JSON Schema (and to JavaScript clients),
/// but was refused as "not an integer".
#[test]
fn an_integer_option_written_as_a_whole_float_is_that_integer() {
    assert_eq!(
        llama(json!({"ctx_size": 4096.0})).get("ctx_size"),
        Some(&OptionValue::Int(4096))
    );
    assert!(error(BackendType::LlamaCpp, json!({"ctx_size": 4096.5})).contains("an integer"));
    assert!(error(BackendType::LlamaCpp, json!({"ctx_size": 1e19})).contains("an integer"));
}

/// Found by schema fuzzing: a NUL character passed validation and then failed the start with a
/// 500, since no program's argv can hold one.
#[test]
fn text_with_a_nul_character_is_refused_before_any_start() {
    for options in [
        json!({"model": "a\u{0}b"}),
        json!({"lora": ["x", "a\u{0}"]}),
        json!({"extra_args": {"beta": "a\u{0}"}}),
    ] {
        assert!(
            error(BackendType::LlamaCpp, options.clone()).contains("NUL"),
            "{options}"
        );
    }
}

#[test]
fn mlx_needs_the_hugging_face_cache_folder_that_huggingface_hub_would_use() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    };
    let mlx = BackendType::MlxLm;
    let folder = |pairs| mlx.folder_to_create(env(pairs));
    assert_eq!(
        folder(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h"), ("HOME", "/u")]),
        Some(std::path::PathBuf::from("/c"))
    );
    assert_eq!(
        folder(&[("HF_HOME", "/h"), ("HOME", "/u")]),
        Some(std::path::PathBuf::from("/h/hub"))
    );
    assert_eq!(
        folder(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/u")]),
        Some(std::path::PathBuf::from("/x/huggingface/hub"))
    );
    assert_eq!(
        folder(&[("HF_HOME", ""), ("HOME", "/u")]),
        Some(std::path::PathBuf::from("/u/.cache/huggingface/hub"))
    );
    assert_eq!(folder(&[]), None, "no home, no guess");
    for other in [BackendType::LlamaCpp, BackendType::Vllm] {
        assert_eq!(other.folder_to_create(env(&[("HOME", "/u")])), None);
    }
}

/// Found by the property test: a quoted word holding a space made parse-command accept a pair
/// the instance options then refused.
#[test]
fn a_two_word_flag_takes_exactly_two_words_as_the_options_do() {
    let parsed = parse_command(
        BackendType::LlamaCpp,
        r#"llama-server --control-vector-layer-range 10 20"#,
    )
    .unwrap();
    assert_eq!(
        parsed.get("control_vector_layer_range"),
        Some(&OptionValue::String("10 20".into()))
    );
    for command in [
        r#"llama-server --control-vector-layer-range ' 'a" "🌀 ""a"#,
        r#"llama-server --control-vector-layer-range "1 2" 3"#,
        r#"llama-server --control-vector-layer-range "" 3"#,
        r#"llama-server --control-vector-layer-range=10"#,
    ] {
        assert!(
            matches!(
                parse_command(BackendType::LlamaCpp, command),
                Err(ParseError::InvalidValue { .. })
            ),
            "{command}"
        );
    }
}
