//! Property tests of parse-command: no command line makes it panic, what it accepts the API
//! accepts as it is, and the argv Corral builds from any valid options parses back to options
//! that build the same argv.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed case, with the value in the message

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

/// Words a command line is made of: every flag and alias of every backend, the executables,
/// numbers, quotes, `=`, continuations and odd dashes, mixed with arbitrary text.
fn word() -> impl Strategy<Value = String> {
    let mut known: Vec<String> = Vec::new();
    for backend in BackendType::ALL {
        let table = Backend::of(backend);
        for spec in table.specs {
            known.push(spec.flag.to_owned());
            known.extend(spec.aliases.iter().map(|alias| (*alias).to_owned()));
        }
        known.extend(table.negations.iter().map(|(_, flag)| (*flag).to_owned()));
        known.extend(table.executables.iter().map(|exe| (*exe).to_owned()));
        known.extend(table.subcommands.iter().map(|sub| (*sub).to_owned()));
    }
    known.extend(
        [
            "python", "-m", "-", "--", "---x", "-1", "-0.5", "1e999", "NaN", "0", "65536", "true",
            "false", "on", "\"", "'", "\\\n", "=", "--x=", "--=y", "a b", "\\", "\n", "\t", "é",
        ]
        .map(str::to_owned),
    );
    prop_oneof![
        3 => proptest::sample::select(known),
        1 => any::<String>(),
        1 => "[-=a-z0-9_.\"' \\\\]{0,8}",
    ]
}

fn command() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        4 => proptest::collection::vec(word(), 0..24).prop_map(|words| words.join(" ")),
    ]
}

fn backend() -> impl Strategy<Value = BackendType> {
    proptest::sample::select(BackendType::ALL.to_vec())
}

/// A string value a user could give an option on a command line: anything printable that does
/// not start with a dash (a word starting with one is the next flag, for every CLI parser).
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9./:_,{}\"'=é漢][a-zA-Z0-9./:_ ,{}\"'=é漢-]{0,12}|"
}

/// One valid JSON value of `spec`, or `None` for "leave this option out".
fn value_of(table: &'static Backend, spec: &'static OptionSpec) -> BoxedStrategy<Value> {
    match spec.kind {
        OptionKind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        OptionKind::Int if spec.name == "port" => (1i64..=65535).prop_map(Value::from).boxed(),
        OptionKind::Int => any::<i64>().prop_map(Value::from).boxed(),
        OptionKind::Float => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f))
            .boxed(),
        OptionKind::String => match table.choices(spec.name) {
            Some(choices) => proptest::sample::select(choices.to_vec())
                .prop_map(|choice| json!(choice))
                .boxed(),
            None if table.is_two_values(spec.name) => ("[0-9a-z]{1,4}", "[0-9a-z]{1,4}")
                .prop_map(|(start, end)| json!(format!("{start} {end}")))
                .boxed(),
            None => text().prop_map(Value::String).boxed(),
        },
        OptionKind::StringList => proptest::collection::vec(text(), 0..4)
            .prop_map(|items| json!(items))
            .boxed(),
    }
}

/// Valid `backend_options` JSON for `backend`: some of its options and some extra_args.
fn options_json(backend: BackendType) -> BoxedStrategy<Value> {
    let table = Backend::of(backend);
    // Without a bool set together with the option its `--no-` flag is (llama-server's
    // `kv_offload: false` and `no_kv_offload: true`): both write one flag, which reads back once.
    let specs = proptest::sample::subsequence(table.specs.iter().collect::<Vec<_>>(), 0..16)
        .prop_filter("a bool and its --no- twin", move |specs| {
            !specs.iter().any(|spec| {
                table
                    .negation(spec.name)
                    .is_some_and(|flag| specs.iter().any(|twin| twin.flag == flag))
            })
        });
    let extra = proptest::collection::btree_map(
        "[a-z][a-z0-9]{0,6}(_[a-z0-9]{1,4})?"
            .prop_filter("not an option", move |key| table.lookup(key).is_none()),
        prop_oneof![text(), Just("true".to_owned()), Just(String::new())],
        0..4,
    );
    (specs, extra)
        .prop_flat_map(move |(specs, extra)| {
            let values: Vec<_> = specs
                .into_iter()
                .map(|spec| value_of(table, spec).prop_map(move |v| (spec.name, v)))
                .collect();
            (values, Just(extra))
        })
        .prop_map(|(values, extra)| {
            let mut object: Map<String, Value> = values
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect();
            if !extra.is_empty() {
                object.insert("extra_args".into(), json!(extra));
            }
            Value::Object(object)
        })
        .boxed()
}

/// The executable words a user pastes before the options.
fn executable(backend: BackendType) -> &'static [&'static str] {
    match backend {
        BackendType::LlamaCpp => &["/usr/local/bin/llama-server"],
        BackendType::MlxLm => &["python", "-m", "mlx_lm.server"],
        BackendType::Vllm => &["vllm", "serve"],
    }
}

proptest! {
    #![proptest_config(crate::fuzz::config(512))]

    #[test]
    fn no_command_line_makes_parse_command_panic_and_what_it_accepts_the_api_stores(
        backend in backend(),
        command in command(),
    ) {
        if let Ok(options) = parse_command(backend, &command) {
            let stored = BackendOptions::from_json(backend, &options.to_json());
            prop_assert_eq!(stored.as_ref().ok(), Some(&options), "{:?}", stored.as_ref().err());
        }
    }

    #[test]
    fn the_argv_built_from_valid_options_parses_back_to_options_with_the_same_argv(
        (backend, json) in backend().prop_flat_map(|b| (Just(b), options_json(b))),
    ) {
        let options = BackendOptions::from_json(backend, &json).unwrap();
        let mut argv: Vec<String> =
            executable(backend).iter().map(|word| (*word).to_owned()).collect();
        argv.extend(options.to_args());
        let command = shell_words::join(&argv);
        // The backend gets the same argv: what it runs is the same, though the JSON may differ
        // where two options mean one flag (llama-server's `warmup: false` and `no_warmup: true`
        // are both `--no-warmup`).
        let parsed = parse_command(backend, &command).map(|parsed| parsed.to_args());
        prop_assert_eq!(
            parsed.as_ref().ok(),
            Some(&options.to_args()),
            "{} -> {:?}",
            command,
            parsed.as_ref().err()
        );
    }
}

/// Found by the round trip above: `--no-X`, which argv building writes for a false bool, was
/// read back as an unknown flag in `extra_args` instead of the option set to false.
#[test]
fn a_false_bool_written_as_its_no_flag_parses_back_as_false() {
    for (backend, command, option) in [
        (
            BackendType::Vllm,
            "vllm serve m --no-enable-chunked-prefill",
            "enable_chunked_prefill",
        ),
        (
            BackendType::Vllm,
            "vllm serve m --no-trust-remote-code",
            "trust_remote_code",
        ),
    ] {
        let options = parse_command(backend, command).unwrap();
        assert_eq!(
            options.get(option),
            Some(&OptionValue::Bool(false)),
            "{command}"
        );
        assert!(options.extra_args().is_empty(), "{command}");
    }
}
