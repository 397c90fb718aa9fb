//! Parse-command: a shell command line of a backend -> options (llamactl's algorithm, with a
//! quote-aware tokenizer and negative numbers).

use super::{
    flag_key, Backend, BackendOptions, BackendType, OptionKind, OptionSpec, OptionValue, ParseError,
};

pub(super) fn parse_command(
    backend: BackendType,
    command: &str,
) -> Result<BackendOptions, ParseError> {
    if command.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let table = Backend::of(backend);
    let words = shell_words::split(&join_continuations(command))
        .map_err(|_| ParseError::UnterminatedQuote)?;
    let mut rest = words.as_slice();
    rest = skip_executable(table, rest);
    if let Some((first, tail)) = rest.split_first() {
        if table
            .subcommands
            .iter()
            .any(|s| first.eq_ignore_ascii_case(s))
        {
            rest = tail;
        }
    }
    let mut positional_model = None;
    if let Some((first, tail)) = rest.split_first() {
        if !first.starts_with('-') {
            positional_model = Some(first.clone());
            rest = tail;
        }
    }

    let mut options = BackendOptions::empty(backend);
    let mut i = 0;
    while i < rest.len() {
        let word = &rest[i];
        i += 1;
        // stray values are ignored, as llamactl does
        if !word.starts_with('-') || word == "-" || word == "--" {
            continue;
        }
        if word.starts_with("---") {
            return Err(ParseError::MalformedFlag(word.clone()));
        }
        let (flag, inline) = match attached_value(table, word) {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => match word.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_string())),
                None => (word.as_str(), None),
            },
        };
        let key = flag_key(flag);
        match table.lookup(&key) {
            Some(spec) => {
                let consumed = apply_known(table, &mut options, spec, flag, inline, &rest[i..])?;
                i += consumed;
            }
            None => {
                // `--no-X`, as argv building writes a false bool: the option X set to false
                if let (None, Some(spec)) = (&inline, negated(table, &key)) {
                    options.values.insert(spec.name, OptionValue::Bool(false));
                    continue;
                }
                // the key must survive the JSON the API stores (same rule as extra_args there)
                if super::values::validate_extra_key(table, &key).is_err() {
                    return Err(ParseError::MalformedFlag(word.clone()));
                }
                let value = match inline {
                    Some(value) => value,
                    None => match rest.get(i) {
                        Some(next) if !looks_like_flag(next) => {
                            i += 1;
                            next.clone()
                        }
                        // a bare unknown flag: llamactl (HEAD) stores "true"
                        _ => "true".to_string(),
                    },
                };
                options.extra_args.insert(key, value);
            }
        }
    }
    if let Some(model) = positional_model {
        options
            .values
            .entry("model")
            .or_insert(OptionValue::String(model));
    }
    Ok(options)
}

/// The bool option whose false spelling is the flag `key` names (`no_warmup` -> `warmup`).
fn negated(table: &Backend, key: &str) -> Option<&'static OptionSpec> {
    table
        .negations
        .iter()
        .find(|(_, flag)| flag_key(flag) == key)
        .and_then(|(name, _)| table.specs.iter().find(|spec| spec.name == *name))
}

/// `-O3` or `-O=3` for a short flag that takes its value attached: `("-O", "3")`.
fn attached_value<'a>(table: &Backend, word: &'a str) -> Option<(&'static str, &'a str)> {
    table.attached_values.iter().find_map(|flag| {
        let rest = word.strip_prefix(flag).filter(|rest| !rest.is_empty())?;
        Some((*flag, rest.strip_prefix('=').unwrap_or(rest)))
    })
}

/// vLLM's human-readable integers: `25.6k` = 25600 and `1K` = 1024 (decimal suffixes take a
/// fraction, binary ones do not); `None` for anything else, plain numbers included.
fn suffixed_int(text: &str) -> Option<i64> {
    let text = text.trim();
    let suffix = text.chars().last()?;
    let number = &text[..text.len() - suffix.len_utf8()];
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) || number.ends_with('.') {
        return None;
    }
    let (multiplier, decimal): (i64, bool) = match suffix {
        'k' => (1_000, true),
        'm' => (1_000_000, true),
        'g' => (1_000_000_000, true),
        't' => (1_000_000_000_000, true),
        'K' => (1 << 10, false),
        'M' => (1 << 20, false),
        'G' => (1 << 30, false),
        'T' => (1 << 40, false),
        _ => return None,
    };
    if decimal {
        let value = number.parse::<f64>().ok()? * multiplier as f64;
        // `i64::MAX as f64` is 2^63, the first value past the range; vLLM truncates as `int()`
        (value < i64::MAX as f64).then_some(value.trunc() as i64)
    } else if number.contains('.') {
        None
    } else {
        whole.parse::<i64>().ok()?.checked_mul(multiplier)
    }
}

/// A list option's value as the backend reads it: a JSON array of strings, or one plain item.
fn json_list(text: &str) -> Option<Vec<String>> {
    if text.trim_start().starts_with('[') {
        serde_json::from_str(text).ok()
    } else {
        Some(vec![text.to_owned()])
    }
}

/// Backslash-newline continuations (with any spaces around) become one space, as in a shell
/// script pasted from a README.
fn join_continuations(command: &str) -> String {
    let mut out = String::with_capacity(command.len());
    let chars: Vec<char> = command.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' {
            let mut j = i + 1;
            while j < chars.len() && (chars[j] == ' ' || chars[j] == '\t' || chars[j] == '\r') {
                j += 1;
            }
            if j < chars.len() && chars[j] == '\n' {
                j += 1;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                out.push(' ');
                i = j;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Skips `llama-server`, `/usr/bin/llama-server`, `LLAMA-SERVER`, `python -m mlx_lm.server`, ...
fn skip_executable<'a>(table: &Backend, words: &'a [String]) -> &'a [String] {
    let Some(first) = words.first() else {
        return words;
    };
    let base = first
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(first)
        .to_ascii_lowercase();
    let base = base.strip_suffix(".exe").unwrap_or(&base);
    let is_path = first.contains(['/', '\\']);
    let named = table.executables.iter().any(|exe| {
        if is_path {
            // llamactl skips any path ending in the name (`/opt/my-llama-server`)
            base.ends_with(exe)
        } else {
            base == *exe
        }
    });
    if named {
        return &words[1..];
    }
    if base.starts_with("python")
        && words.len() >= 3
        && words[1] == "-m"
        && table.python_modules.contains(&words[2].as_str())
    {
        return &words[3..];
    }
    words
}

/// A word that starts a new flag rather than being a value: `-x`, `--x`, but not `-1` or `-0.5`.
fn looks_like_flag(word: &str) -> bool {
    word.starts_with('-') && word.len() > 1 && word.parse::<f64>().is_err()
}

/// Stores one known option; returns how many following words it consumed as its value.
fn apply_known(
    table: &Backend,
    options: &mut BackendOptions,
    spec: &'static OptionSpec,
    flag: &str,
    inline: Option<String>,
    following: &[String],
) -> Result<usize, ParseError> {
    let invalid = |expected: &'static str, value: &str| ParseError::InvalidValue {
        flag: flag.to_string(),
        expected,
        value: value.to_string(),
    };
    if spec.kind == OptionKind::Bool {
        let (text, consumed) = match inline {
            Some(text) => (Some(text), 0),
            None => match following.first() {
                Some(next) if parse_bool(next).is_some() => (Some(next.clone()), 1),
                _ => (None, 0),
            },
        };
        let value = match text {
            None => true,
            Some(text) => parse_bool(&text).ok_or_else(|| invalid("true or false", &text))?,
        };
        options.values.insert(spec.name, OptionValue::Bool(value));
        return Ok(consumed);
    }

    if spec.kind == OptionKind::StringList
        && table.repeat_in_one_flag.contains(&spec.name)
        && inline.is_none()
    {
        // argparse nargs='+': every following non-flag word belongs to this flag
        let values: Vec<String> = following
            .iter()
            .take_while(|w| !looks_like_flag(w))
            .cloned()
            .collect();
        if values.is_empty() {
            return Err(ParseError::MissingValue {
                flag: flag.to_string(),
                expected: "one or more values",
            });
        }
        let consumed = values.len();
        let entry = options
            .values
            .entry(spec.name)
            .or_insert_with(|| OptionValue::StringList(Vec::new()));
        if let OptionValue::StringList(list) = entry {
            list.extend(values);
        }
        return Ok(consumed);
    }
    let wanted = if table.is_two_values(spec.name) && inline.is_none() {
        2
    } else {
        1
    };
    let (text, consumed) = match inline {
        Some(text) => (text, 0),
        None => {
            let values: Vec<&String> = following
                .iter()
                .take(wanted)
                .take_while(|w| !looks_like_flag(w))
                .collect();
            if values.len() < wanted {
                // llamactl 1.x wrote a bare --flash-attn; llama.cpp now wants on|off|auto
                if spec.name == "flash_attn" {
                    options
                        .values
                        .insert(spec.name, OptionValue::String("on".into()));
                    return Ok(0);
                }
                let expected = if wanted == 2 {
                    "two values: START END"
                } else {
                    super::kind_expects(spec.kind)
                };
                return Err(ParseError::MissingValue {
                    flag: flag.to_string(),
                    expected,
                });
            }
            let joined = values
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            (joined, wanted)
        }
    };
    // What the instance options take (`values.rs`): exactly two words. A quoted word holding a
    // space, or an empty one, would make a value the API then refuses.
    if table.is_two_values(spec.name) && text.split_whitespace().count() != 2 {
        return Err(ParseError::InvalidValue {
            flag: flag.to_string(),
            expected: "two words: START END",
            value: text,
        });
    }
    let value = match spec.kind {
        OptionKind::Int => {
            let keyword = table
                .int_keywords
                .iter()
                .find(|(name, word, _)| *name == spec.name && text.eq_ignore_ascii_case(word));
            let suffixed = || {
                table
                    .suffixed_ints
                    .contains(&spec.name)
                    .then(|| suffixed_int(&text))
                    .flatten()
            };
            let number = match keyword {
                Some((_, _, number)) => *number,
                None => text
                    .parse::<i64>()
                    .ok()
                    .or_else(suffixed)
                    .ok_or_else(|| invalid("an integer", &text))?,
            };
            if spec.name == "port" {
                if number == 0 {
                    options.values.remove("port");
                    return Ok(consumed);
                }
                if !(1..=65535).contains(&number) {
                    return Err(invalid("a port (1-65535)", &text));
                }
            }
            OptionValue::Int(number)
        }
        OptionKind::Float => {
            let number = text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| invalid("a number", &text))?;
            OptionValue::Float(number)
        }
        OptionKind::StringList => {
            let items = if table.json_lists.contains(&spec.name) {
                json_list(&text)
                    .filter(|items| !items.iter().any(|item| item.contains('\0')))
                    .ok_or_else(|| invalid("a JSON array of strings", &text))?
            } else {
                vec![text]
            };
            let entry = options
                .values
                .entry(spec.name)
                .or_insert_with(|| OptionValue::StringList(Vec::new()));
            if let OptionValue::StringList(list) = entry {
                list.extend(items);
            }
            return Ok(consumed);
        }
        OptionKind::String => {
            let text = match (spec.name, parse_bool(&text)) {
                ("flash_attn", Some(b)) => (if b { "on" } else { "off" }).to_string(),
                _ => text,
            };
            if let Some(choices) = table.choices(spec.name) {
                if !choices.contains(&text.as_str()) {
                    return Err(ParseError::InvalidValue {
                        flag: flag.to_string(),
                        expected: "one of the listed values",
                        value: format!("{text} (allowed: {})", choices.join(", ")),
                    });
                }
            }
            OptionValue::String(text)
        }
        OptionKind::Bool => {
            OptionValue::Bool(parse_bool(&text).ok_or_else(|| invalid("true or false", &text))?)
        }
    };
    options.values.insert(spec.name, value);
    Ok(consumed)
}

fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}
