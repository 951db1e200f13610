#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time on its corpus.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_EACH="${1:-30}"
BUILD_DIR="$ROOT/build-fuzz"
CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDS4_FUZZ=ON -DDS4_CUDA=OFF -DDS4_TESTS=OFF -DDS4_BENCH=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
shopt -s nullglob
for bin in "$BUILD_DIR"/fuzz/fuzz_*; do
  name="$(basename "$bin")"; name="${name#fuzz_}"
  corpus="$ROOT/fuzz/corpus/$name"
  work="$BUILD_DIR/corpus-$name"
  mkdir -p "$work"
  echo "fuzz: $name for ${SECONDS_EACH}s"
  dirs=("$work"); [ -d "$corpus" ] && dirs+=("$corpus")
  "$bin" -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=2048 "${dirs[@]}" \
    > "$BUILD_DIR/fuzz-$name.log" 2>&1 || { tail -50 "$BUILD_DIR/fuzz-$name.log"; echo "fuzz: $name FAILED"; exit 1; }
  tail -1 "$BUILD_DIR/fuzz-$name.log"
done
