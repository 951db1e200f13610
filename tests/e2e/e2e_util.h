// Shared helpers of the end-to-end tests: fixture conversion (cached per test binary build),
// reference loading and error metrics.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "convert/convert.h"
#include "core/error.h"
#include "model/model.h"

namespace e2e {

namespace fs = std::filesystem;

using testfix::fixture_dir;

inline std::string converted(const std::string& name, const std::string& recipe) {
  return testfix::converted(name, recipe, "e2e-cache");
}

struct Case {
  std::vector<int32_t> tokens;
  std::vector<float> logits;      // [n_tokens][vocab]
  std::vector<float> layer_out;   // [n_layers][n_tokens][n_hc][hidden] (case 0 of bf16 only)
};

inline std::vector<float> read_f32(const std::string& path, size_t expect) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ds4::Error("cannot open " + path);
  std::vector<float> v(expect);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(expect * 4));
  if (static_cast<size_t>(f.gcount()) != expect * 4) throw ds4::Error("short file " + path);
  return v;
}

inline std::vector<Case> load_cases(const std::string& name) {
  const std::string dir = fixture_dir(name);
  std::ifstream in(dir + "/reference.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  std::vector<Case> out;
  for (const auto& c : j.at("cases")) {
    Case k;
    for (const auto& t : c.at("tokens")) k.tokens.push_back(t.get<int32_t>());
    const auto shape = c.at("shape");
    k.logits = read_f32(dir + "/" + c.at("logits_file").get<std::string>(),
                        shape[0].get<size_t>() * shape[1].get<size_t>());
    if (c.contains("layer_out_file")) {
      size_t n = 1;
      for (const auto& d : c.at("layer_out_shape")) n *= d.get<size_t>();
      k.layer_out = read_f32(dir + "/" + c.at("layer_out_file").get<std::string>(), n);
    }
    out.push_back(std::move(k));
  }
  return out;
}

inline double rel_err(const float* a, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}
inline double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  return rel_err(a.data(), ref.data(), std::min(a.size(), ref.size()));
}

// Mean over rows of KL(softmax(ref) || softmax(a)) and the fraction of rows whose argmax agree.
struct Agreement {
  double kl = 0, top1 = 0;
};
inline Agreement agreement(const std::vector<float>& a, const std::vector<float>& ref, int64_t vocab) {
  Agreement r;
  const int64_t rows = static_cast<int64_t>(ref.size()) / vocab;
  for (int64_t t = 0; t < rows; ++t) {
    const float* x = a.data() + t * vocab;
    const float* y = ref.data() + t * vocab;
    double mx = -1e300, my = -1e300;
    int64_t ax = 0, ay = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (x[i] > mx) { mx = x[i]; ax = i; }
      if (y[i] > my) { my = y[i]; ay = i; }
    }
    double zx = 0, zy = 0;
    for (int64_t i = 0; i < vocab; ++i) { zx += std::exp(x[i] - mx); zy += std::exp(y[i] - my); }
    double kl = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const double lp = y[i] - my - std::log(zy), lq = x[i] - mx - std::log(zx);
      kl += std::exp(lp) * (lp - lq);
    }
    r.kl += kl;
    r.top1 += ax == ay ? 1.0 : 0.0;
  }
  r.kl /= static_cast<double>(rows);
  r.top1 /= static_cast<double>(rows);
  return r;
}

// Logits of `tokens` from a fresh session, fed in chunks of `batch` tokens (0 = all at once).
inline std::vector<float> run(const ds4::model::Model& m, const std::vector<int32_t>& tokens,
                              ds4::model::Numerics num, size_t batch = 0) {
  ds4::model::Session s(m, {.max_ctx = 4096, .numerics = num});
  const int64_t V = m.hparams().n_vocab;
  std::vector<float> out(tokens.size() * static_cast<size_t>(V));
  if (batch == 0) batch = tokens.size();
  for (size_t i = 0; i < tokens.size(); i += batch) {
    const size_t n = std::min(batch, tokens.size() - i);
    s.eval(std::span(tokens).subspan(i, n), ds4::model::LogitsMode::All, out.data() + i * V);
  }
  return out;
}

// Models are loaded once per process and shared by the tests.
inline const ds4::model::Model& model(const std::string& name, const std::string& recipe) {
  return testfix::loaded(name, recipe, "e2e-cache");
}

}  // namespace e2e
