"""Schemathesis hooks for scripts/test-schema.sh.

`command_override` must name an executable file that exists on this machine, which no schema can
say: a generated path is refused with 400 (tests/api/instances.rs checks those refusals), and
schemathesis would take every such refusal for a valid request rejected. A generated value is
replaced with the python3 that runs the fake backend, so the rest of the body is still fuzzed and
the override is still exercised.
"""
import shutil

import schemathesis

PYTHON = shutil.which("python3")


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict) and body.get("command_override") not in (None, ""):
        body["command_override"] = PYTHON
    return body
