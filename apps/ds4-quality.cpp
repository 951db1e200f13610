// ds4-quality: what a quantization costs, measured (docs/quality.md).
//   ds4-quality ppl      -m MODEL (--text FILE | --tokens @FILE) [--ctx N --stride S] [--json]
//   ds4-quality dump     -m REFERENCE (--text FILE | --tokens @FILE) -o REF.bin [--top-k K | --full]
//   ds4-quality compare  -m MODEL --ref REF.bin [--json] [--csv F] [--svg F] [--md F]
//   ds4-quality tensors  -m QUANTIZED --orig CHECKPOINT_DIR [--json] [--csv F]
//   ds4-quality official -m MODEL --vectors DIR [--json] [--tsv F]
// ppl, dump, compare and official evaluate on --backend cpu (default) or cuda.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "quality/compare.h"
#include "quality/digest.h"
#include "quality/official.h"
#include "quality/reference.h"
#include "quality/tensor_error.h"
#include "quality/token_input.h"
#include "quality/windows.h"
#include "runtime/backend.h"
#include "tokenizer/gguf_vocab.h"

namespace q = ds4::quality;

namespace {

struct Input {
  std::string text, tokens;
  void add(CLI::App* c) {
    auto* t = c->add_option("--text", text, "text file, encoded with the model's tokenizer");
    auto* k = c->add_option("--tokens", tokens, "@FILE of whitespace-separated token ids");
    t->excludes(k);
  }
  bool given() const { return !text.empty() || !tokens.empty(); }
  std::vector<int32_t> load(const ds4::gguf::File& f) const {
    if (!tokens.empty()) return q::read_token_file(tokens);
    if (!text.empty()) return q::tokenize_text_file(f, text);
    ds4::fail("give the input as --text FILE or --tokens @FILE");
  }
};

void write_file(const std::string& path, const std::string& s) {
  if (path.empty()) return;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) ds4::fail("cannot write {}", path);
  f << s;
  if (!f) ds4::fail("write to {} failed", path);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Measure the quality of a DwarfStar GGUF: perplexity, KL divergence against a "
               "reference, per-tensor quantization error, official continuations"};
  app.require_subcommand(1);
  std::string model_path;
  int threads = 0;
  bool exact = false, json = false;
  std::string backend = "cpu";
  q::WindowOptions win;
  Input in;

  auto common = [&](CLI::App* c) {
    c->add_option("-m,--model", model_path, "GGUF model")->required();
    c->add_option("--threads", threads, "worker threads (0 = all cores)")->capture_default_str();
  };
  auto eval_opts = [&](CLI::App* c) {
    c->add_flag("--exact", exact, "exact numerics (default: the official FP8 KV / activation simulation)");
    c->add_option("--backend", backend, "cpu or cuda")->capture_default_str();
  };

  auto* ppl = app.add_subcommand("ppl", "perplexity of a text in sliding windows");
  common(ppl);
  eval_opts(ppl);
  in.add(ppl);
  ppl->add_option("--ctx", win.ctx, "window length in tokens")->capture_default_str();
  ppl->add_option("--stride", win.stride, "window step (0 = ctx/2)")->capture_default_str();
  ppl->add_flag("--json", json, "one JSON object on stdout");

  std::string out_path;
  uint32_t top_k = 64;
  bool full = false;
  auto* dump = app.add_subcommand("dump", "store a reference model's log-probabilities");
  common(dump);
  eval_opts(dump);
  in.add(dump);
  dump->add_option("--ctx", win.ctx, "window length in tokens")->capture_default_str();
  dump->add_option("--stride", win.stride, "window step (0 = ctx/2)")->capture_default_str();
  dump->add_option("-o,--output", out_path, "reference file to write")->required();
  auto* ko = dump->add_option("--top-k", top_k, "store the top K ids + the rest mass")->capture_default_str();
  dump->add_flag("--full", full, "store the full distribution (n_vocab floats per position)")->excludes(ko);

  std::string ref_path, csv_path, svg_path, md_path;
  auto* cmp = app.add_subcommand("compare", "a model against a reference dump");
  common(cmp);
  eval_opts(cmp);
  in.add(cmp);
  cmp->add_option("--ref", ref_path, "reference file from ds4-quality dump")->required();
  cmp->add_flag("--json", json, "one JSON object on stdout");
  cmp->add_option("--csv", csv_path, "per-position CSV");
  cmp->add_option("--svg", svg_path, "KL-by-position plot");
  cmp->add_option("--md", md_path, "Markdown table row");

  std::string orig;
  auto* ten = app.add_subcommand("tensors", "per-tensor error against the original checkpoint");
  common(ten);
  ten->add_option("--orig", orig, "official checkpoint directory")->required();
  ten->add_flag("--json", json, "JSON on stdout");
  ten->add_option("--csv", csv_path, "per-tensor CSV");

  std::string vectors, tsv_path;
  auto* off = app.add_subcommand("official", "teacher-forced NLL of the official continuations");
  common(off);
  eval_opts(off);
  off->add_option("--vectors", vectors, "test-vector directory (*.official.json)")->required();
  off->add_flag("--json", json, "JSON on stdout");
  off->add_option("--tsv", tsv_path, "score_official-style TSV");

  CLI11_PARSE(app, argc, argv);

  try {
    if (ten->parsed()) {
      const auto f = ds4::gguf::File::open(model_path);
      const auto rep = q::tensor_errors(f, orig, threads);
      fmt::print("{}\n", json ? q::to_json(rep) : q::to_text(rep));
      write_file(csv_path, q::to_csv(rep));
      return 0;
    }
    const auto backend_kind = ds4::runtime::parse_backend(backend);
    const auto model = ds4::model::Model::load(model_path, {.threads = threads});
    const auto& file = model.file();
    // The evaluating session of ppl / dump / compare / official: a CPU Session, or a session of
    // the GPU engine (opened once: its weights are uploaded once and outlive every source).
    std::unique_ptr<ds4::runtime::Engine> engine;
    auto logits_source = [&](int64_t max_ctx) {
      if (backend_kind == ds4::runtime::BackendKind::Cpu) return q::model_logits(model, max_ctx, exact);
      if (!engine) {
        engine = ds4::runtime::open_engine(model, backend_kind);
        fmt::print(stderr, "ds4-quality: {} backend: {}\n", backend, engine->describe());
      }
      ds4::model::SessionOptions so;
      so.max_ctx = max_ctx;
      so.numerics = exact ? ds4::model::Numerics::Exact : ds4::model::Numerics::Official;
      so.max_batch = engine->prefill_chunk();
      return q::session_logits(engine->new_session(so));
    };
    if (ppl->parsed()) {
      const auto tokens = in.load(file);
      auto src = logits_source(win.ctx);
      const q::Perplexity p = q::perplexity(*src, tokens, win);
      if (json) {
        const nlohmann::json j = {{"ppl", p.ppl()},           {"mean_nll", p.mean_nll()},
                                  {"n_scored", p.n_scored},   {"n_tokens", tokens.size()},
                                  {"n_windows", p.n_windows}, {"ctx", win.ctx},
                                  {"stride", win.stride == 0 ? win.ctx / 2 : win.stride}};
        fmt::print("{}\n", j.dump(2));
      } else {
        fmt::print("perplexity {:.6f}  (mean NLL {:.6f} over {} scored tokens of {}, {} windows)\n",
                   p.ppl(), p.mean_nll(), p.n_scored, tokens.size(), p.n_windows);
      }
      return 0;
    }
    if (dump->parsed()) {
      const auto tokens = in.load(file);
      auto src = logits_source(win.ctx);
      const auto ref = q::make_reference(*src, tokens, win, full ? 0 : top_k, q::model_digest(file),
                                         q::tokenizer_digest(file));
      q::save_reference(ref, out_path);
      fmt::print(stderr, "wrote {}: {} positions of {} tokens, {}\n", out_path, ref.positions.size(),
                 tokens.size(), full ? std::string("full distributions") : fmt::format("top-{}", top_k));
      return 0;
    }
    if (cmp->parsed()) {
      const auto ref = q::load_reference(ref_path);
      std::vector<int32_t> tokens;
      q::CompareTarget t{q::model_digest(file), q::tokenizer_digest(file), nullptr};
      if (in.given()) {
        tokens = in.load(file);
        t.tokens = &tokens;
      }
      q::check_compatible(ref, t, model.hparams().n_vocab);
      auto src = logits_source(ref.windows.ctx);
      const auto r = q::compare(*src, ref);
      const std::string name = std::filesystem::path(model_path).filename().string();
      fmt::print("{}\n", json ? q::to_json(r, ref, t) : q::to_text(r));
      write_file(csv_path, q::to_csv(r));
      write_file(svg_path, q::to_svg(r, fmt::format("KL(ref || {}) by position", name)));
      write_file(md_path, q::to_markdown(r, name));
      return 0;
    }
    if (off->parsed()) {
      if (!file.has("tokenizer.ggml.tokens"))
        ds4::fail("{} has no tokenizer; the official vectors need the real one", model_path);
      const auto tok = ds4::tok::tokenizer_from_gguf(file);
      const auto cases = q::load_official_dir(vectors);
      int64_t max_ctx = 0;
      for (const auto& c : cases)
        max_ctx = std::max<int64_t>(max_ctx, static_cast<int64_t>(c.prompt.size() + c.steps.size()) + 64);
      auto src = logits_source(max_ctx);
      std::vector<q::CaseScore> scores;
      for (const auto& c : cases) scores.push_back(q::score_case(*src, tok, c));
      if (json) {
        fmt::print("{}\n", q::to_json(scores));
      } else {
        fmt::print("{}", q::to_tsv(scores));
        const auto s = q::summarize(scores);
        fmt::print("avg_nll {:.6f} over {} tokens, first-token matches {}/{}, mean greedy LCP {:.3f}\n",
                   s.avg_nll(), s.tokens, s.first_matches, s.cases, s.mean_lcp);
      }
      write_file(tsv_path, q::to_tsv(scores));
      return 0;
    }
  } catch (const ds4::Error& e) {
    fmt::print(stderr, "ds4-quality: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ds4-quality: unexpected error: {}\n", e.what());
    return 1;
  }
  return 0;
}
