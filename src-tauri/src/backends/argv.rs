//! The argv a start passes to a backend, from its typed options and `extra_args`: the inverse
//! of parse-command, which reads the same words back.

use super::{Backend, BackendOptions, OptionValue, PositionalModel};

impl BackendOptions {
    /// What a start passes: [`Self::to_args`], plus `--host 127.0.0.1` when the user chose no
    /// host. llama-server and mlx_lm.server already default to loopback, but `vllm serve`
    /// listens on every interface without `--host`, which would put an instance on the LAN
    /// that the user never asked for.
    pub fn launch_args(&self) -> Vec<String> {
        let mut args = self.to_args();
        if self.host().is_none() {
            args.extend(["--host".to_owned(), "127.0.0.1".to_owned()]);
        }
        args
    }

    /// The arguments after the configured command and its configured args, as the user wrote
    /// them (parse-command gives these back).
    pub fn to_args(&self) -> Vec<String> {
        let table = Backend::of(self.backend);
        let mut args = Vec::new();
        if table.model == PositionalModel::First {
            if let Some(model) = self.model() {
                args.push(model.to_string());
            }
        }
        for spec in table.specs {
            if table.model == PositionalModel::First && spec.name == "model" {
                continue;
            }
            let Some(value) = self.values.get(spec.name) else {
                continue;
            };
            match value {
                OptionValue::Bool(true) => args.push(spec.flag.to_string()),
                OptionValue::Bool(false) => {
                    if let Some(negation) = table.negation(spec.name) {
                        args.push(negation.to_string());
                    }
                }
                OptionValue::Int(i) => args.extend([spec.flag.to_string(), i.to_string()]),
                OptionValue::Float(f) => args.extend([spec.flag.to_string(), format_float(*f)]),
                OptionValue::String(s) if table.is_two_values(spec.name) => {
                    args.push(spec.flag.to_string());
                    args.extend(s.split_whitespace().map(str::to_string));
                }
                OptionValue::String(s) => args.extend([spec.flag.to_string(), s.clone()]),
                OptionValue::StringList(list) if table.json_lists.contains(&spec.name) => {
                    let array = serde_json::Value::from(list.clone());
                    args.extend([spec.flag.to_string(), array.to_string()]);
                }
                OptionValue::StringList(list) if table.repeat_in_one_flag.contains(&spec.name) => {
                    if !list.is_empty() {
                        args.push(spec.flag.to_string());
                        args.extend(list.iter().cloned());
                    }
                }
                OptionValue::StringList(list) => {
                    for item in list {
                        args.extend([spec.flag.to_string(), item.clone()]);
                    }
                }
            }
        }
        for (key, value) in &self.extra_args {
            args.push(format!("--{}", key.replace('_', "-")));
            if !is_bare_switch(value) {
                args.push(value.clone());
            }
        }
        args
    }
}

/// An extra_args value that means "the flag alone": `""` or `"true"` (what parse-command stores
/// for a bare unknown flag, as llamactl does).
fn is_bare_switch(value: &str) -> bool {
    value.is_empty() || value == "true"
}

/// Go's `FormatFloat(f, 'f', -1, 64)`: shortest exact digits, never an exponent. Rust's `Display`
/// for f64 does exactly that.
fn format_float(value: f64) -> String {
    format!("{value}")
}
