// CPU matvec throughput per weight type at DeepSeek V4 Flash shapes, in weight bytes per
// second (plus an L2-resident "hot" variant for the compute ceiling and a 32-token matmul),
// next to STREAM-like copy and read benchmarks that measure the memory bandwidth
// the kernels are judged against (docs/perf.md). Each benchmark cycles through enough
// copies of its matrix (>= 512 MiB) that every iteration reads from DRAM, not the LLC, as
// the MoE experts do during decoding.
//
//   bench_matvec --benchmark_filter='Q8_0|Copy' --benchmark_min_time=0.5s
//   bench_matvec --isa=avx512 ...   (force a lower kernel tier: scalar, avx2, avx512)
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "core/fp16.h"
#include "core/ggml_type.h"
#include "core/thread_pool.h"
#include "quant/blocks.h"

namespace {

using ds4::GgmlType;

constexpr size_t kWorkingSet = size_t(512) << 20;

ds4::ThreadPool* pool_for(int threads) {
  static std::unique_ptr<ds4::ThreadPool> pools[3];
  if (threads <= 1) return nullptr;
  if (!pools[threads]) pools[threads] = std::make_unique<ds4::ThreadPool>(threads);
  return pools[threads].get();
}

uint64_t next_random(uint64_t& s) {  // xorshift64: fast fill, content does not matter
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

// Random weights with sane scales (no inf/NaN/denormal floats, which would distort FMA
// timing); the values themselves do not affect the kernels' speed.
void fill_weights(GgmlType t, uint8_t* p, size_t bytes) {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    const uint64_t v = next_random(s);
    std::memcpy(p + i, &v, 8);
  }
  const auto& tr = ds4::type_traits(t);
  const uint16_t scale = ds4::f32_to_fp16(0.01f);
  for (size_t b = 0; b < bytes / static_cast<size_t>(tr.block_bytes); ++b) {
    uint8_t* blk = p + b * static_cast<size_t>(tr.block_bytes);
    switch (t) {
      case GgmlType::F32: {
        const float v = static_cast<float>(blk[0]) / 256.0f - 0.5f;
        std::memcpy(blk, &v, 4);
        break;
      }
      case GgmlType::F16: {
        const uint16_t h = ds4::f32_to_fp16(static_cast<float>(blk[0]) / 256.0f - 0.5f);
        std::memcpy(blk, &h, 2);
        break;
      }
      case GgmlType::BF16: {
        const uint16_t h = ds4::f32_to_bf16(static_cast<float>(blk[0]) / 256.0f - 0.5f);
        std::memcpy(blk, &h, 2);
        break;
      }
      case GgmlType::Q8_0:
      case GgmlType::IQ2_XXS:
        std::memcpy(blk, &scale, 2);
        break;
      case GgmlType::Q4_K:
        std::memcpy(blk, &scale, 2);
        std::memcpy(blk + 2, &scale, 2);
        break;
      case GgmlType::Q2_K:
        std::memcpy(blk + 80, &scale, 2);
        std::memcpy(blk + 82, &scale, 2);
        break;
      case GgmlType::MXFP4:
        blk[0] = 120;
        break;
      default:
        break;
    }
  }
}

// Copies of one random matrix filling >= kWorkingSet bytes. Google Benchmark calls a
// benchmark function several times (iteration estimate, repetitions); the last matrix set
// is kept, so the 512 MiB are written once per benchmark, not once per call.
const std::vector<uint8_t>& matrix_copies(GgmlType t, size_t mbytes, size_t copies) {
  static std::vector<uint8_t> w;
  static GgmlType w_type = GgmlType::F32;
  static size_t w_mbytes = 0;
  if (w_type != t || w_mbytes != mbytes || w.size() != mbytes * copies) {
    w.assign(mbytes * copies, 0);
    fill_weights(t, w.data(), mbytes);
    for (size_t c = 1; c < copies; ++c) std::memcpy(w.data() + c * mbytes, w.data(), mbytes);
    w_type = t;
    w_mbytes = mbytes;
  }
  return w;
}

void BM_Matvec(benchmark::State& state, GgmlType t, int64_t nrows, int64_t ncols, int threads) {
  const size_t mbytes = ds4::row_bytes(t, ncols) * static_cast<size_t>(nrows);
  const size_t copies = std::max<size_t>(1, (kWorkingSet + mbytes - 1) / mbytes);
  const std::vector<uint8_t>& w = matrix_copies(t, mbytes, copies);
  std::vector<float> x(static_cast<size_t>(ncols)), y(static_cast<size_t>(nrows));
  for (int64_t i = 0; i < ncols; ++i) x[i] = static_cast<float>((i * 7919) % 1000) / 500.0f - 1.0f;
  ds4::ThreadPool* pool = pool_for(threads);
  size_t c = 0;
  for (auto _ : state) {
    ds4::cpu::matvec(t, w.data() + c * mbytes, nrows, ncols, x.data(), y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * mbytes));
  state.SetLabel(ds4::cpu::isa_name(ds4::cpu::active_isa()));
}

// Compute ceiling: a 64 x 4096 matrix (<= 272 KiB, L2-resident) with the activation
// quantized once (matvec_act), so only the kernel's instruction throughput is measured.
void BM_MatvecHot(benchmark::State& state, GgmlType t) {
  const int64_t nrows = 64, ncols = 4096;
  const size_t mbytes = ds4::row_bytes(t, ncols) * static_cast<size_t>(nrows);
  std::vector<uint8_t> w(mbytes);
  fill_weights(t, w.data(), mbytes);
  std::vector<float> x(static_cast<size_t>(ncols)), y(static_cast<size_t>(nrows));
  for (int64_t i = 0; i < ncols; ++i) x[i] = static_cast<float>((i * 7919) % 1000) / 500.0f - 1.0f;
  std::vector<uint8_t> act(ds4::cpu::activation_bytes(t, ncols));
  ds4::cpu::quantize_activation(t, x.data(), act.data(), ncols);
  for (auto _ : state) {
    ds4::cpu::matvec_act(t, w.data(), nrows, ncols, act.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * mbytes));
  state.SetLabel(ds4::cpu::isa_name(ds4::cpu::active_isa()));
}

// Prefill: a batch of 32 tokens against one matrix (weights read once per call).
void BM_Matmul(benchmark::State& state, GgmlType t, int64_t nrows, int64_t ncols, int threads) {
  const int64_t nb = 32;
  const size_t mbytes = ds4::row_bytes(t, ncols) * static_cast<size_t>(nrows);
  std::vector<uint8_t> w(mbytes);
  fill_weights(t, w.data(), mbytes);
  std::vector<float> X(static_cast<size_t>(nb * ncols)), Y(static_cast<size_t>(nb * nrows));
  for (size_t i = 0; i < X.size(); ++i) X[i] = static_cast<float>((i * 7919) % 1000) / 500.0f - 1.0f;
  ds4::ThreadPool* pool = pool_for(threads);
  for (auto _ : state) {
    ds4::cpu::matmul(t, w.data(), nrows, ncols, X.data(), nb, Y.data(), pool);
    benchmark::DoNotOptimize(Y.data());
  }
  // multiply-adds per second, reported as "items"; rows x tokens per second as a counter
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * nb * nrows * ncols);
  state.counters["row_tokens"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * static_cast<double>(nb * nrows), benchmark::Counter::kIsRate);
  state.SetLabel(ds4::cpu::isa_name(ds4::cpu::active_isa()));
}

// STREAM "copy": bytes counted as read + written, as STREAM does.
void BM_Copy(benchmark::State& state, int threads) {
  const size_t n = kWorkingSet / 2;
  std::vector<uint8_t> a(n, 1), b(n, 2);
  ds4::ThreadPool* pool = pool_for(threads);
  const int64_t chunk = int64_t(1) << 20;
  for (auto _ : state) {
    ds4::parallel_for(pool, static_cast<int64_t>(n) / chunk, 1, [&](int64_t c0, int64_t c1, int) {
      std::memcpy(b.data() + c0 * chunk, a.data() + c0 * chunk, static_cast<size_t>((c1 - c0) * chunk));
    });
    benchmark::DoNotOptimize(b.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * n));
}

// Read-only bandwidth (what a matvec needs): sum of 64-bit words.
void BM_Read(benchmark::State& state, int threads) {
  const size_t n = kWorkingSet / 8;
  std::vector<uint64_t> a(n, 3);
  ds4::ThreadPool* pool = pool_for(threads);
  const int64_t chunk = int64_t(1) << 17;
  uint64_t sums[2] = {0, 0};
  for (auto _ : state) {
    ds4::parallel_for(pool, static_cast<int64_t>(n) / chunk, 1, [&](int64_t c0, int64_t c1, int ti) {
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t i = static_cast<size_t>(c0 * chunk); i < static_cast<size_t>(c1 * chunk); i += 4) {
        s0 += a[i];
        s1 += a[i + 1];
        s2 += a[i + 2];
        s3 += a[i + 3];
      }
      sums[ti] += s0 + s1 + s2 + s3;
    });
    benchmark::DoNotOptimize(sums);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 8));
}

// Fixed cost of one threaded call: a parallel_for of one trivial chunk per thread (wake the
// workers, wait for the last one). Every 2-thread matvec pays it on top of its kernel; a
// Flash expert matrix is only ~2-3 MB (~250 us at 2-core DRAM speed).
void BM_PoolRoundTrip(benchmark::State& state, int threads) {
  ds4::ThreadPool* pool = pool_for(threads);
  int64_t sink[2] = {0, 0};
  for (auto _ : state) {
    ds4::parallel_for(pool, threads, 1, [&](int64_t c0, int64_t c1, int ti) { sink[ti] += c1 - c0; });
    benchmark::DoNotOptimize(sink);
  }
}

// Quantizing the activation into the weight type's partner format: done once per matvec
// call, on the calling thread, before the rows are split.
void BM_QuantizeActivation(benchmark::State& state, GgmlType t, int64_t ncols) {
  std::vector<float> x(static_cast<size_t>(ncols));
  for (int64_t i = 0; i < ncols; ++i) x[i] = static_cast<float>((i * 7919) % 1000) / 500.0f - 1.0f;
  std::vector<uint8_t> act(ds4::cpu::activation_bytes(t, ncols));
  for (auto _ : state) {
    ds4::cpu::quantize_activation(t, x.data(), act.data(), ncols);
    benchmark::DoNotOptimize(act.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * ncols);
}

struct MatShape {
  const char* what;
  int64_t nrows, ncols;
};

}  // namespace

int main(int argc, char** argv) {
  // --isa=NAME forces a lower kernel tier (to compare kernels on one machine).
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--isa=", 0) != 0) continue;
    const std::string want = a.substr(6);
    bool found = false;
    for (ds4::cpu::Isa isa : {ds4::cpu::Isa::Scalar, ds4::cpu::Isa::Avx2, ds4::cpu::Isa::Avx512,
                              ds4::cpu::Isa::Avx512Vbmi})
      if (want == ds4::cpu::isa_name(isa)) {
        ds4::cpu::set_isa(isa);
        found = true;
      }
    if (!found) {
      std::fprintf(stderr, "bench_matvec: unknown --isa=%s\n", want.c_str());
      return 1;
    }
    for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
    --argc;
    --i;
  }
  // Flash shapes (rows = outputs, cols = inputs): attention q_b 1024 -> 32768, a 4096-wide
  // projection, routed expert gate/up 4096 -> 2048 and down 2048 -> 4096.
  const MatShape qb{"q_b", 32768, 1024}, proj{"proj", 4096, 4096};
  const MatShape up{"expert_up", 2048, 4096}, down{"expert_down", 4096, 2048};
  struct Case {
    GgmlType type;
    MatShape shape;
  };
  const Case cases[] = {
      {GgmlType::Q8_0, qb},    {GgmlType::Q8_0, proj},     {GgmlType::Q8_0, down},
      {GgmlType::IQ2_XXS, up}, {GgmlType::Q2_K, down},     {GgmlType::Q4_K, up},
      {GgmlType::Q4_K, down},  {GgmlType::MXFP4, up},      {GgmlType::F16, proj},
      {GgmlType::BF16, proj},  {GgmlType::F32, proj},
  };
  for (const GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q4_K, GgmlType::IQ2_XXS,
                           GgmlType::MXFP4, GgmlType::F16, GgmlType::BF16, GgmlType::F32}) {
    const std::string name = std::string("MatvecHot/") + std::string(ds4::type_name(t)) + "/64x4096";
    benchmark::RegisterBenchmark(name.c_str(), BM_MatvecHot, t)->Unit(benchmark::kMicrosecond);
  }
  // CPU time is the benchmark thread's with 1 thread; with 2, the whole process's (both
  // threads), so that on a host shared with other work (wall time disturbed) bytes per
  // CPU-second still mean something: 2 x bytes / CPU time estimates two busy cores.
  const auto timing = [](benchmark::internal::Benchmark* b, int threads) {
    b->UseRealTime();
    if (threads > 1) b->MeasureProcessCPUTime();
    return b;
  };
  for (const GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K}) {  // BlockQ8_0Act and Q8_K
    const std::string name = std::string("QuantizeActivation/") + std::string(ds4::type_name(t)) + "/4096";
    benchmark::RegisterBenchmark(name.c_str(), BM_QuantizeActivation, t, int64_t(4096))->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("PoolRoundTrip/threads:2", BM_PoolRoundTrip, 2)->UseRealTime()->Unit(benchmark::kMicrosecond);
  for (int threads : {1, 2}) {
    for (const Case& c : cases) {
      const std::string name = std::string("Matvec/") + std::string(ds4::type_name(c.type)) + "/" +
                               c.shape.what + "_" + std::to_string(c.shape.nrows) + "x" +
                               std::to_string(c.shape.ncols) + "/threads:" + std::to_string(threads);
      timing(benchmark::RegisterBenchmark(name.c_str(), BM_Matvec, c.type, c.shape.nrows, c.shape.ncols, threads),
             threads)
          ->Unit(benchmark::kMicrosecond);
    }
    // Prefill (register-blocked tiles): the 4096 x 4096 projection and the expert shapes.
    const Case mm_cases[] = {{GgmlType::Q8_0, proj}, {GgmlType::IQ2_XXS, proj},
                             {GgmlType::IQ2_XXS, up}, {GgmlType::Q2_K, down}};
    for (const Case& c : mm_cases) {
      const std::string name = std::string("Matmul32/") + std::string(ds4::type_name(c.type)) + "/" +
                               std::to_string(c.shape.nrows) + "x" + std::to_string(c.shape.ncols) +
                               "/threads:" + std::to_string(threads);
      timing(benchmark::RegisterBenchmark(name.c_str(), BM_Matmul, c.type, c.shape.nrows, c.shape.ncols, threads),
             threads)
          ->Unit(benchmark::kMillisecond);
    }
    timing(benchmark::RegisterBenchmark(("Copy/threads:" + std::to_string(threads)).c_str(), BM_Copy, threads),
           threads)
        ->Unit(benchmark::kMillisecond);
    timing(benchmark::RegisterBenchmark(("Read/threads:" + std::to_string(threads)).c_str(), BM_Read, threads),
           threads)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::AddCustomContext("cpu_isa", ds4::cpu::isa_name(ds4::cpu::active_isa()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
