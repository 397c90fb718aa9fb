//! The form schema of a backend's options, for the UI: each option of the spec table with its
//! type, default, choices and whether the form shows it first.

use serde::Serialize;
use utoipa::ToSchema;

use super::{Backend, BackendType, OptionKind, OptionSpec};

/// The value type of a field, as the UI's form knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Boolean,
    Integer,
    Number,
    String,
    StringList,
    /// Names to values (an instance's `environment`): `NAME=value` lines in the form.
    StringMap,
}

impl From<OptionKind> for FieldType {
    fn from(kind: OptionKind) -> Self {
        match kind {
            OptionKind::Bool => FieldType::Boolean,
            OptionKind::Int => FieldType::Integer,
            OptionKind::Float => FieldType::Number,
            OptionKind::String => FieldType::String,
            OptionKind::StringList => FieldType::StringList,
        }
    }
}

/// One field of an options form.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OptionField {
    /// JSON key (`ctx_size`).
    pub name: &'static str,
    /// Command-line flag (`--ctx-size`); null for Corral's own settings.
    pub flag: Option<&'static str>,
    /// Other spellings of the flag (`-c`).
    pub aliases: Vec<&'static str>,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// The value used when the field is left out; null when unknown or decided at run time.
    /// Any JSON value: a boolean, a number, a string or null, by the field's type.
    #[schema(value_type = Value)]
    pub default: serde_json::Value,
    pub help: &'static str,
    /// Shown first in the form.
    pub common: bool,
    /// The only values accepted, when the set is closed.
    pub choices: Option<Vec<&'static str>>,
}

/// The name people know `backend` by (`llama.cpp`).
pub fn label(backend: BackendType) -> &'static str {
    Backend::of(backend).label
}

/// Every option of `backend`: the common ones first, in their hand-picked order, then the rest
/// in table order.
pub fn fields(backend: BackendType) -> Vec<OptionField> {
    let table = Backend::of(backend);
    let common = table
        .common
        .iter()
        .filter_map(|name| table.specs.iter().find(|spec| spec.name == *name));
    let rest = table
        .specs
        .iter()
        .filter(|spec| !table.common.contains(&spec.name));
    common
        .chain(rest)
        .map(|spec| OptionField {
            name: spec.name,
            flag: Some(spec.flag),
            aliases: spec.aliases.to_vec(),
            field_type: spec.kind.into(),
            default: default_from_help(table, spec),
            help: spec.help,
            common: table.common.contains(&spec.name),
            choices: table.choices(spec.name).map(<[&str]>::to_vec),
        })
        .collect()
}

/// The default the help text states as `(default: X)` or `default: 'X'`, when X reads as a value
/// of the option's type. Phrases (`default: same as --threads`, `enabled if ...`) and the
/// defaults of `--no-...` switches (their help describes the feature, not the switch) give null.
fn default_from_help(table: &Backend, spec: &OptionSpec) -> serde_json::Value {
    use serde_json::Value;
    let Some((_, after)) = spec.help.split_once("default: ") else {
        return Value::Null;
    };
    let text = after
        .split([',', ';', ')'])
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches(|c| c == '\'' || c == '"');
    let first_word = text.split_whitespace().next().unwrap_or_default();
    match spec.kind {
        OptionKind::Bool if spec.name.starts_with("no_") => Value::Null,
        OptionKind::Bool => match text {
            "enabled" | "true" => Value::Bool(true),
            "disabled" | "false" => Value::Bool(false),
            _ => Value::Null,
        },
        // `0 = loaded from model`: the number is the default, the rest explains it.
        OptionKind::Int => first_word.parse::<i64>().map_or(Value::Null, Value::from),
        OptionKind::Float => first_word
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        OptionKind::String => {
            let placeholder = matches!(
                text,
                "" | "none" | "unused" | "unset" | "default" | "…" | "enabled" | "disabled"
            );
            let closed_set_miss = table
                .choices(spec.name)
                .is_some_and(|choices| !choices.contains(&text));
            if placeholder || closed_set_miss || text.contains(char::is_whitespace) {
                Value::Null
            } else {
                Value::String(text.to_owned())
            }
        }
        OptionKind::StringList => Value::Null,
    }
}

/// What the options schema of a backend that checks keys says about Corral's own.
const BACKEND_KEY_NOTE: &str = " Corral gives each start of the backend a secret key of its own, \
     which only Corral's proxy sends: a request straight to the backend's port without it is \
     refused. A key set with `api_key` keeps working beside it.";

/// JSON Schema (OpenAPI 3.1 flavour) of `backend_options` for `backend`, built from `specs`:
/// exactly what `BackendOptions::from_json` accepts (null for any option means "not set").
pub fn options_schema(backend: BackendType) -> serde_json::Value {
    use serde_json::json;
    let table = Backend::of(backend);
    let mut properties = serde_json::Map::new();
    for spec in table.specs {
        let description = format!("{} ({})", spec.help, spec.flag);
        let mut property = match spec.kind {
            OptionKind::Bool => json!({"type": ["boolean", "null"]}),
            OptionKind::Int if spec.name == "port" => {
                json!({"type": ["integer", "null"], "minimum": 0, "maximum": 65535})
            }
            OptionKind::Int => json!({
                "type": ["integer", "null"],
                "format": "int64",
                "minimum": i64::MIN,
                "maximum": i64::MAX,
            }),
            OptionKind::Float => json!({"type": ["number", "null"], "format": "double"}),
            OptionKind::String if table.is_two_values(spec.name) => json!({
                "type": ["string", "null"],
                "pattern": "^\\s*[^\\s\\x00]+\\s+[^\\s\\x00]+\\s*$",
            }),
            OptionKind::String => json!({"type": ["string", "null"], "pattern": NO_NUL}),
            OptionKind::StringList => json!({
                "type": ["array", "null"],
                "items": {"type": "string", "pattern": NO_NUL},
            }),
        };
        if let Some(choices) = table.choices(spec.name) {
            let mut allowed: Vec<serde_json::Value> = choices.iter().map(|c| json!(c)).collect();
            allowed.push(serde_json::Value::Null);
            if spec.name == "flash_attn" {
                // llamactl stored it as a bool before llama.cpp made it on|off|auto
                allowed.extend([json!(true), json!(false)]);
                property["type"] = json!(["string", "boolean", "null"]);
            }
            property["enum"] = serde_json::Value::Array(allowed);
        }
        property["description"] = json!(description);
        properties.insert(spec.name.to_owned(), property);
    }
    properties.insert(
        "extra_args".to_owned(),
        json!({
            "type": ["object", "null"],
            "description": "Flags Corral does not model: key = flag without dashes (snake_case or kebab-case), \
                never one of the options above, value = its argument, or \"\" / \"true\" / true for a bare \
                switch. Emitted as --kebab-key value.",
            "propertyNames": {"pattern": "^[A-Za-z0-9_.][A-Za-z0-9_.-]*$"},
            "additionalProperties": {"anyOf": [
                {"type": "string", "pattern": NO_NUL},
                {"type": "number"},
                {"const": true},
            ]},
        }),
    );
    json!({
        "type": "object",
        "description": format!(
            "Options of {}; only set options appear.{}",
            backend.as_str(),
            match backend {
                BackendType::MlxLm => super::mlx::NO_KEY_NOTE,
                BackendType::LlamaCpp | BackendType::Vllm => BACKEND_KEY_NOTE,
            }
        ),
        "properties": properties,
        "additionalProperties": false,
    })
}

/// Text that can reach argv: without NUL characters.
const NO_NUL: &str = "^[^\\x00]*$";

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use serde_json::json;

    use super::*;

    fn field(backend: BackendType, name: &str) -> OptionField {
        fields(backend)
            .into_iter()
            .find(|field| field.name == name)
            .unwrap()
    }

    #[test]
    fn every_option_appears_once_with_the_common_ones_first() {
        for backend in BackendType::ALL {
            let table = Backend::of(backend);
            let fields = fields(backend);
            assert_eq!(fields.len(), table.specs.len(), "{backend:?}");
            for spec in table.specs {
                assert_eq!(fields.iter().filter(|f| f.name == spec.name).count(), 1);
            }
            for name in table.common {
                assert!(
                    table.specs.iter().any(|spec| spec.name == *name),
                    "{backend:?}: common option {name} is not in the table"
                );
            }
            let common = fields.iter().take_while(|field| field.common).count();
            assert_eq!(common, table.common.len(), "{backend:?}");
            assert_eq!(fields[0].name, "model");
        }
    }

    #[test]
    fn defaults_are_read_from_the_help_only_where_they_are_values() {
        let llama = BackendType::LlamaCpp;
        assert_eq!(field(llama, "temp").default, json!(0.8));
        assert_eq!(field(llama, "top_k").default, json!(40));
        assert_eq!(field(llama, "port").default, json!(8080));
        assert_eq!(field(llama, "host").default, json!("127.0.0.1"));
        assert_eq!(field(llama, "flash_attn").default, json!("auto"));
        assert_eq!(field(llama, "context_shift").default, json!(false));
        assert_eq!(field(llama, "warmup").default, json!(true));
        assert_eq!(field(llama, "no_warmup").default, json!(null));
        assert_eq!(field(llama, "model").default, json!(null));
        assert_eq!(field(llama, "kv_unified").default, json!(null));
        assert_eq!(field(BackendType::MlxLm, "max_tokens").default, json!(512));
        assert_eq!(
            field(BackendType::MlxLm, "log_level").default,
            json!("INFO")
        );
    }

    #[test]
    fn closed_sets_carry_their_choices() {
        let flash = field(BackendType::LlamaCpp, "flash_attn");
        assert_eq!(flash.choices, Some(vec!["on", "off", "auto"]));
        assert_eq!(flash.field_type, FieldType::String);
        assert_eq!(field(BackendType::LlamaCpp, "ctx_size").choices, None);
    }
}
