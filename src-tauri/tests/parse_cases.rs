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

/// One option as argparse prints it in `--help`: its spellings, and what its value looks like
/// (`None`: a switch; `{a,b}` choices are kept as the list).
struct HelpOption {
    spellings: Vec<String>,
    takes_value: bool,
    choices: Vec<String>,
}

/// The options of an argparse `--help` page: each line that starts with two spaces and a dash.
fn help_options(help: &str) -> Vec<HelpOption> {
    help.lines()
        .filter(|line| line.starts_with("  -"))
        .map(|line| {
            // Spellings end where the help text starts: two spaces, or the end of the line.
            let mut head = line
                .trim_start()
                .split("  ")
                .next()
                .unwrap_or_default()
                .to_owned();
            let mut spellings = Vec::new();
            let mut takes_value = false;
            let mut choices = Vec::new();
            // vLLM prints some choices as a Python list: `--model-impl ['auto', 'vllm']`
            if let Some((flag, list)) = head.clone().split_once(" ['") {
                let list = list.split("']").next().unwrap_or_default();
                choices = list.split("', '").map(str::to_owned).collect();
                takes_value = true;
                head = flag.to_owned();
            }
            for part in head.split(", ") {
                let mut words = part.split(' ');
                spellings.push(words.next().unwrap().to_owned());
                if let Some(meta) = words.next() {
                    takes_value = true;
                    if let Some(list) = meta.strip_prefix('{').and_then(|m| m.strip_suffix('}')) {
                        choices = list.split(',').map(str::to_owned).collect();
                    }
                }
            }
            HelpOption {
                spellings,
                takes_value,
                choices,
            }
        })
        .collect()
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/help")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every long flag of a real `--help`, alone on a command line, parses, and its argv parses
/// back to the same options: nothing a user copies from the backend's help is lost or changed,
/// whether the table models the flag or it travels in `extra_args`. Returns the flags the table
/// models but this help no longer lists.
fn round_trip_every_flag(
    backend: BackendType,
    help: &str,
    executable: &str,
    model: &str,
) -> Vec<String> {
    let options = help_options(help);
    assert!(options.len() > 20, "not a --help page");
    let mut failures = Vec::new();
    for option in &options {
        let Some(flag) = option.spellings.iter().find(|s| s.starts_with("--")) else {
            continue;
        };
        if flag == "--help" {
            continue;
        }
        let value = option.choices.first().map_or("7", String::as_str);
        let command = if option.takes_value {
            format!("{executable} {model} {flag} {value}")
        } else {
            format!("{executable} {model} {flag}")
        };
        let first = match parse_command(backend, &command) {
            Ok(options) => options,
            Err(e) => {
                failures.push(format!("{command}: {e}"));
                continue;
            }
        };
        let argv = first.to_args();
        let again = parse_command(
            backend,
            &format!("{executable} {}", shell_words::join(&argv)),
        )
        .unwrap_or_else(|e| panic!("{command} -> {argv:?}: {e}"));
        if again != first {
            failures.push(format!("{command} -> {argv:?} -> {:?}", again.to_json()));
        }
        // a JSON list option writes the value inside its array
        let json_item = format!("\"{value}\"");
        if option.takes_value && !argv.iter().any(|w| w == value || w.contains(&json_item)) {
            failures.push(format!("{command} lost its value: {argv:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let listed: Vec<&str> = options
        .iter()
        .flat_map(|o| o.spellings.iter().map(String::as_str))
        .collect();
    corral::backends::specs(backend)
        .iter()
        .filter(|spec| spec.name != "model" || backend == BackendType::MlxLm)
        .filter(|spec| !listed.contains(&spec.flag))
        .map(|spec| spec.flag.to_owned())
        .collect()
}

#[test]
fn every_flag_of_the_real_mlx_lm_server_help_round_trips_through_parse_command() {
    let help = fixture("mlx_lm.server.txt");
    let gone = round_trip_every_flag(BackendType::MlxLm, &help, "mlx_lm.server", "--model m");
    assert!(
        gone.is_empty(),
        "the table has flags mlx_lm.server no longer takes: {gone:?}"
    );
    // The table types agree with the help: switches are bools, flags with a value are not.
    for option in help_options(&help) {
        let Some(spec) = corral::backends::specs(BackendType::MlxLm)
            .iter()
            .find(|spec| option.spellings.iter().any(|s| s == spec.flag))
        else {
            continue;
        };
        let is_bool = spec.kind == corral::backends::OptionKind::Bool;
        assert_eq!(is_bool, !option.takes_value, "{}", spec.flag);
    }
}

#[test]
fn every_flag_of_the_real_vllm_serve_help_round_trips_through_parse_command() {
    let help = fixture("vllm-serve.txt");
    let mut gone = round_trip_every_flag(BackendType::Vllm, &help, "vllm serve", "m");
    gone.sort();
    // Flags of older vLLM releases that the table keeps, so definitions written for them load.
    let legacy = [
        "--calculate-kv-scales",
        "--device",
        "--disable-frontend-multiprocessing",
        "--enable-lora-bias",
        "--guided-decoding-backend",
        "--lora-extra-vocab-size",
        "--max-long-partial-prefills",
        "--max-num-partial-prefills",
        "--num-lookahead-slots",
        "--rope-scaling",
        "--rope-theta",
        "--swap-space",
        "--task",
    ];
    assert_eq!(
        gone, legacy,
        "flags vLLM dropped since the table was written"
    );
}

/// Every spelling a real `--help` lists (long flags, short aliases, `--no-X`), alone on a command
/// line, is a typed option of the table: none falls through to `extra_args`.
fn every_help_spelling_is_typed(backend: BackendType, help: &str, prefix: &str) {
    let mut untyped = Vec::new();
    for option in help_options(help) {
        for spelling in &option.spellings {
            if spelling == "--help" || spelling == "-h" {
                continue;
            }
            let value = option.choices.first().map_or("7", String::as_str);
            let command = if option.takes_value {
                format!("{prefix} {spelling} {value}")
            } else {
                format!("{prefix} {spelling}")
            };
            let options = parse_command(backend, &command)
                .unwrap_or_else(|e| panic!("{command}: {e}"))
                .to_json();
            // the model of the prefix is not what this flag set, unless it is `--model` itself
            let typed = options
                .as_object()
                .unwrap()
                .keys()
                .any(|key| key != "extra_args" && (key != "model" || spelling == "--model"));
            if options.get("extra_args").is_some() || !typed {
                untyped.push(format!("{command} -> {options}"));
            }
        }
    }
    assert!(
        untyped.is_empty(),
        "flags of the real --help the table does not type:\n{}",
        untyped.join("\n")
    );
}

#[test]
fn every_flag_alias_and_negation_of_the_real_vllm_serve_help_is_a_typed_option() {
    every_help_spelling_is_typed(
        BackendType::Vllm,
        &fixture("vllm-serve.txt"),
        "vllm serve m",
    );
}

#[test]
fn every_flag_of_the_real_mlx_lm_server_help_is_a_typed_option() {
    every_help_spelling_is_typed(
        BackendType::MlxLm,
        &fixture("mlx_lm.server.txt"),
        "mlx_lm.server",
    );
}

/// A sample value of each kind, as the JSON the API takes; choices and `START END` values come
/// from the backend's published schema.
fn samples(backend: BackendType, name: &str, kind: corral::backends::OptionKind) -> Vec<Value> {
    use corral::backends::OptionKind;
    let schema = corral::backends::options_schema(backend);
    let property = &schema["properties"][name];
    if let Some(first) = property["enum"].as_array().and_then(|e| e.first()) {
        return vec![first.clone()];
    }
    match kind {
        OptionKind::Bool => vec![json!(true), json!(false)],
        OptionKind::Int if name == "port" => vec![json!(8081)],
        OptionKind::Int => vec![json!(7), json!(-3)],
        OptionKind::Float => vec![json!(0.5), json!(-2.25)],
        OptionKind::String
            if property["pattern"]
                .as_str()
                .is_some_and(|p| p.contains("\\s+")) =>
        {
            vec![json!("10 20")]
        }
        OptionKind::String => vec![json!("x"), json!("{\"a\": [1, \"b c\"]}")],
        OptionKind::StringList => vec![json!(["a"]), json!(["a=/x", "b c", "{\"k\": 1}"])],
    }
}

/// Every option of every table, set alone to a value of its kind, builds an argv that
/// parse-command reads back to the same options: nothing Corral writes reads back as something
/// else. A false bool without a `--no-` spelling writes nothing, and is left out.
#[test]
fn every_typed_option_of_every_backend_round_trips_through_its_argv() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for backend in [BackendType::LlamaCpp, BackendType::MlxLm, BackendType::Vllm] {
        let executable = match backend {
            BackendType::LlamaCpp => "llama-server",
            BackendType::MlxLm => "mlx_lm.server",
            BackendType::Vllm => "vllm serve",
        };
        for spec in corral::backends::specs(backend) {
            for value in samples(backend, spec.name, spec.kind) {
                let mut json = json!({ spec.name: value });
                if spec.name != "model" {
                    json["model"] = json!("m");
                }
                let options = BackendOptions::from_json(backend, &json)
                    .unwrap_or_else(|e| panic!("{backend:?} {json}: {e}"));
                let argv = options.to_args();
                let unset = BackendOptions::from_json(backend, &json!({"model": "m"})).unwrap();
                if value == json!(false) && argv == unset.to_args() {
                    continue;
                }
                checked += 1;
                let command = format!("{executable} {}", shell_words::join(&argv));
                // llama-server's `--no-X` is an option of its own (`no_warmup: true` for
                // `warmup: false`): the same argv, so the same server.
                let twin = backend == BackendType::LlamaCpp && value == json!(false);
                match parse_command(backend, &command) {
                    Ok(again) if again == options || (twin && again.to_args() == argv) => {}
                    Ok(again) => {
                        failures.push(format!("{json} -> {argv:?} -> {}", again.to_json()))
                    }
                    Err(e) => failures.push(format!("{json} -> {argv:?}: {e}")),
                }
            }
        }
    }
    assert!(checked > 900, "only {checked} values checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} did not round trip:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_real_world_vllm_serve_command_parses_to_the_typed_options() {
    let got = parsed(
        BackendType::Vllm,
        "vllm serve Qwen/Qwen2.5-7B -tp 2 --max-model-len 8192 --no-enable-prefix-caching \
         --served-model-name a --lora-modules a=/x b=/y",
    );
    assert_eq!(
        got,
        json!({
            "enable_prefix_caching": false, "lora_modules": ["a=/x", "b=/y"], "max_model_len": 8192,
            "model": "Qwen/Qwen2.5-7B", "served_model_name": "a", "tensor_parallel_size": 2
        })
    );
}

#[test]
fn vllm_serve_sizes_optimization_levels_and_lists_parse_as_vllm_reads_them() {
    let got = parsed(
        BackendType::Vllm,
        "vllm serve meta-llama/Llama-3.1-8B-Instruct --max-model-len 32k --max-num-batched-tokens 2K \
         -O3 -ep -dp 2 --api-key k1 k2 --allowed-origins '[\"http://localhost:3000\"]' \
         --speculative-config '{\"method\": \"ngram\", \"num_speculative_tokens\": 5}' \
         --collect-detailed-traces model worker --max_num_seqs 64 --no-enable-log-requests \
         --kv-cache-memory-bytes 25.6k",
    );
    assert_eq!(
        got,
        json!({
            "allowed_origins": ["http://localhost:3000"], "api_key": ["k1", "k2"],
            "collect_detailed_traces": ["model", "worker"], "data_parallel_size": 2,
            "enable_expert_parallel": true, "enable_log_requests": false,
            "kv_cache_memory_bytes": 25600, "max_model_len": 32000, "max_num_batched_tokens": 2048,
            "max_num_seqs": 64, "model": "meta-llama/Llama-3.1-8B-Instruct",
            "optimization_level": "3",
            "speculative_config": "{\"method\": \"ngram\", \"num_speculative_tokens\": 5}"
        })
    );
    for (command, key, want) in [
        (
            "vllm serve m --max-model-len auto",
            "max_model_len",
            json!(-1),
        ),
        (
            "vllm serve m --max-model-len -1",
            "max_model_len",
            json!(-1),
        ),
        ("vllm serve m -O=2", "optimization_level", json!("2")),
        ("vllm serve m -O 1", "optimization_level", json!("1")),
        (
            "vllm serve m --allowed-origins '*'",
            "allowed_origins",
            json!(["*"]),
        ),
        (
            "vllm serve m --allowed-methods=[]",
            "allowed_methods",
            json!([]),
        ),
    ] {
        assert_eq!(parsed(BackendType::Vllm, command)[key], want, "{command}");
    }
}

#[test]
fn vllm_list_options_are_written_the_way_vllm_reads_them() {
    let options = BackendOptions::from_json(
        BackendType::Vllm,
        &json!({
            "model": "m", "api_key": ["k1", "k2"], "allowed_origins": ["http://a", "http://b"],
            "middleware": ["x.A", "y.B"]
        }),
    )
    .unwrap();
    // nargs='+' (argparse keeps the last `--api-key` only), a JSON array, action='append'
    assert_eq!(
        options.to_args(),
        [
            "m",
            "--allowed-origins",
            "[\"http://a\",\"http://b\"]",
            "--api-key",
            "k1",
            "k2",
            "--middleware",
            "x.A",
            "--middleware",
            "y.B"
        ]
    );
}

#[test]
fn vllm_sizes_and_json_lists_that_vllm_would_refuse_are_parse_errors() {
    for (command, needle) in [
        (
            "vllm serve m --max-model-len 1.5K",
            "--max-model-len expects an integer",
        ),
        (
            "vllm serve m --max-model-len 32q",
            "--max-model-len expects an integer",
        ),
        (
            "vllm serve m --max-model-len 12.k",
            "--max-model-len expects an integer",
        ),
        (
            "vllm serve m --max-model-len 99999999999t",
            "--max-model-len expects an integer",
        ),
        (
            "vllm serve m --max-model-len k",
            "--max-model-len expects an integer",
        ),
        // suffixes are vLLM's rule for its size options only
        (
            "vllm serve m --max-num-seqs 2k",
            "--max-num-seqs expects an integer",
        ),
        (
            "vllm serve m --allowed-origins '[1]'",
            "--allowed-origins expects a JSON array of strings",
        ),
        (
            "vllm serve m --allowed-origins '[\"a\"'",
            "--allowed-origins expects a JSON array of strings",
        ),
        (
            r#"vllm serve m --allowed-origins '["a\u0000"]'"#,
            "--allowed-origins expects a JSON array",
        ),
    ] {
        let e = parse_command(BackendType::Vllm, command).unwrap_err();
        assert_eq!(e.code(), "parse_error", "{command}");
        assert!(e.to_string().contains(needle), "{command}: {e}");
    }
}
