// Test helper shared by the test binaries that run converted fixtures (tests/e2e,
// tests/quality): where a fixture lives and its GGUF in a recipe, converted once per test
// binary build and cached.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "convert/convert.h"
#include "model/model.h"

namespace testfix {

namespace fs = std::filesystem;

inline std::string fixture_dir(const std::string& name) {
  // tiny-a fixtures are shared; tiny-k (K-quant friendly widths) lives in the repository.
  const fs::path shared = fs::path(DS4_FIXTURES_DIR) / name;
  if (fs::exists(shared)) return shared.string();
  return (fs::path(DS4_SOURCE_DIR) / "tests/data/fixtures" / name).string();
}

// GGUF of fixture `name` in `recipe`, converted once into DS4_BINARY_DIR/tests/<cache> and
// reused until this test binary is rebuilt (so a changed converter is always re-run).
inline std::string converted(const std::string& name, const std::string& recipe,
                             const std::string& cache) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  const fs::path dir = fs::path(DS4_BINARY_DIR) / "tests" / cache;
  fs::create_directories(dir);
  const fs::path out = dir / (name + "-" + recipe + ".gguf");
  if (fs::exists(out) && fs::last_write_time(out) > fs::last_write_time("/proc/self/exe"))
    return out.string();
  ds4::convert::ConvertOptions o;
  o.input_dir = fixture_dir(name);
  o.output_path = out.string() + "." + std::to_string(getpid());
  o.recipe = recipe;
  o.threads = 2;
  ds4::convert::convert_checkpoint(o);
  fs::rename(o.output_path, out);  // atomic: parallel test processes never see half a file
  return out.string();
}

// The fixture converted with `recipe` into `cache`, loaded once per process and kept.
inline const ds4::model::Model& loaded(const std::string& name, const std::string& recipe,
                                       const std::string& cache) {
  static std::map<std::string, std::unique_ptr<ds4::model::Model>> models;
  const std::string key = cache + "/" + name + "/" + recipe;
  auto it = models.find(key);
  if (it == models.end())
    it = models.emplace(key, std::make_unique<ds4::model::Model>(
                                 ds4::model::Model::load(converted(name, recipe, cache), {.threads = 2})))
             .first;
  return *it->second;
}

}  // namespace testfix
