#!/usr/bin/env python3
"""Generates src-tauri/src/backends/llama_table.rs from llama.cpp's common/arg.cpp.

Usage: scripts/gen_llama_options.py <llama.cpp source dir> > src-tauri/src/backends/llama_table.rs

Reads every `add_opt(common_arg(...))` in `common_params_parser_init`, keeps the ones llama-server
accepts (examples include SERVER or COMMON, not excluded for SERVER), and writes one OptionSpec per
flag group. A bool group with `--no-X` spellings yields two specs (`X` and `no_X`) and an entry in
NEGATIONS. Help text comes from tools/server/README.md (rendered defaults) when the flags match,
else from arg.cpp with format placeholders blanked.
"""
import re
import sys
from pathlib import Path

# Actions that print and exit or only make sense interactively: a supervised server never wants them.
SKIP = {"--help", "--version", "--cache-list", "--completion-bash", "--list-devices"}

# Repeatable flags (each occurrence adds to a list in llama.cpp): llamactl's multi-valued list plus
# the two llama.cpp added since. Other list-like flags take one comma-separated string.
REPEATABLE_NAMES = {
    "override_tensor", "override_kv", "lora", "lora_scaled", "control_vector",
    "control_vector_scaled", "dry_sequence_breaker", "logit_bias", "reverse_prompt",
    "spec_draft_override_tensor",
}


# llamactl's types where llama.cpp takes a string: `-ngl` also takes `auto` (-1) and `all` (-2),
# which parse-command maps; `--defrag-thold` is deprecated but llamactl stored it as a float.
KIND_OVERRIDES = {"gpu_layers": "Int", "spec_draft_ngl": "Int", "defrag_thold": "Float"}



# Flags llamactl modelled that this llama.cpp replaced (by --load-mode) but the llama-server builds
# people still run accept; kept so llamactl definitions and commands keep working.
LEGACY = [
    ("mlock", "--mlock", [], "Bool",
     "force system to keep model in RAM rather than swapping or compressing (older llama-server; newer: --load-mode mlock)"),
    ("no_mmap", "--no-mmap", [], "Bool",
     "do not memory-map model (older llama-server; newer: --load-mode none)"),
]


def balanced(src, i, open_ch="(", close_ch=")"):
    """Index just past the bracket that closes the one at src[i]; skips strings and chars."""
    depth = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c == '"' or c == "'":
            q = c
            i += 1
            while src[i] != q:
                i += 2 if src[i] == "\\" else 1
        elif src.startswith("R\"(", i):
            end = src.index(")\"", i + 3)
            i = end + 1
        elif src.startswith("//", i):
            i = src.index("\n", i)
            continue
        elif c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced")


def split_top(src):
    """Splits on commas at bracket depth 0."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(src):
        c = src[i]
        if c in "\"'":
            q = c
            i += 1
            while src[i] != q:
                i += 2 if src[i] == "\\" else 1
        elif src.startswith("R\"(", i):
            i = src.index(")\"", i + 3) + 1
        elif src.startswith("//", i):
            i = src.index("\n", i)
            continue
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(src[start:i].strip())
            start = i + 1
        i += 1
    parts.append(src[start:].strip())
    return parts


STR_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')


def c_string(expr):
    """Concatenated C string literals of expr, escapes decoded; None if expr has none."""
    lits = STR_RE.findall(expr)
    if not lits:
        return None
    out = "".join(lits)
    return bytes(out, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")


def help_text(expr):
    expr = expr.strip()
    if expr.startswith("string_format("):
        inner = split_top(expr[len("string_format("):-1])
        fmt = c_string(inner[0]) or ""
        fmt = re.sub(r"%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L)?[diouxXeEfgGcsp]|%$", "…", fmt)
        return fmt.replace("%%", "%")
    if expr.startswith("std::string(") or "+" in expr:
        return c_string(expr) or ""
    return c_string(expr) or ""


def readme_help(readme):
    table = {}
    for line in readme.splitlines():
        m = re.match(r"^\| `([^`]*)` \| (.*) \|$", line)
        if not m:
            continue
        flags = [t.strip() for t in m.group(1).split(",")]
        first = flags[0].split(" ")[0]
        text = m.group(2).replace("<br/>", "\n").replace("\\|", "|")
        text = re.sub(r"\n?\(env: [A-Z0-9_]+\)", "", text).strip()
        table.setdefault(first, text)
    return table


def strip_comments(src):
    """src without // and /* */ comments; string literals untouched."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c in "\"'":
            j = i + 1
            while src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        elif src.startswith("R\"(", i):
            j = src.index(")\"", i + 3) + 2
            out.append(src[i:j])
            i = j
        elif src.startswith("//", i):
            i = src.index("\n", i)
        elif src.startswith("/*", i):
            i = src.index("*/", i) + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def snake(flag):
    return flag.lstrip("-").replace("-", "_").replace(".", "_")


def main():
    root = Path(sys.argv[1])
    src = (root / "common/arg.cpp").read_text()
    readme = readme_help((root / "tools/server/README.md").read_text())
    named_lists = {
        m.group(1): re.findall(r"LLAMA_EXAMPLE_\w+", m.group(2))
        for m in re.finditer(r"static std::initializer_list<enum llama_example> (\w+) = \{(.*?)\};", src, re.S)
    }
    start = src.index("common_params_context common_params_parser_init(")
    end = src.index("\nvoid common_params_add_preset_options", start)
    body = strip_comments(src[start:end])

    specs, negations, seen, two_values = [], [], set(), []
    pos = 0
    while True:
        i = body.find("add_opt(common_arg(", pos)
        if i < 0:
            break
        ca = i + len("add_opt(")
        ca_open = ca + len("common_arg")
        ca_end = balanced(body, ca_open)
        call_end = balanced(body, i + len("add_opt"))
        chain = body[ca_end:call_end - 1]
        pos = call_end
        args = split_top(body[ca_open + 1:ca_end - 1])

        examples = ["LLAMA_EXAMPLE_COMMON"]
        m = re.search(r"\.set_examples\((\{.*?\}|\w+)\)", chain, re.S)
        if m:
            v = m.group(1)
            examples = named_lists[v] if not v.startswith("{") else re.findall(r"LLAMA_EXAMPLE_\w+", v)
        m = re.search(r"\.set_excludes\((\{.*?\})\)", chain, re.S)
        excludes = re.findall(r"LLAMA_EXAMPLE_\w+", m.group(1)) if m else []
        if not ({"LLAMA_EXAMPLE_SERVER", "LLAMA_EXAMPLE_COMMON"} & set(examples)):
            continue
        if "LLAMA_EXAMPLE_SERVER" in excludes or ".set_preset_only()" in chain:
            continue

        flags = STR_RE.findall(args[0])
        handler = args[-1]
        if "arg_removed(" in handler:
            # still listed by --help, but llama-server refuses it
            continue
        sig = re.sub(r"/\*.*?\*/", "", handler[: handler.index(")") + 1])
        neg = []
        hint = None
        if len(args) == 4 and args[1].startswith("{"):
            neg = STR_RE.findall(args[1])
            help_expr = args[2]
        elif len(args) == 4:
            hint = c_string(args[1])
            help_expr = args[2]
        elif len(args) == 3:
            help_expr = args[1]
        elif len(args) == 5:
            # two values (`START END`): one JSON string, two argv words
            help_expr = args[3]
            two_values.append(snake([f for f in flags if f.startswith("--")][0]))
        else:
            raise SystemExit(f"unexpected arity {len(args)} for {flags}")
        longs = [f for f in flags if f.startswith("--")]
        main_flag = longs[0] if longs else flags[-1]
        if main_flag in SKIP or snake(main_flag) in seen:
            # seen: `if (ex == LLAMA_EXAMPLE_SERVER) { A } else { B }` defines a flag twice; the
            # server branch comes first.
            continue

        if len(args) == 5:
            kind = "String"
        elif re.search(r",\s*int\s+\w*\)", sig):
            kind = "Int"
        elif re.search(r",\s*bool\s+\w*\)", sig):
            kind = "Bool"
        elif "std::string" in sig:
            kind = "String"
            hbody = handler
            plain = "==" not in hbody and "split" not in hbody and "csv" not in hbody
            if plain and re.search(r"std::sto[fd]\(value\)", hbody):
                kind = "Float"
            elif plain and re.search(r"std::sto(i|l|ul|ll|ull)\(value\)", hbody):
                kind = "Int"
        else:
            kind = "Bool"
        name = snake(main_flag)
        kind = KIND_OVERRIDES.get(name, kind)
        if name in REPEATABLE_NAMES:
            kind = "StringList"

        text = readme.get(flags[0])
        if text is None:
            text = help_text(help_expr)
        text = " ".join(text.split())

        def emit(flag_list, name, kind):
            lf = [f for f in flag_list if f.startswith("--")]
            mf = lf[0] if lf else flag_list[-1]
            aliases = [f for f in flag_list if f != mf]
            for key in [name] + [snake(a) for a in aliases]:
                if key in seen:
                    raise SystemExit(f"duplicate key {key}")
            seen.add(name)
            for a in aliases:
                seen.add(snake(a))
            specs.append((name, mf, aliases, kind, text))

        emit(flags, name, kind)
        if neg:
            neg_long = [f for f in neg if f.startswith("--")]
            nmain = neg_long[0] if neg_long else neg[-1]
            emit(neg, snake(nmain), "Bool")
            negations.append((name, nmain))

    for name, flag, aliases, kind, text in LEGACY:
        if name in seen:
            raise SystemExit(f"legacy {name} is back in arg.cpp: drop it from LEGACY")
        specs.append((name, flag, aliases, kind, text))

    out = []
    out.append("//! GENERATED by scripts/gen_llama_options.py from llama.cpp's common/arg.cpp: every flag")
    out.append("//! llama-server accepts, in llama.cpp's order. Regenerate instead of editing by hand.")
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
    out.append("/// `(option, flag)`: the `--no-X` spelling a bool option emits when set to false.")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static NEGATIONS: &[(&str, &str)] = &[")
    for name, flag in negations:
        out.append(f'    ("{name}", "{flag}"),')
    out.append("];")
    out.append("")
    out.append("/// Options whose value is two argv words (`START END`), written as one space-separated string.")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static TWO_VALUES: &[&str] = &[" + ", ".join(f'"{n}"' for n in two_values) + "];")
    print("\n".join(out))
    print(f"{len(specs)} specs, {len(negations)} negations", file=sys.stderr)


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    main()
