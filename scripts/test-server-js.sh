#!/usr/bin/env bash
# Runs the official OpenAI and Anthropic client libraries (tests/server-js, pinned by
# package-lock.json) against a real ds4-server on a free loopback port, then a bounded load
# test (32 concurrent streaming clients, DS4_LOAD_SECONDS, default 60 s).
#   scripts/test-server-js.sh [BUILD_DIR]     (default: build)
# Without node/npm it says so and exits 0.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-build}"
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
BIN="$BUILD/apps/ds4-server"
JS="$ROOT/tests/server-js"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "test-server-js: node/npm not found; skipping the client-library tests" >&2
  exit 0
fi
[ -x "$BIN" ] || { echo "test-server-js: $BIN not built" >&2; exit 1; }
cd "$JS"
STAMP="node_modules/.ds4-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$STAMP"
fi
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
MODEL="$WORK/demo.gguf"
"$BIN" --write-demo-model "$MODEL"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
KEY="test-key-$RANDOM$RANDOM"
"$BIN" -m "$MODEL" --port "$PORT" --ctx 4096 --api-key "$KEY" --sessions 8 --max-tokens 64 \
  --kv-disk-dir "$WORK/kv" --kv-disk-space-mb 64 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done
export DS4_SERVER_URL="http://127.0.0.1:$PORT" DS4_API_KEY="$KEY" DS4_SERVER_PID="$SERVER_PID"
node clients.test.js
DS4_LOAD_CLIENTS="${DS4_LOAD_CLIENTS:-32}" DS4_LOAD_SECONDS="${DS4_LOAD_SECONDS:-60}" node load.test.js
echo "test-server-js: all passed"
