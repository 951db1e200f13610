// `ds4-bench cuda`: prefill and decode speed of the CUDA backend on a model file or on a
// synthetic preset built directly in GPU memory (random blocks, no file: the 81 GiB q2 Flash
// needs no disk), plus a per-phase breakdown of one decode step timed with CUDA events.
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
};

// Prints the results on stdout; throws ds4::Error when CUDA is unavailable.
int run_cuda_bench(const CudaBenchArgs& a);

}  // namespace ds4::runtime
