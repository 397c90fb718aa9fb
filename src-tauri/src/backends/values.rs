//! Option values from JSON (a create or update body, a stored definition): each checked against
//! its spec's kind, range and choices, with an error naming the option.

use std::collections::BTreeMap;

use super::{
    describe_json, kind_expects, Backend, OptionKind, OptionSpec, OptionValue, OptionsError,
};

pub(super) fn value_from_json(
    table: &Backend,
    spec: &'static OptionSpec,
    key: &str,
    raw: &serde_json::Value,
) -> Result<Option<OptionValue>, OptionsError> {
    let wrong = || OptionsError::WrongType {
        key: key.to_string(),
        expected: kind_expects(spec.kind),
        found: describe_json(raw),
    };
    let value = match spec.kind {
        OptionKind::Bool => OptionValue::Bool(raw.as_bool().ok_or_else(wrong)?),
        OptionKind::Int => {
            let int = match raw {
                serde_json::Value::Number(n) if n.is_i64() => n.as_i64().ok_or_else(wrong)?,
                serde_json::Value::Number(n) if n.is_u64() => {
                    return Err(OptionsError::OutOfRange {
                        key: key.to_string(),
                        value: n.to_string(),
                        allowed: format!("up to {}", i64::MAX),
                    });
                }
                // `5.0` is the integer 5 in JSON (and in JSON Schema), as clients may write it
                serde_json::Value::Number(n) => n.as_f64().and_then(whole).ok_or_else(wrong)?,
                _ => return Err(wrong()),
            };
            return check_int(spec, key, int);
        }
        OptionKind::Float => OptionValue::Float(raw.as_f64().ok_or_else(wrong)?),
        OptionKind::String => {
            // llamactl stored flash_attn as a bool before llama.cpp made it on|off|auto
            let text = match (raw, spec.name) {
                (serde_json::Value::Bool(b), "flash_attn") => {
                    (if *b { "on" } else { "off" }).to_string()
                }
                (serde_json::Value::String(s), _) => s.clone(),
                _ => return Err(wrong()),
            };
            check_string(table, spec, key, text)?
        }
        OptionKind::StringList => {
            let items = raw.as_array().ok_or_else(wrong)?;
            let list = items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(wrong)?;
            if list.iter().any(|item| item.contains('\0')) {
                return Err(no_nul(key));
            }
            OptionValue::StringList(list)
        }
    };
    Ok(Some(value))
}

/// A NUL byte can never reach a program's argv: refused here rather than failing the start.
fn no_nul(key: &str) -> OptionsError {
    OptionsError::WrongType {
        key: key.to_string(),
        expected: "text without NUL characters",
        found: "a NUL character".into(),
    }
}

/// `value` as an i64 when it is a whole number that a float spells exactly (up to 2^53): past
/// that, a float may be an integer literal out of range that JSON parsing rounded.
pub(crate) fn whole(value: f64) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (value.fract() == 0.0 && (-EXACT..=EXACT).contains(&value)).then_some(value as i64)
}

/// Range rules for ints: a port is 1..=65535, and 0 means "assign one" (so: not set).
fn check_int(
    spec: &OptionSpec,
    key: &str,
    value: i64,
) -> Result<Option<OptionValue>, OptionsError> {
    if spec.name == "port" {
        if value == 0 {
            return Ok(None);
        }
        if !(1..=65535).contains(&value) {
            return Err(OptionsError::OutOfRange {
                key: key.to_string(),
                value: value.to_string(),
                allowed: "1-65535, or 0 to assign one".into(),
            });
        }
    }
    Ok(Some(OptionValue::Int(value)))
}

fn check_string(
    table: &Backend,
    spec: &OptionSpec,
    key: &str,
    value: String,
) -> Result<OptionValue, OptionsError> {
    if value.contains('\0') {
        return Err(no_nul(key));
    }
    if let Some(choices) = table.choices(spec.name) {
        if !choices.contains(&value.as_str()) {
            return Err(OptionsError::NotAChoice {
                key: key.to_string(),
                value,
                allowed: choices.join(", "),
            });
        }
    }
    if table.is_two_values(spec.name) && value.split_whitespace().count() != 2 {
        return Err(OptionsError::WrongType {
            key: key.to_string(),
            expected: "two words separated by a space (START END)",
            found: format!("the string {value:?}"),
        });
    }
    Ok(OptionValue::String(value))
}

pub(super) fn extra_args_from_json(
    table: &Backend,
    raw: &serde_json::Value,
) -> Result<BTreeMap<String, String>, OptionsError> {
    let object = match raw {
        serde_json::Value::Null => return Ok(BTreeMap::new()),
        serde_json::Value::Object(object) => object,
        other => {
            return Err(OptionsError::ExtraArgs(format!(
                "must be an object of flag -> value, not {}",
                describe_json(other)
            )));
        }
    };
    let mut extra = BTreeMap::new();
    for (key, value) in object {
        let normalized = validate_extra_key(table, key).map_err(OptionsError::ExtraArgs)?;
        let text = match value {
            serde_json::Value::String(s) if s.contains('\0') => {
                return Err(OptionsError::ExtraArgs(format!(
                    "`{key}` must be text without NUL characters"
                )));
            }
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(true) => "true".to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(OptionsError::ExtraArgs(format!(
                    "`{key}` must be a string, a number or true (a bare switch), not {}",
                    describe_json(other)
                )));
            }
        };
        extra.insert(normalized, text);
    }
    Ok(extra)
}

/// A flag name for extra_args in snake_case (`beta-mode` -> `beta_mode`), or why it is refused.
pub(super) fn validate_extra_key(table: &Backend, key: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && !key.starts_with('-')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(format!(
            "`{key}` is not a flag name; write it without dashes, e.g. `n_cpu_moe` for --n-cpu-moe"
        ));
    }
    let normalized = key.replace('-', "_");
    if let Some(spec) = table.lookup(&normalized) {
        return Err(format!(
            "`{key}` is the option `{}`; set it directly",
            spec.name
        ));
    }
    Ok(normalized)
}

/// In a definition saved by an earlier version: a string where the backend's option is now a
/// list becomes a list of that one string (vLLM made `--collect-detailed-traces` take several
/// words). Anything else is left for [`super::BackendOptions::from_json`] to check.
pub fn lists_from_strings(
    backend: super::BackendType,
    options: &mut serde_json::Map<String, serde_json::Value>,
) {
    let table = Backend::of(backend);
    for (key, value) in options.iter_mut() {
        let is_list = table
            .lookup(key)
            .is_some_and(|spec| spec.kind == OptionKind::StringList);
        if let (true, serde_json::Value::String(one)) = (is_list, &*value) {
            *value = serde_json::Value::Array(vec![serde_json::Value::String(one.clone())]);
        }
    }
}
