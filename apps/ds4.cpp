// ds4: the DwarfStar command-line front end. Modes are selected by flags; each mode is one
// function below, so new ones (chat, server-like loops) plug into main() without touching the
// others.
//
//   ds4 -m MODEL.gguf --tokens 5,17,9 --dump-logits OUT.f32 [--numerics exact|official]
//       [--batch N] [--threads N] [--backend cpu|cuda]
//     Evaluates the tokens (or --tokens @FILE: whitespace- or comma-separated ids) and writes
//     raw little-endian float32 logits [n_tokens, vocab]; row i = logits after token i.
//     --batch is the prefill chunk size; --batch 1 is pure token-by-token decode.
//
// Without --tokens/--dump-logits: the chat front end of src/cli (cli.h; ds4 --help), one-shot
// with -p, interactive otherwise.
//
// Errors end the program with a one-line message on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "core/error.h"
#include "model/model.h"
#include "runtime/backend.h"

namespace {

struct Options {
  std::string model_path;
  std::string tokens;
  std::string dump_logits;
  std::string numerics = "official";
  std::string backend = "cpu";
  int64_t batch = 0;  // 0: the backend's prefill chunk
  int threads = 0;
};

// Parses "5,17,9" or "@FILE" (ids separated by commas and/or whitespace).
std::vector<int32_t> parse_tokens(const std::string& spec) {
  std::string text = spec;
  if (!spec.empty() && spec[0] == '@') {
    std::ifstream in(spec.substr(1));
    if (!in) ds4::fail("cannot open token file {}: {}", spec.substr(1), std::strerror(errno));
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && text[j] != ',' && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    const std::string item = text.substr(i, j - i);
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (end != item.c_str() + item.size() || errno != 0 || v < 0 || v > INT32_MAX)
      ds4::fail("bad token id \"{}\" in --tokens", item);
    out.push_back(static_cast<int32_t>(v));
    i = j;
  }
  if (out.empty()) ds4::fail("--tokens holds no token ids");
  return out;
}

int run_dump_logits(const Options& o) {
  const std::vector<int32_t> tokens = parse_tokens(o.tokens);
  if (o.batch < 0) ds4::fail("--batch must not be negative, got {}", o.batch);
  const auto backend = ds4::runtime::parse_backend(o.backend);
  const auto model = ds4::model::Model::load(o.model_path, {.threads = o.threads});
  const int64_t V = model.hparams().n_vocab;
  const auto engine = ds4::runtime::open_engine(model, backend);
  const int64_t batch = o.batch > 0 ? o.batch : engine->prefill_chunk();
  const auto session_ptr = engine->new_session({.max_ctx = static_cast<int64_t>(tokens.size()),
                                                .numerics = ds4::model::numerics_from_name(o.numerics),
                                                .retain = 0,
                                                .max_batch = batch});
  ds4::model::EvalSession& session = *session_ptr;
  std::FILE* f = std::fopen(o.dump_logits.c_str(), "wb");
  if (!f) ds4::fail("cannot create {}: {}", o.dump_logits, std::strerror(errno));
  std::vector<float> logits;
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(batch)) {
    const size_t n = std::min(tokens.size() - i, static_cast<size_t>(batch));
    logits.resize(n * static_cast<size_t>(V));
    try {
      session.eval(std::span(tokens).subspan(i, n), ds4::model::LogitsMode::All, logits.data());
    } catch (...) {
      std::fclose(f);
      std::remove(o.dump_logits.c_str());
      throw;
    }
    // float32 is little-endian on every supported host (x86-64, AArch64).
    if (std::fwrite(logits.data(), sizeof(float), logits.size(), f) != logits.size()) {
      std::fclose(f);
      ds4::fail("cannot write {}: {}", o.dump_logits, std::strerror(errno));
    }
  }
  if (std::fclose(f) != 0) ds4::fail("cannot write {}: {}", o.dump_logits, std::strerror(errno));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds4: DeepSeek V4 inference (CPU or CUDA)"};
  Options o;
  // The chat front end's flags include -m, --threads and --numerics, shared with this mode.
  ds4::cli::CliOptions co;
  ds4::cli::add_flags(app, co);
  app.add_option("--tokens", o.tokens, "token ids: 5,17,9 or @FILE");
  app.add_option("--dump-logits", o.dump_logits, "write float32 logits [n_tokens, vocab] here");
  app.add_option("--batch", o.batch, "prefill chunk size (1 = token-by-token decode; default: the backend's, cpu 512, cuda 2048-8192 by the GPU memory left after the weights)");
  try {
    ds4::cli::parse(app, argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "ds4: %s\n", e.what());
    return 2;
  }
  o.model_path = co.model;
  o.threads = co.threads;
  o.numerics = co.numerics;
  o.backend = co.backend;
  if (o.dump_logits.empty() && o.tokens.empty()) return ds4::cli::run(co);
  try {
    if (!o.dump_logits.empty()) {
      if (o.tokens.empty()) ds4::fail("--dump-logits needs --tokens");
      return run_dump_logits(o);
    }
    ds4::fail("nothing to do: give --tokens and --dump-logits");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ds4: %s\n", e.what());
    return 1;
  }
}
