#include "runtime/bench_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <vector>

#include "core/error.h"
#include "model/model.h"

#ifdef DS4_HAVE_CUDA
#include "backend/cuda/device.h"
#include "runtime/backend.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/gpu_session.h"
#include "bench/frontier.h"
#include "convert/model_config.h"
#include "convert/recipe.h"
#include "generate/generator.h"
#include "gguf/gguf.h"
#include "synth/presets.h"
#include "synth/synthetic_model.h"
#endif

namespace ds4::runtime {

#ifndef DS4_HAVE_CUDA
int run_cuda_bench(const CudaBenchArgs&) {
  fail("ds4-bench cuda: this build has no CUDA backend (configured without nvcc or with -DDS4_CUDA=OFF)");
}
#else
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// HParams of a preset: its metadata written to a tensor-less GGUF and read back through the
// same parser as real files.
model::HParams preset_hparams(const convert::ModelConfig& cfg, const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path tmp = fs::temp_directory_path() / fmt::format("ds4-bench-meta-{}-{}.gguf", name, ::getpid());
  {
    gguf::Writer w(tmp.string());
    for (auto& kv : convert::model_metadata(cfg, "DeepSeek-V4 synthetic " + name)) w.add_kv(kv.key, kv.value);
    w.finish();
  }
  const gguf::File f = gguf::File::open(tmp.string());
  model::HParams hp = model::HParams::from_gguf(f);
  fs::remove(tmp);
  return hp;
}

// Bytes of weights one decode step reads: everything but the embedding table (one row) and
// the experts not selected (n_used of n_expert).
double decode_bytes(const cuda::GpuModel& g) {
  const auto& hp = g.hparams();
  double b = static_cast<double>(g.output().bytes() + g.hc_head().fn.bytes() + g.tok_embd().row_bytes);
  const double frac = static_cast<double>(hp.n_expert_used) / static_cast<double>(hp.n_expert);
  for (const auto& L : g.layers()) {
    for (const cuda::DTensor* t : {&L.hc_attn.fn, &L.hc_ffn.fn, &L.q_a, &L.q_b, &L.kv, &L.out_a, &L.out_b,
                                   &L.comp.kv, &L.comp.gate, &L.idx_comp.kv, &L.idx_comp.gate, &L.idx_q_b,
                                   &L.idx_proj, &L.router, &L.gate_shexp, &L.up_shexp, &L.down_shexp})
      b += static_cast<double>(t->bytes());
    for (const cuda::DTensor* t : {&L.gate_exps, &L.up_exps, &L.down_exps}) b += frac * static_cast<double>(t->bytes());
  }
  return b;
}

// The frontier sweep of bench/frontier.h on the GPU model (synthetic presets need no file).
int run_sweep(const cuda::GpuModel& g, const CudaBenchArgs& a, const std::string& name) {
  bench::SweepOptions o;
  o.frontiers = bench::parse_frontiers(a.sweep);
  o.decode_tokens = a.sweep_decode;
  o.vocab = static_cast<int32_t>(g.hparams().n_vocab);
  cuda::GpuSession s(g, {.max_ctx = bench::sweep_max_context(o), .numerics = model::numerics_from_name(a.numerics),
                         .max_batch = 512},
                     {.use_graph = a.graph});
  bench::EvalSweepSession ss(s);
  fmt::print("sweep on {}: session of {} positions ({:.2f} GiB of GPU memory), numerics {}\n{}", g.device().name,
             bench::sweep_max_context(o), static_cast<double>(s.state_bytes()) / (1 << 30), a.numerics,
             bench::sweep_table_header());
  o.on_row = [](const bench::FrontierRow& r) {
    fmt::print("{}", bench::sweep_table_row(r));
    std::fflush(stdout);
  };
  const auto rows = bench::run_sweep(ss, o);
  if (!a.csv.empty()) bench::write_text_file(a.csv, bench::sweep_csv(rows));
  if (!a.svg.empty())
    bench::write_text_file(a.svg, bench::sweep_svg(rows, "ds4-bench cuda --sweep: " + name,
                                                   fmt::format("{}, numerics {}, decode median of {}",
                                                               g.device().name, a.numerics, a.sweep_decode)));
  return 0;
}

}  // namespace

int run_cuda_bench(const CudaBenchArgs& a) {
  if (a.batch != 0 && a.batch < 2)
    throw Error(fmt::format("ds4-bench cuda: --batch must be 0 (the engine's choice) or at least 2, got {}", a.batch));
  std::unique_ptr<model::Model> host;
  std::unique_ptr<cuda::GpuModel> g;
  std::string name;
  if (!a.model.empty()) {
    host = std::make_unique<model::Model>(model::Model::load(a.model));
    g = cuda::GpuModel::upload(*host);
    name = a.model;
  } else {
    const auto cfg = synth::preset(a.synthetic);
    const auto recipe = convert::parse_recipe(a.recipe);
    std::vector<cuda::GpuModel::TensorDecl> decls;
    for (const auto& t : synth::synthetic_tensors(cfg, recipe)) decls.push_back({t.plan.name, t.type, t.plan.ne});
    g = cuda::GpuModel::synthetic(preset_hparams(cfg, a.synthetic), decls, 1);
    name = fmt::format("synthetic {} ({}), built on the GPU", a.synthetic, a.recipe);
  }
  const auto& hp = g->hparams();
  const double gib = static_cast<double>(g->weight_bytes()) / (1024.0 * 1024.0 * 1024.0);
  fmt::print("model {}: {} layers, hidden {}, {} experts (top {}), {:.2f} GiB on {} in {:.2f} s\n", name,
             hp.n_layers, hp.n_embd, hp.n_expert, hp.n_expert_used, gib, g->device().name, g->upload_seconds());

  if (!a.sweep.empty()) return run_sweep(*g, a, name);

  int64_t batch = a.batch;
  if (batch == 0) batch = cuda_prefill_chunk(*g);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(2, static_cast<int32_t>(hp.n_vocab - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(a.prompt)), gen(static_cast<size_t>(a.gen));
  for (auto& t : prompt) t = tok(rng);
  for (auto& t : gen) t = tok(rng);
  const model::SessionOptions so{.max_ctx = a.prompt + a.gen + 8, .numerics = model::numerics_from_name(a.numerics),
                                 .retain = a.gen + 8, .max_batch = batch};
  std::vector<double> prefill, decode_sync, decode_piped;
  size_t state = 0;
  for (int r = 0; r < a.reps; ++r) {
    cuda::GpuSession s(*g, so, {.use_graph = a.graph});
    auto t0 = Clock::now();
    s.eval_device(prompt);
    prefill.push_back(a.prompt / since(t0));
    state = s.state_bytes();  // after the prefill: includes its batch arrays
    // Decode as a generator drives it: one token per call, logits ready on return.
    t0 = Clock::now();
    for (int i = 0; i < a.gen; ++i) s.eval_device(std::span(gen).subspan(static_cast<size_t>(i), 1));
    decode_sync.push_back(a.gen / since(t0));
    // The same steps back to back (no host synchronization between them): GPU step time.
    // eval_device_steps, not eval_device: several tokens in one eval_device call would be
    // timed as a batched prefill chunk, not as decode steps.
    s.truncate(a.prompt);
    t0 = Clock::now();
    s.eval_device_steps(gen);
    decode_piped.push_back(a.gen / since(t0));
    fmt::print("  run {}: prefill {:.1f} tok/s, decode {:.1f} tok/s (synchronized), {:.1f} tok/s (back to back)\n",
               r + 1, prefill.back(), decode_sync.back(), decode_piped.back());
  }
  const double bytes = decode_bytes(*g);
  fmt::print("median: prefill {:.1f} tok/s ({} tokens, batched chunks of <= {}), decode {:.1f} tok/s synchronized, "
             "{:.1f} tok/s back to back = {:.3f} ms/step, {:.1f} GB/s of weights ({:.2f} GB/token); session state "
             "{:.1f} MiB; graph {}\n",
             median(prefill), a.prompt, batch, median(decode_sync), median(decode_piped), 1e3 / median(decode_piped),
             bytes * median(decode_piped) / 1e9, bytes / 1e9, static_cast<double>(state) / 1048576.0,
             a.graph ? "on" : "off");

  // Decode with sampling as gen::Generator does it (default sampling settings, seed 1): the
  // logits copied back and the CPU sampler, or the GPU reduction (sampling.h). Same seed,
  // same logits: both must pick the same tokens.
  std::vector<double> tok_s[2];
  std::vector<int32_t> picked[2];
  for (int device = 0; device < 2; ++device) {
    for (int r = 0; r < a.reps; ++r) {
      cuda::GpuSession s(*g, so, {.use_graph = a.graph});
      std::vector<float> logits(static_cast<size_t>(hp.n_vocab));
      s.eval(prompt, model::LogitsMode::Last, logits.data());
      gen::SamplingParams sp = gen::SamplingParams::defaults_for(false);
      sp.seed = 1;
      gen::Sampler sampler(sp);
      std::vector<int32_t> history(prompt), out;
      bool on_device = false;
      const auto t0 = Clock::now();
      for (int i = 0; i < a.gen; ++i) {
        const int32_t t = gen::sample_step(s, sampler, on_device, logits, history, -1, nullptr);
        history.push_back(t);
        out.push_back(t);
        on_device = device == 1 && s.eval_keeping_logits(std::span(&t, 1));
        if (!on_device) s.eval(std::span(&t, 1), model::LogitsMode::Last, logits.data());
      }
      tok_s[device].push_back(a.gen / since(t0));
      picked[device] = out;
    }
  }
  fmt::print("decode with sampling (min_p 0.05, T 1, seed 1), median of {}: {:.1f} tok/s sampling on the host "
             "(logits copied back), {:.1f} tok/s on the GPU; same tokens: {}\n",
             a.reps, median(tok_s[0]), median(tok_s[1]), picked[0] == picked[1] ? "yes" : "NO");

  // One decode step timed phase by phase (plain launches with events between phases).
  cuda::GpuSession s(*g, so, {.use_graph = false});
  s.eval_device(prompt);
  const auto phases = s.profile_step(gen[0]);
  double total = 0;
  for (const auto& p : phases) total += p.ms;
  fmt::print("decode step at context {} by phase (CUDA events, plain launches): {:.3f} ms\n", a.prompt + 1, total);
  for (const auto& p : phases)
    fmt::print("  {:<22} {:8.3f} ms {:5.1f}% {:8.1f} GB/s\n", p.name, p.ms, 100.0 * p.ms / total,
               p.bytes > 0 ? p.bytes / 1e6 / p.ms : 0.0);

  // One batched prefill chunk timed phase by phase (the first min(prompt, batch)
  // prompt tokens into a fresh session).
  if (a.prompt > 1) {
    cuda::GpuSession ps(*g, so, {.use_graph = false});
    const auto chunk = std::span(prompt).first(static_cast<size_t>(std::min<int64_t>(a.prompt, batch)));
    ps.eval_device(chunk.first(2));  // allocates the batch arrays outside the timing
    ps.truncate(0);
    const auto pphases = ps.profile_prefill(chunk);
    double ptotal = 0;
    for (const auto& p : pphases) ptotal += p.ms;
    fmt::print("batched prefill chunk of {} tokens by phase (CUDA events): {:.3f} ms ({:.1f} tok/s)\n", chunk.size(),
               ptotal, static_cast<double>(chunk.size()) / ptotal * 1e3);
    for (const auto& p : pphases)
      fmt::print("  {:<22} {:8.3f} ms {:5.1f}%\n", p.name, p.ms, 100.0 * p.ms / ptotal);
  }

  // GPU memory at long contexts: a session is allocated in full at construction (rings,
  // compressed rows for max_ctx, scratch), so its allocation and the device's used memory
  // right after it are the memory that context needs.
  for (const int64_t ctx : {int64_t{32768}, int64_t{262144}}) {
    try {
      cuda::GpuSession big(*g, {.max_ctx = ctx, .numerics = so.numerics, .retain = 0, .max_batch = 512},
                           {.use_graph = a.graph});
      const auto dev = cuda::list_devices();
      const double used = dev.empty() ? 0.0 : static_cast<double>(dev[0].total_bytes - dev[0].free_bytes);
      fmt::print("GPU memory at context {}: session {:.2f} GiB; device used {:.2f} GiB of {:.2f} GiB (weights {:.2f} "
                 "GiB + this session + the first session + CUDA context)\n",
                 ctx, static_cast<double>(big.state_bytes()) / (1 << 30), used / (1 << 30),
                 dev.empty() ? 0.0 : static_cast<double>(dev[0].total_bytes) / (1 << 30), gib);
    } catch (const Error& e) {
      fmt::print("GPU memory at context {}: no session ({})\n", ctx, e.what());
    }
  }
  return 0;
}
#endif

}  // namespace ds4::runtime
