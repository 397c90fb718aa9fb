//! Parse-command against llamactl's recorded cases (`fixtures/llamactl-parse-cases.json`) and
//! against command lines written from each tool's real `--help`.
//!
//! The cases come from llamactl's own parse-command test tables (github.com/lordmathis/llamactl,
//! MIT licence: the Go test tables of commit 3a63308, of the later df790a1 and of the parser
//! before them, with the answers 3a63308's handler gave), gathered into JSON and kept here so the
//! repository needs nothing beside it (see `fixtures/README.md`).

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use corral::backends::{parse_command, BackendOptions, BackendType};
use serde_json::{json, Value};

/// The one case Corral deliberately answers differently from its `expect_status`: the very first
/// llamactl parser rejected an unknown executable, every later one (REV A, HEAD) takes it as the
/// positional model, and so does Corral.
const DISAGREE: &[&str] = &["TestParseLlamaCommand/invalid command without llama-server"];

/// The vendored cases. Missing or unreadable is a failure: these cases are the compatibility
/// contract.
fn load_cases() -> Vec<Value> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llamactl-parse-cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn backend_of(segment: &str) -> BackendType {
    match segment {
        "llama-cpp" => BackendType::LlamaCpp,
        "mlx" => BackendType::MlxLm,
        "vllm" => BackendType::Vllm,
        other => panic!("unknown backend segment {other}"),
    }
}

/// JSON equality where numbers compare numerically (the cases mix 0.7 and 7e-1, 1 and 1.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-9
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// What the HTTP handler would answer: (status, body).
fn answer(backend: BackendType, command: &str) -> (u16, Value) {
    match parse_command(backend, command) {
        Ok(options) => {
            let mut body = json!({"backend_type": backend.as_str()});
            let opts = options.to_json();
            if opts.as_object().is_some_and(|o| !o.is_empty()) {
                body["backend_options"] = opts;
            }
            (200, body)
        }
        Err(e) => (400, json!({"error": e.code(), "details": e.to_string()})),
    }
}

#[test]
fn every_llamactl_parse_case_gets_the_expected_answer() {
    let cases = load_cases();
    assert!(
        cases.len() >= 89,
        "expected the 89 recorded cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let name = case["test"].as_str().unwrap();
        let command = case["command"].as_str().unwrap();
        let backend = backend_of(case["backend"].as_str().unwrap());
        let (status, body) = answer(backend, command);
        let observed = &case["observed_rev_a"];
        let expect_status = if DISAGREE.contains(&name) {
            observed["status"].as_u64().unwrap() as u16
        } else {
            case["expect_status"].as_u64().unwrap() as u16
        };
        let id = &case["id"];
        checked += 1;
        if status != expect_status {
            failures.push(format!(
                "#{id} {name}: {command:?} -> {status} {body}, want {expect_status}"
            ));
            continue;
        }
        if status == 400 {
            // same error code as llamactl's handler
            if body["error"] != observed["body"]["error"] && case["passes_on_rev_a"] == true {
                failures.push(format!(
                    "#{id} {name}: error {} want {}",
                    body["error"], observed["body"]["error"]
                ));
            }
            continue;
        }
        let got = body.get("backend_options").cloned().unwrap_or(json!({}));
        for (key, want) in case["expect_options"].as_object().unwrap() {
            if !got.get(key).is_some_and(|g| same(g, want)) {
                failures.push(format!(
                    "#{id} {name}: {key} = {:?}, want {want}",
                    got.get(key)
                ));
            }
        }
        // Where REV A's whitespace tokenizer cannot mangle anything (no quotes, no negative
        // numbers), Corral must produce exactly what llamactl produced.
        let plain = !command.contains(['"', '\'']) && !command.contains(" -1");
        if case["passes_on_rev_a"] == true && plain && !same(&body, &observed["body"]) {
            failures.push(format!(
                "#{id} {name}: body {body}, llamactl gave {}",
                observed["body"]
            ));
        }
        // The parsed options are valid options: they survive the JSON the API stores.
        let opts = parse_command(backend, command).unwrap();
        let again = BackendOptions::from_json(backend, &opts.to_json()).unwrap();
        if again != opts {
            failures.push(format!("#{id} {name}: JSON round trip changed the options"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn parsed(backend: BackendType, command: &str) -> Value {
    parse_command(backend, command)
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
        .to_json()
}

#[test]
fn llama_server_readme_command_with_short_aliases_parses_to_typed_options() {
    // the style of llama.cpp's own docs: short aliases, -hf, -fa with a value, -ot regex
    let got = parsed(
        BackendType::LlamaCpp,
        r#"llama-server -hf ggml-org/gemma-3-1b-it-GGUF -c 8192 -ngl 99 -fa on -t 8 -tb 16 -b 2048 -ub 512
            -np 4 -ctk q8_0 -ctv q8_0 -ot "blk\.(1|2)\.ffn_.*=CPU" -ot exps=CPU --jinja --host 0.0.0.0 --port 8081"#,
    );
    assert_eq!(
        got,
        json!({
            "batch_size": 2048, "cache_type_k": "q8_0", "cache_type_v": "q8_0", "ctx_size": 8192,
            "flash_attn": "on", "gpu_layers": 99, "host": "0.0.0.0", "hf_repo": "ggml-org/gemma-3-1b-it-GGUF",
            "jinja": true, "override_tensor": ["blk\\.(1|2)\\.ffn_.*=CPU", "exps=CPU"], "parallel": 4,
            "port": 8081, "threads": 8, "threads_batch": 16, "ubatch_size": 512
        })
    );
}

#[test]
fn llama_server_sampling_flags_keep_zero_and_negative_values() {
    let got = parsed(
        BackendType::LlamaCpp,
        "llama-server -m /models/q.gguf --temp 0 --top-k 0 --seed -1 --min-p 0.05 --repeat-penalty 1.1 \
         -n -1 --gpu-layers 0 --no-mmap --no-webui -a 'My Model' --n-gpu-layers 12",
    );
    assert_eq!(
        got,
        json!({
            "alias": "My Model", "gpu_layers": 12, "min_p": 0.05, "model": "/models/q.gguf",
            "no_mmap": true, "no_ui": true, "predict": -1, "repeat_penalty": 1.1, "seed": -1,
            "temp": 0.0, "top_k": 0
        })
    );
}

#[test]
fn llama_server_gpu_layers_accepts_auto_and_all() {
    assert_eq!(
        parsed(BackendType::LlamaCpp, "llama-server -ngl all")["gpu_layers"],
        json!(-2)
    );
    assert_eq!(
        parsed(BackendType::LlamaCpp, "llama-server -ngl auto")["gpu_layers"],
        json!(-1)
    );
}

#[test]
fn llama_server_speculative_and_multimodal_flags_use_their_long_names() {
    let got = parsed(
        BackendType::LlamaCpp,
        "llama-server -m big.gguf -md small.gguf -ngld 99 --mmproj mmproj.gguf --no-mmproj-offload \
         --lora a.gguf --lora b.gguf --control-vector-layer-range 10 20 --rope-scaling yarn --yarn-orig-ctx 32768",
    );
    assert_eq!(got["spec_draft_model"], json!("small.gguf"));
    assert_eq!(got["spec_draft_ngl"], json!(99));
    assert_eq!(got["mmproj"], json!("mmproj.gguf"));
    assert_eq!(got["no_mmproj_offload"], json!(true));
    assert_eq!(got["lora"], json!(["a.gguf", "b.gguf"]));
    assert_eq!(got["control_vector_layer_range"], json!("10 20"));
    assert_eq!(got["yarn_orig_ctx"], json!(32768));
}

#[test]
fn mlx_server_help_flags_parse_including_python_dash_m() {
    let got = parsed(
        BackendType::MlxLm,
        "python3 -m mlx_lm.server --model mlx-community/Qwen3-4B-4bit --port 8082 --temp 0.0 --top-p 0.9 \
         --max-tokens 2048 --chat-template-args '{\"enable_thinking\":false}' --decode-concurrency 16 \
         --prompt-cache-size 4 --log-level WARNING",
    );
    assert_eq!(
        got,
        json!({
            "chat_template_args": "{\"enable_thinking\":false}", "decode_concurrency": 16,
            "log_level": "WARNING", "max_tokens": 2048, "model": "mlx-community/Qwen3-4B-4bit",
            "port": 8082, "prompt_cache_size": 4, "temp": 0.0, "top_p": 0.9
        })
    );
}

#[test]
fn vllm_serve_help_flags_parse_with_the_model_positional() {
    let got = parsed(
        BackendType::Vllm,
        "vllm serve Qwen/Qwen2.5-1.5B-Instruct --dtype auto --api-key token-abc123 -tp 2 \
         --max-model-len 8192 --gpu-memory-utilization 0.85 --enable-auto-tool-choice \
         --tool-call-parser hermes --served-model-name qwen --lora-modules a=/l/a b=/l/b --kv-transfer-config '{\"x\": 1}'",
    );
    assert_eq!(got["model"], json!("Qwen/Qwen2.5-1.5B-Instruct"));
    assert_eq!(got["tensor_parallel_size"], json!(2));
    assert_eq!(got["api_key"], json!(["token-abc123"]));
    assert_eq!(got["enable_auto_tool_choice"], json!(true));
    assert_eq!(got["max_model_len"], json!(8192));
    assert_eq!(got["served_model_name"], json!("qwen"));
    assert_eq!(got["kv_transfer_config"], json!("{\"x\": 1}"));
    // nargs='+' in vLLM: both modules follow one flag
    assert_eq!(got["lora_modules"], json!(["a=/l/a", "b=/l/b"]));
}

#[test]
fn unknown_flags_land_in_extra_args_and_come_back_out_in_argv() {
    let options = parse_command(
        BackendType::LlamaCpp,
        "llama-server -m m.gguf --future-flag 3 --another-switch --neg-value -5",
    )
    .unwrap();
    assert_eq!(
        options.to_json()["extra_args"],
        json!({"another_switch": "true", "future_flag": "3", "neg_value": "-5"})
    );
    assert_eq!(
        options.to_args(),
        [
            "--model",
            "m.gguf",
            "--another-switch",
            "--future-flag",
            "3",
            "--neg-value",
            "-5"
        ]
    );
}

#[test]
fn a_switch_followed_by_a_plain_word_leaves_the_word_as_a_stray_value() {
    let got = parsed(
        BackendType::LlamaCpp,
        "llama-server --verbose maybe --mlock true --jinja FALSE",
    );
    assert_eq!(got, json!({"jinja": false, "mlock": true, "verbose": true}));
}

#[test]
fn malformed_commands_are_parse_errors_with_a_reason() {
    for (command, needle) in [
        ("llama-server ---model x", "malformed flag: ---model"),
        ("llama-server --a/b x", "malformed flag: --a/b"),
        ("llama-server --alias 'open", "unterminated quoted string"),
        ("llama-server --ctx-size", "--ctx-size needs a value"),
        (
            "llama-server --ctx-size 4096.5",
            "--ctx-size expects an integer",
        ),
        ("llama-server --temp hot", "--temp expects a number"),
        ("llama-server --port 70000", "--port expects a port"),
        (
            "llama-server --flash-attn sometimes",
            "--flash-attn expects one of",
        ),
        (
            "llama-server --verbose=maybe",
            "--verbose expects true or false",
        ),
    ] {
        let e = parse_command(BackendType::LlamaCpp, command).unwrap_err();
        assert_eq!(e.code(), "parse_error", "{command}");
        assert!(e.to_string().contains(needle), "{command}: {e}");
    }
    for blank in ["", "   ", "\n\t"] {
        let e = parse_command(BackendType::Vllm, blank).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("invalid_command", "Command cannot be empty")
        );
    }
}
