#!/usr/bin/env python3
"""Generates src-tauri/src/backends/vllm_table.rs from the installed vLLM's `vllm serve` parser.

Usage (the venv `scripts/test-backends-py.sh vllm` installs):
    HF_HUB_OFFLINE=1 ~/.cache/corral-test/vllm-venv/bin/python scripts/gen_vllm_options.py \
        > src-tauri/src/backends/vllm_table.rs

Builds the parser `vllm serve --help=all` prints (vLLM's `make_arg_parser` over a
`FlexibleArgumentParser`) without starting anything, walks its actions and writes one OptionSpec
per flag, in vLLM's order. argparse -> kinds: store_true and BooleanOptionalAction -> Bool (the
latter's `--no-X` spellings go to NEGATIONS), type int -> Int, float -> Float, nargs '+'/'*' ->
StringList written after one flag (REPEAT_IN_ONE_FLAG: argparse keeps only the last occurrence),
action 'append' -> StringList repeated, a JSON list (`--allowed-origins`) -> StringList written as
one JSON array (JSON_LISTS), anything else (str, JSON, config dataclasses) -> String. Ints vLLM
reads with a size suffix (`32k`) go to HUMAN_INTS. Fails rather than guess on anything new.
"""
import argparse
import enum
import re
import sys

# vLLM adds each config field's documentation to its argparse help only when the command line asks
# for help, and leaves `--model` out of the parser when the command is `serve --help` (the model is
# positional there). This command line gets the help and keeps `--model`, which parse-command takes.
sys.argv = ["vllm", "--help"]

# Actions that print and exit: a supervised server never wants them.
SKIP = {"--help", "--version"}

# llamactl's shapes where vLLM's parser says otherwise (its parse-command cases and stored
# definitions depend on them): `--served-model-name` takes several names, but llamactl keeps one.
KIND_OVERRIDES = {"served_model_name": "String"}

# Spellings vLLM's FlexibleArgumentParser rewrites before argparse sees them: `-O <n>`, `-O<n>` and
# `-O=<n>` mean `--optimization-level <n>`.
EXTRA_ALIASES = {"optimization_level": ["-O"]}

# Help where vLLM's own says nothing useful to a form: the model is positional in `vllm serve`.
HELP_OVERRIDES = {
    "model": "Name or path of the Hugging Face model to serve (positional in argv)",
}

# Flags Corral's table had for vLLM releases before this one; kept so definitions and commands
# written for those releases keep working. `(name, flag, aliases, kind, help)`.
LEGACY = [
    ("task", "--task", [], "String",
     "The task to use the model for (older vLLM; newer: --runner and --convert)"),
    ("disable_frontend_multiprocessing", "--disable-frontend-multiprocessing", [], "Bool",
     "Run the OpenAI frontend server in the same process as the model serving engine (older vLLM)"),
    ("swap_space", "--swap-space", [], "Float", "CPU swap space size per GPU in GiB (older vLLM)"),
    ("calculate_kv_scales", "--calculate-kv-scales", [], "Bool",
     "Compute k_scale and v_scale dynamically when kv_cache_dtype is fp8 (older vLLM)"),
    ("enable_lora_bias", "--enable-lora-bias", [], "Bool", "Enable bias for LoRA adapters (older vLLM)"),
    ("lora_extra_vocab_size", "--lora-extra-vocab-size", [], "Int",
     "Maximum size of extra vocabulary in LoRA adapters (older vLLM)"),
    ("max_num_partial_prefills", "--max-num-partial-prefills", [], "Int",
     "For chunked prefill, the max number of concurrent partial prefills (older vLLM)"),
    ("max_long_partial_prefills", "--max-long-partial-prefills", [], "Int",
     "For chunked prefill, the max number of long prompts prefilled concurrently (older vLLM)"),
    ("num_lookahead_slots", "--num-lookahead-slots", [], "Int",
     "Number of slots to allocate per sequence per step, beyond the known token ids (older vLLM)"),
    ("guided_decoding_backend", "--guided-decoding-backend", [], "String",
     "Engine for guided decoding (older vLLM; newer: --structured-outputs-config)"),
    ("device", "--device", [], "String", "Device type for vLLM execution (older vLLM; detected automatically)"),
    ("rope_scaling", "--rope-scaling", [], "String",
     "JSON object of RoPE scaling configuration (older vLLM; newer: --hf-overrides)"),
    ("rope_theta", "--rope-theta", [], "Float", "RoPE theta (older vLLM; newer: --hf-overrides)"),
]

# vLLM's conversions of a JSON value (its config dataclasses among them): Strings holding JSON.
JSON_TYPES = {"loads", "parse_dataclass", "union_dict_and_str"}

# Words that end in a period without ending a sentence.
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "approx.", "incl.", "resp.", "cf.")


def snake(flag):
    return flag.lstrip("-").replace("-", "_").replace(".", "_")


def inner_type(fn):
    """The conversion under vLLM's wrappers (`optional_type(int)` -> int)."""
    seen = 0
    while fn is not None and getattr(fn, "__name__", "") in ("_optional_type", "_parse_type") and seen < 5:
        cells = [c.cell_contents for c in (fn.__closure__ or [])]
        fn = next((c for c in cells if callable(c)), None)
        seen += 1
    return fn


def kind_of(action):
    """Our kind and whether the list's values all follow one flag."""
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return "Bool", False
    if isinstance(action, argparse._StoreFalseAction):
        raise SystemExit(f"store_false {action.option_strings}: a true value would unset it; map it by hand")
    if isinstance(action, argparse._AppendAction):
        return "StringList", False
    if isinstance(action, (argparse._StoreConstAction, argparse._AppendConstAction, argparse._CountAction)):
        raise SystemExit(f"unexpected action {type(action).__name__} for {action.option_strings}")
    if action.nargs in ("+", "*"):
        return "StringList", True
    if action.nargs not in (None, "?"):
        raise SystemExit(f"unexpected nargs {action.nargs!r} for {action.option_strings}")
    fn = inner_type(action.type)
    name = getattr(fn, "__name__", "")
    if name == "loads" and isinstance(action.default, list):
        return "StringList", False  # a JSON array in one word: JSON_LISTS
    if name in JSON_TYPES:
        return "String", False
    if fn is int or name in ("human_readable_int", "human_readable_int_or_auto"):
        return "Int", False
    if fn is float:
        return "Float", False
    return "String", False


def first_sentence(text):
    """The first sentence of the first paragraph, on one line."""
    para = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    # a list in the first paragraph ("level:\n- INFO: ...") is detail, not the summary
    para = re.split(r"\n\s*[-*] ", para, maxsplit=1)[0]
    para = " ".join(para.split())
    depth, in_code = 0, False
    for i, c in enumerate(para):
        if c == "`":
            in_code = not in_code
        elif in_code:
            continue
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "." and depth == 0 and (i + 1 == len(para) or para[i + 1] == " "):
            word = para[: i + 1].rsplit(" ", 1)[-1]
            if word.lower() in ABBREVIATIONS:
                continue
            return para[: i + 1]
    return para


def short_default(action):
    d = action.default
    if d is None or d is argparse.SUPPRESS or isinstance(action, argparse._StoreTrueAction):
        return None
    if isinstance(d, enum.Enum):
        d = d.value if isinstance(d.value, (int, str)) else d.name
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, (int, float)):
        return str(d)
    if isinstance(d, str) and d and len(d) <= 24:
        return d
    return None


def help_of(parser, action, kind):
    formatter = parser._get_formatter()
    raw = formatter._expand_help(action) if action.help else ""
    text = first_sentence(raw)
    if text.endswith(":"):
        text = text[:-1]
    if getattr(inner_type(action.type), "__name__", "") in JSON_TYPES and kind != "StringList":
        text += " (JSON)"
    choices = [c for c in (action.choices or []) if c is not None]
    if choices:
        listed = ", ".join(str(c) for c in choices)
        if len(listed) <= 100:
            text += f" (one of: {listed})"
    default = short_default(action)
    if default is not None and kind != "StringList" and "default" not in text.lower():
        text += f" (default: {default})"
    return text.strip()


def build_parser():
    # vLLM logs to stdout while importing; the table goes to stdout.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        import vllm

        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    finally:
        sys.stdout = real_stdout
    return parser, vllm.__version__


def main():
    parser, version = build_parser()
    specs, negations, repeat_in_one, json_lists, human_ints, keys = [], [], [], [], [], {}

    def claim(key, owner):
        if key in keys and keys[key] != owner:
            raise SystemExit(f"`{key}` names both {keys[key]} and {owner}")
        keys[key] = owner

    for action in parser._actions:
        strings = list(action.option_strings)
        if not strings or any(s in SKIP for s in strings):
            continue  # the positional model_tag, --help
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        negative = []
        if isinstance(action, argparse.BooleanOptionalAction):
            positive = [s for s in strings if not any(s == "--no-" + p[2:] for p in strings if p.startswith("--"))]
            negative = [s for s in strings if s not in positive]
        else:
            positive = strings
        longs = [s for s in positive if s.startswith("--")]
        flag = longs[0] if longs else positive[0]
        name = snake(flag)
        aliases = [s for s in positive if s != flag] + EXTRA_ALIASES.get(name, [])
        kind, in_one = kind_of(action)
        kind = KIND_OVERRIDES.get(name, kind)
        if kind != "StringList":
            in_one = False
        text = HELP_OVERRIDES.get(name) or help_of(parser, action, kind)
        for s in [flag] + aliases:
            claim(snake(s), name)
        for s in negative:
            claim(snake(s), name)
            negations.append((name, s))
        if in_one:
            repeat_in_one.append(name)
        conversion = getattr(inner_type(action.type), "__name__", "")
        if kind == "StringList" and conversion == "loads":
            json_lists.append(name)
        if kind == "Int" and conversion in ("human_readable_int", "human_readable_int_or_auto"):
            human_ints.append(name)
        specs.append((name, flag, aliases, kind, text))

    for name, flag, aliases, kind, text in LEGACY:
        if name in keys:
            raise SystemExit(f"legacy {name} is in this vLLM's parser again: drop it from LEGACY")
        claim(name, name)
        specs.append((name, flag, aliases, kind, text))

    out = []
    out.append(f"//! GENERATED by scripts/gen_vllm_options.py from the `vllm serve` parser of vLLM {version}:")
    out.append("//! every flag it accepts, in vLLM's order, then the flags of older releases. Regenerate")
    out.append("//! instead of editing by hand.")
    out.append("")
    out.append("use super::{OptionKind, OptionSpec};")
    out.append("")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static SPECS: &[OptionSpec] = &[")
    for name, flag, aliases, kind, text in specs:
        al = ", ".join(f'"{a}"' for a in aliases)
        out.append(f'    OptionSpec {{ name: "{name}", flag: "{flag}", aliases: &[{al}], kind: OptionKind::{kind}, help: {rust_str(text)} }},')
    out.append("];")
    out.append("")
    out.append("/// `(option, flag)`: the `--no-X` spellings of vLLM's BooleanOptionalAction flags; the first")
    out.append("/// of an option is what it emits when set to false.")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static NEGATIONS: &[(&str, &str)] = &[")
    for name, flag in negations:
        out.append(f'    ("{name}", "{flag}"),')
    out.append("];")
    out.append("")
    out.append("/// List options of nargs '+': argparse keeps only the last occurrence, so all values follow one flag.")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static REPEAT_IN_ONE_FLAG: &[&str] = &[")
    for name in repeat_in_one:
        out.append(f'    "{name}",')
    out.append("];")
    out.append("")
    out.append("/// List options vLLM reads as one JSON array (`--allowed-origins '[\"a\", \"b\"]'`).")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static JSON_LISTS: &[&str] = &[" + ", ".join(f'"{n}"' for n in json_lists) + "];")
    out.append("")
    out.append("/// Int options vLLM also takes with a size suffix (`32k` = 32000, `1K` = 1024).")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static HUMAN_INTS: &[&str] = &[" + ", ".join(f'"{n}"' for n in human_ints) + "];")
    print("\n".join(out))
    print(f"vLLM {version}: {len(specs)} specs, {len(negations)} negations, {len(repeat_in_one)} in one flag, {len(json_lists)} JSON lists, {len(human_ints)} human ints", file=sys.stderr)


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    main()
