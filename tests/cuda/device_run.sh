#!/usr/bin/env bash
# Build, test and benchmark the CUDA kernels in one call on the device machine:
#   tests/cuda/device_run.sh [build-dir]     (results also under $OUT when it is set)
# When the full link of test_cuda / ds4-bench-cuda fails because another module of the tree
# does not build at the moment, they are linked by hand against only the libraries they use.
set -u
B=${1:-/tmp/b}
OUTDIR=${OUT:-/tmp}
cmake -S . -B "$B" -G Ninja -DDS4_BENCH=OFF -DDS4_TESTS=ON >/dev/null || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader || true
LIBS="$B/src/libds4_cuda.a $B/src/libds4_model.a $B/src/libds4_gguf.a $B/src/libds4_cpu.a $B/src/libds4_quant.a $B/src/libds4_core.a"
SYS="-L/usr/local/cuda/lib64 -lcudart -lfmt -lcrypto -lpthread"
if ! cmake --build "$B" --target test_cuda ds4-bench-cuda -j16 >"$OUTDIR/build.log" 2>&1; then
  echo "full link failed (see build.log tail); linking by hand"
  tail -5 "$OUTDIR/build.log"
  cmake --build "$B" --target ds4_cuda tests/CMakeFiles/test_cuda.dir/cuda/test_matvec.cpp.o \
    apps/CMakeFiles/ds4-bench-cuda.dir/ds4-bench-cuda.cpp.o -j16 >>"$OUTDIR/build.log" 2>&1 || { tail -30 "$OUTDIR/build.log"; exit 1; }
  mkdir -p "$B/tests" "$B/apps"
  g++ -o "$B/tests/test_cuda" "$B/tests/CMakeFiles/test_cuda.dir/cuda/test_matvec.cpp.o" $LIBS \
    /usr/lib/x86_64-linux-gnu/libgtest_main.a /usr/lib/x86_64-linux-gnu/libgtest.a $SYS || exit 1
  g++ -o "$B/apps/ds4-bench-cuda" "$B/apps/CMakeFiles/ds4-bench-cuda.dir/ds4-bench-cuda.cpp.o" $LIBS $SYS || exit 1
fi
/usr/local/cuda/bin/cuobjdump --dump-resource-usage "$B/src/libds4_cuda.a" 2>/dev/null | grep -E "Function|REG" | paste - - \
  | sed -E 's/.*Function ([^ ]+).*REG:([0-9]+).*SHARED:([0-9]+).*LOCAL:([0-9]+).*/\1 REG=\2 SHARED=\3 LOCAL=\4/' \
  | c++filt > "$OUTDIR/resources.txt" 2>&1 || true
"$B/tests/test_cuda" 2>&1 | tee "$OUTDIR/test.log" | grep -E "^\[  |FAILED|Failure|error|Expected|Which|max_abs|rel_l2|first differing" | head -80
"$B/apps/ds4-bench-cuda" "$@" 2>&1 | tee "$OUTDIR/bench.log"
