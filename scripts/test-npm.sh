#!/usr/bin/env bash
# Installs the pinned Node packages of tests/js (npm ci, from package-lock.json) and generates
# the JavaScript reference data the C++ tests compare against (tests/js/out/). Idempotent:
# the install is skipped while node_modules matches the lock file. Without node/npm it only
# warns; the tests that need the data then skip with a message saying so.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
JS="$ROOT/tests/js"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "test-npm: node/npm not found; JavaScript reference tests will be skipped" >&2
  exit 0
fi
cd "$JS"
STAMP="node_modules/.ds4-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "test-npm: npm ci in tests/js"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$STAMP"
fi
node gen_tokenizer_corpus.js out/tokenizer_expected.jsonl
