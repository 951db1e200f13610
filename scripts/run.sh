#!/usr/bin/env bash
# Main job: set up, build, and run DwarfStar on ./ds4flash.gguf.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/build.sh
MODEL="${MODEL:-$ROOT/ds4flash.gguf}"
if [ -f "$MODEL" ]; then
  exec "$ROOT/build/apps/ds4-gguf" "$MODEL"
fi
echo "run: no model at $MODEL; see README for how to convert one"
