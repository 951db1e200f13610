// KV snapshot file format: round trip, atomic write, and one-sentence refusals of damaged files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "generate/kv_file.h"

namespace {

namespace fs = std::filesystem;
using ds4::gen::KvFile;

fs::path tmp(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("ds4-kvfile-test-" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d / name;
}

KvFile sample() {
  KvFile f;
  for (size_t i = 0; i < f.model.size(); ++i) f.model[i] = static_cast<uint8_t>(i * 7);
  f.ctx = 4096;
  f.tokens = {0, 128803, 42, 128804, 128821};
  f.note = R"({"messages":[]})";
  f.state = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  return f;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void spit(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

std::string error_of(const fs::path& p) {
  try {
    ds4::gen::read_kv_file(p.string());
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "";
}

TEST(KvFile, RoundTrip) {
  const fs::path p = tmp("a.kv");
  const KvFile f = sample();
  ds4::gen::write_kv_file(p.string(), f);
  const KvFile g = ds4::gen::read_kv_file(p.string());
  EXPECT_EQ(g.model, f.model);
  EXPECT_EQ(g.ctx, f.ctx);
  EXPECT_EQ(g.tokens, f.tokens);
  EXPECT_EQ(g.note, f.note);
  EXPECT_EQ(g.state, f.state);
  // No temporary file is left next to it.
  int files = 0;
  for (const auto& e : fs::directory_iterator(p.parent_path())) files += e.path().filename() == "a.kv" ? 1 : 100;
  EXPECT_EQ(files, 1);
  fs::remove_all(p.parent_path());
}

TEST(KvFile, EveryFlippedByteIsDetected) {
  const fs::path p = tmp("b.kv");
  ds4::gen::write_kv_file(p.string(), sample());
  const std::string good = slurp(p);
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x20);
    spit(p, bad);
    EXPECT_NE(error_of(p), "") << "byte " << i;
  }
  fs::remove_all(p.parent_path());
}

TEST(KvFile, DamagedFilesGetOneClearSentence) {
  const fs::path p = tmp("c.kv");
  ds4::gen::write_kv_file(p.string(), sample());
  const std::string good = slurp(p);

  spit(p, good.substr(0, good.size() - 10));
  EXPECT_NE(error_of(p).find("corrupted or truncated"), std::string::npos) << error_of(p);

  spit(p, good.substr(0, 10));
  EXPECT_NE(error_of(p).find("truncated"), std::string::npos) << error_of(p);

  spit(p, "GGUF not a snapshot at all");
  EXPECT_NE(error_of(p).find("not a DwarfStar KV snapshot"), std::string::npos) << error_of(p);

  std::string newer = good;
  newer[8] = 9;
  spit(p, newer);
  EXPECT_NE(error_of(p).find("version 9"), std::string::npos) << error_of(p);

  std::string flipped = good;
  flipped[60] = static_cast<char>(flipped[60] ^ 1);
  spit(p, flipped);
  EXPECT_NE(error_of(p).find("checksum"), std::string::npos) << error_of(p);

  EXPECT_NE(error_of(tmp("missing.kv")).find("cannot open"), std::string::npos);
  fs::remove_all(p.parent_path());
}

TEST(KvFile, UnwritableDestinationIsAnError) {
  EXPECT_THROW(ds4::gen::write_kv_file("/nonexistent-dir/x.kv", sample()), ds4::Error);
}

}  // namespace
