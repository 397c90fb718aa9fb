#!/usr/bin/env bash
# Refreshes the web UI's copy of the engine's OpenAPI document (ui/src/lib/api/openapi.json) and
# the TypeScript types generated from it (ui/src/lib/api/schema.d.ts, by openapi-typescript). Run
# it after changing a type or a route of the API, then commit both files: CI fails while either is
# stale (the cargo test named below, and `npm run check` in ui/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The engine's own test writes the copy when CORRAL_UPDATE_OPENAPI is set (no server is started).
CORRAL_UPDATE_OPENAPI=1 cargo test -p corral --no-default-features --lib -- --exact \
    api::openapi::tests::the_ui_copy_of_the_document_is_the_document_the_engine_serves
cd ui
npm run --silent gen:types
echo "refreshed ui/src/lib/api/openapi.json and ui/src/lib/api/schema.d.ts"
