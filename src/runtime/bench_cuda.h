// `ds4-bench cuda`: prefill and decode speed of the CUDA backend on a model file or on a
// synthetic preset built directly in GPU memory (random blocks, no file: the 81 GiB q2 Flash
// needs no disk), plus a per-phase breakdown of one decode step timed with CUDA events, decode
// with sampling on the host vs on the GPU, or (--sweep) the frontier sweep of bench/frontier.h.
#pragma once

#include <string>

namespace ds4::runtime {

struct CudaBenchArgs {
  std::string model;                    // GGUF; empty: the synthetic preset
  std::string synthetic = "flash-mini"; // synth::preset name
  std::string recipe = "q2";
  int prompt = 512;
  int gen = 64;
  int reps = 3;
  std::string numerics = "official";
  bool graph = true;
  // Tokens per batched prefill chunk (the session's max_batch) of the prefill/decode runs;
  // 0 = the CUDA engine's choice for the memory left after the weights (cuda_prefill_chunk).
  // The sweep keeps 512-token chunks.
  int batch = 0;
  // Frontier sweep (bench/frontier.h) on this model instead of the prefill/decode runs:
  // frontiers ("2K,8K,32K"), timed decode steps per frontier, optional CSV and SVG files.
  std::string sweep;
  int sweep_decode = 16;
  std::string csv, svg;
};

// Prints the results on stdout; throws ds4::Error when CUDA is unavailable.
int run_cuda_bench(const CudaBenchArgs& a);

}  // namespace ds4::runtime
