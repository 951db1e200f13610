// ds4-bench: the project's own benchmarks of whole-engine throughput.
//
//   ds4-bench cpu [--synthetic flash-mini | -m MODEL] [--recipe q2] [--prompt 512] [--gen 32]
//       prefill and decode tokens/s of the CPU backend (medians over --reps runs)
//   ds4-bench sweep [--synthetic flash-mini | -m MODEL] [--frontiers 2K,8K,32K,64K,128K]
//       [--decode 16] [--backend cpu|cuda] [--csv FILE] [--svg FILE]
//       frontier sweep (src/bench/frontier.h): prefill speed, decode speed and session bytes
//       at growing context lengths, CSV and an SVG plot
//   ds4-bench cuda [--synthetic flash-mini | -m MODEL] [--recipe q2] [--prompt 512] [--gen 64]
//       [--sweep 2K,8K,32K,64K,128K [--decode 16] [--csv FILE] [--svg FILE]]
//       CUDA backend: prefill and decode tokens/s and a per-phase breakdown of one decode step;
//       a synthetic preset is built directly in GPU memory (no file; full Flash q2 needs 81 GiB)
//   ds4-bench tokenizer --vocab FILE --text FILE [--reps 5]
//       single-threaded encode speed in MB/s
//
// A synthetic model (src/synth) has the real layer dimensions with random weights: speed does
// not depend on the weight values, so it measures the engine where no real weights exist.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "bench/frontier.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/bench_cuda.h"
#include "synth/presets.h"
#include "synth/synthetic_model.h"
#include "tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct CpuArgs {
  std::string model;
  std::string synthetic = "flash-mini";
  std::string recipe = "q2";
  int prompt = 512;
  int gen = 16;
  int reps = 3;
  int threads = 0;
  int batch = 512;
  std::string numerics = "official";
};

int run_cpu(const CpuArgs& a) {
  namespace fs = std::filesystem;
  std::string path = a.model;
  fs::path tmp;
  if (path.empty()) {
    tmp = fs::temp_directory_path() / fmt::format("ds4-bench-{}-{}.gguf", a.synthetic, a.recipe);
    if (!fs::exists(tmp)) {
      fmt::print(stderr, "writing synthetic {} ({}) to {} ...\n", a.synthetic, a.recipe, tmp.string());
      ds4::synth::WriteOptions o;
      o.recipe = ds4::convert::parse_recipe(a.recipe);
      o.fill = ds4::synth::Fill::Codes;
      o.name = "DeepSeek-V4 synthetic " + a.synthetic;
      o.extra_kv.push_back({ds4::synth::kSyntheticKey, ds4::gguf::Value::string("bench " + a.synthetic)});
      ds4::synth::write_gguf(tmp.string(), ds4::synth::preset(a.synthetic), o);
    }
    path = tmp.string();
  }
  const auto t_load = Clock::now();
  auto model = ds4::model::Model::load(path, {.threads = a.threads});
  const auto& hp = model.hparams();
  fmt::print("model {}: {} layers, hidden {}, {} experts (top {}), load {:.2f} s, {} threads\n",
             hp.name, hp.n_layers, hp.n_embd, hp.n_expert, hp.n_expert_used,
             seconds_since(t_load), model.pool() ? model.pool()->size() : 1);

  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(2, static_cast<int32_t>(hp.n_vocab - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(a.prompt));
  for (auto& t : prompt) t = tok(rng);
  std::vector<float> logits(static_cast<size_t>(hp.n_vocab));

  std::vector<double> prefill, decode;
  for (int r = 0; r < a.reps; ++r) {
    ds4::model::Session s(model, {.max_ctx = a.prompt + a.gen + 1,
                                  .numerics = ds4::model::numerics_from_name(a.numerics),
                                  .max_batch = a.batch});
    auto t0 = Clock::now();
    s.eval(prompt, ds4::model::LogitsMode::Last, logits.data());
    prefill.push_back(a.prompt / seconds_since(t0));
    t0 = Clock::now();
    for (int i = 0; i < a.gen; ++i) {
      const int32_t next = static_cast<int32_t>(
          std::max_element(logits.begin(), logits.end()) - logits.begin());
      s.eval(std::span(&next, 1), ds4::model::LogitsMode::Last, logits.data());
    }
    decode.push_back(a.gen / seconds_since(t0));
    fmt::print("  run {}: prefill {:.1f} tok/s, decode {:.2f} tok/s\n", r + 1, prefill.back(), decode.back());
  }
  fmt::print("median: prefill {:.1f} tok/s ({} tokens, chunk {}), decode {:.2f} tok/s ({} tokens)\n",
             median(prefill), a.prompt, a.batch, median(decode), a.gen);
  return 0;
}

int run_tokenizer(const std::string& vocab, const std::string& text_path, int reps) {
  std::ifstream in(text_path, std::ios::binary);
  if (!in) ds4::fail("cannot read {}", text_path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const auto tk = ds4::tok::load_tokenizer(vocab);
  std::vector<double> mbps;
  size_t n_tokens = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    n_tokens = tk.encode(text, false).size();
    mbps.push_back(static_cast<double>(text.size()) / 1e6 / seconds_since(t0));
  }
  fmt::print("tokenizer: {} bytes -> {} tokens, median {:.1f} MB/s over {} runs (single thread)\n",
             text.size(), n_tokens, median(mbps), reps);
  return 0;
}

// ---- ds4-bench sweep (any backend through src/runtime) -------------------------------------------

struct SweepArgs {
  std::string model;
  std::string synthetic = "flash-mini";
  std::string recipe = "q2";
  std::string frontiers = "2K,8K,32K,64K,128K";
  int decode = 16;
  int threads = 0;
  int batch = 512;
  std::string numerics = "official";
  std::string backend = "cpu";
  std::string csv, svg, label;
};

CLI::App* add_sweep_command(CLI::App& app, SweepArgs& a) {
  auto* c = app.add_subcommand("sweep", "prefill/decode speed and session bytes at context frontiers");
  c->add_option("-m,--model", a.model, "GGUF model (default: a synthetic model)");
  c->add_option("--synthetic", a.synthetic, "synthetic preset: flash-mini, demo, flash, pro")
      ->capture_default_str();
  c->add_option("--recipe", a.recipe, "recipe of the synthetic model")->capture_default_str();
  c->add_option("--frontiers", a.frontiers, "increasing context lengths (K = 1024)")->capture_default_str();
  c->add_option("--decode", a.decode, "timed decode steps per frontier (median)")->capture_default_str();
  c->add_option("--threads", a.threads, "threads (0 = all cores)");
  c->add_option("--batch", a.batch, "prefill chunk size (tokens per layer pass)")->capture_default_str();
  c->add_option("--numerics", a.numerics, "exact or official")->capture_default_str();
  c->add_option("--backend", a.backend, "cpu or cuda")->capture_default_str();
  c->add_option("--csv", a.csv, "write the rows as CSV to this file");
  c->add_option("--svg", a.svg, "write the plot as SVG to this file");
  c->add_option("--label", a.label, "machine description for the plot (e.g. \"2-core VM\")");
  return c;
}

int run_sweep_command(const SweepArgs& a) {
  ds4::bench::SweepOptions o;
  o.frontiers = ds4::bench::parse_frontiers(a.frontiers);
  o.decode_tokens = a.decode;
  std::string path = a.model;
  if (path.empty()) {
    // Shared with `ds4-bench cpu`: the synthetic file is written once per preset and recipe.
    namespace fs = std::filesystem;
    const fs::path tmp = fs::temp_directory_path() / fmt::format("ds4-bench-{}-{}.gguf", a.synthetic, a.recipe);
    if (!fs::exists(tmp)) {
      fmt::print(stderr, "writing synthetic {} ({}) to {} ...\n", a.synthetic, a.recipe, tmp.string());
      ds4::synth::write_gguf(tmp.string(), ds4::synth::preset(a.synthetic),
                             ds4::synth::synthetic_options(a.synthetic, ds4::convert::parse_recipe(a.recipe)));
    }
    path = tmp.string();
  }
  const auto kind = ds4::runtime::parse_backend(a.backend);
  auto model = ds4::model::Model::load(path, {.threads = a.threads});
  const auto& hp = model.hparams();
  o.vocab = static_cast<int32_t>(hp.n_vocab);
  const int threads = model.pool() ? model.pool()->size() : 1;
  const auto engine = ds4::runtime::open_engine(model, kind);
  const auto session = engine->new_session({.max_ctx = ds4::bench::sweep_max_context(o),
                                            .numerics = ds4::model::numerics_from_name(a.numerics),
                                            .max_batch = a.batch});
  ds4::bench::EvalSweepSession s(*session);
  const std::string where = kind == ds4::runtime::BackendKind::Cpu
                                ? fmt::format("cpu, {} threads", threads)
                                : engine->describe();
  fmt::print("model {} ({} layers, {} experts), {}, numerics {}\n", hp.name, hp.n_layers,
             hp.n_expert, where, a.numerics);
  fmt::print("{}", ds4::bench::sweep_table_header());
  o.on_row = [](const ds4::bench::FrontierRow& r) {
    fmt::print("{}", ds4::bench::sweep_table_row(r));
    std::fflush(stdout);
  };
  const auto rows = ds4::bench::run_sweep(s, o);
  if (!a.csv.empty()) ds4::bench::write_text_file(a.csv, ds4::bench::sweep_csv(rows));
  if (!a.svg.empty()) {
    const std::string sub = fmt::format("{}, numerics {}, decode median of {}{}{}", where, a.numerics,
                                        a.decode, a.label.empty() ? "" : ", ", a.label);
    ds4::bench::write_text_file(a.svg, ds4::bench::sweep_svg(rows, "ds4-bench sweep: " + hp.name, sub));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds4-bench: DwarfStar throughput benchmarks"};
  app.require_subcommand(1);
  CpuArgs cpu;
  auto* c = app.add_subcommand("cpu", "prefill and decode speed of the CPU backend");
  c->add_option("-m,--model", cpu.model, "GGUF model (default: a synthetic model)");
  c->add_option("--synthetic", cpu.synthetic, "synthetic preset: flash-mini, demo, flash, pro");
  c->add_option("--recipe", cpu.recipe, "recipe of the synthetic model: q2, q4, q8, mxfp4, bf16, f32");
  c->add_option("--prompt", cpu.prompt, "prompt tokens (prefill)");
  c->add_option("--gen", cpu.gen, "decoded tokens");
  c->add_option("--reps", cpu.reps, "repetitions (the median is reported)");
  c->add_option("--threads", cpu.threads, "threads (0 = all cores)");
  c->add_option("--batch", cpu.batch, "prefill chunk size");
  c->add_option("--numerics", cpu.numerics, "exact or official");
  ds4::runtime::CudaBenchArgs cu;
  auto* g = app.add_subcommand("cuda", "prefill/decode speed of the CUDA backend, decode step by phase");
  g->add_option("-m,--model", cu.model, "GGUF model (default: a synthetic model built on the GPU)");
  g->add_option("--synthetic", cu.synthetic, "synthetic preset: flash-mini, demo, flash, pro");
  g->add_option("--recipe", cu.recipe, "recipe of the synthetic model: q2, q4, q8, mxfp4, bf16, f32");
  g->add_option("--prompt", cu.prompt, "prompt tokens (prefill)");
  g->add_option("--gen", cu.gen, "decoded tokens");
  g->add_option("--reps", cu.reps, "repetitions (the median is reported)");
  g->add_option("--batch", cu.batch, "prefill chunk size (tokens per batched layer pass; 0 = the CUDA engine's choice by free GPU memory, 2048-8192)")->capture_default_str();
  g->add_option("--numerics", cu.numerics, "exact or official");
  g->add_flag("!--no-graph", cu.graph, "plain launches instead of a CUDA graph per step");
  g->add_option("--sweep", cu.sweep, "frontier sweep instead (e.g. 2K,8K,32K,64K,128K; see `sweep`)");
  g->add_option("--decode", cu.sweep_decode, "timed decode steps per sweep frontier (median)");
  g->add_option("--csv", cu.csv, "sweep rows as CSV to this file");
  g->add_option("--svg", cu.svg, "sweep plot as SVG to this file");
  std::string vocab, text;
  int reps = 5;
  auto* t = app.add_subcommand("tokenizer", "tokenizer encode speed");
  t->add_option("--vocab", vocab, "GGUF or tokenizer.json")->required();
  t->add_option("--text", text, "text file to encode")->required();
  t->add_option("--reps", reps, "repetitions");
  SweepArgs sweep;
  auto* sw = add_sweep_command(app, sweep);
  CLI11_PARSE(app, argc, argv);
  try {
    if (*c) return run_cpu(cpu);
    if (*g) return ds4::runtime::run_cuda_bench(cu);
    if (*sw) return run_sweep_command(sweep);
    return run_tokenizer(vocab, text, reps);
  } catch (const std::exception& e) {
    fmt::print(stderr, "ds4-bench: {}\n", e.what());
    return 1;
  }
}
