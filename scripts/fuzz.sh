#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time on its corpus.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_EACH="${1:-30}"
JOBS="${JOBS:-$(nproc)}"
BUILD_DIR="$ROOT/build-fuzz"
# Warnings are the Release build's business; here clang must not stop on GCC-only flags
# (-Wshadow=local) or on its own extra warnings in code the fuzzers merely link.
CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDS4_FUZZ=ON -DDS4_CUDA=OFF -DDS4_TESTS=OFF -DDS4_BENCH=OFF \
  -DDS4_WERROR=OFF -DCMAKE_CXX_FLAGS=-Wno-unknown-warning-option >/dev/null
# Only the fuzz targets (and the libraries they link), not every program.
mapfile -t targets < <(cmake --build "$BUILD_DIR" --target help | grep -o '^fuzz_[A-Za-z0-9_]*' | sort -u)
[ "${#targets[@]}" -gt 0 ] || { echo "fuzz: no targets in fuzz/"; exit 0; }
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}"
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
