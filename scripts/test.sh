#!/usr/bin/env bash
# Sets up, builds and runs every test: the Release build (with the CUDA sources compiled
# when nvcc is present), the same tests under AddressSanitizer + UBSan, and bounded fuzzing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
[ -x scripts/test-npm.sh ] && bash scripts/test-npm.sh

JOBS="$(nproc)"
echo "== Release build and tests"
BUILD_DIR=build BUILD_TYPE=Release bash scripts/build.sh
ctest --test-dir build --output-on-failure -j "$JOBS" --timeout 900

echo "== AddressSanitizer + UBSan build and tests"
BUILD_DIR=build-asan BUILD_TYPE=Asan bash scripts/build.sh -DDS4_CUDA=OFF -DDS4_BENCH=OFF
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j "$JOBS" --timeout 1800 -LE slow

if [ -x scripts/test-server-js.sh ]; then
  echo "== Official client libraries against ds4-server"
  bash scripts/test-server-js.sh build
fi

echo "== Fuzzing (bounded)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
