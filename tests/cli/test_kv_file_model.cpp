// KV snapshots of a real session: a loaded snapshot continues exactly like the original, and
// snapshots of another model or damaged files are refused.
#include <gtest/gtest.h>

#include <fstream>

#include "cli_test_util.h"
#include "core/error.h"
#include "generate/generator.h"
#include "generate/kv_file.h"

namespace {

using ds4::gen::GenerateOptions;
using ds4::gen::Generator;

GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.sampling.max_tokens = n;
  return o;
}

ds4::model::SessionOptions sopts(int64_t ctx = 256) { return {.max_ctx = ctx}; }

std::vector<int32_t> prompt_of(const std::string& text) {
  std::vector<int32_t> p{0};
  clitest::tiny().tok.encode_append(text, false, p);
  return p;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "";
}

TEST(KvFileModel, LoadedSnapshotContinuesExactly) {
  const auto& m = clitest::tiny();
  const std::string path = (clitest::temp_dir() / "s.kv").string();
  Generator a(m.model, m.tok, sopts());
  const auto p1 = prompt_of("save me");
  const auto r1 = a.generate(p1, greedy(6));
  ds4::gen::save_session(path, a, "note text");

  Generator b(m.model, m.tok, sopts());
  EXPECT_EQ(ds4::gen::load_session(path, b), "note text");
  EXPECT_EQ(b.session().tokens(), a.session().tokens());
  EXPECT_EQ(b.session().serialize(), a.session().serialize());

  auto p2 = p1;
  p2.insert(p2.end(), r1.tokens.begin(), r1.tokens.end());
  m.tok.encode_append(" and continue", false, p2);
  const auto ra = a.generate(p2, greedy(8));
  const auto rb = b.generate(p2, greedy(8));
  EXPECT_EQ(ra.tokens, rb.tokens);
  EXPECT_EQ(rb.reused_tokens, static_cast<int64_t>(p1.size() + r1.tokens.size() - 1));
}

TEST(KvFileModel, ForeignAndDamagedSnapshotsAreRefused) {
  const auto& m = clitest::tiny();
  const auto& other = clitest::tiny(2);  // same shapes, other weights
  const std::string path = (clitest::temp_dir() / "f.kv").string();
  Generator a(other.model, other.tok, sopts());
  a.generate(prompt_of("foreign"), greedy(3));
  ds4::gen::save_session(path, a);

  Generator b(m.model, m.tok, sopts());
  const std::string e = error_of([&] { ds4::gen::load_session(path, b); });
  EXPECT_NE(e.find("was saved with another model"), std::string::npos) << e;
  EXPECT_EQ(b.session().n_past(), 0);

  // Too many tokens for the session's context.
  Generator small(other.model, other.tok, sopts(8));
  const std::string e2 = error_of([&] { ds4::gen::load_session(path, small); });
  EXPECT_NE(e2.find("do not fit the context"), std::string::npos) << e2;

  // Truncated.
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  in.close();
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  const std::string e3 = error_of([&] { ds4::gen::load_session(path, a); });
  EXPECT_NE(e3.find("corrupted or truncated"), std::string::npos) << e3;
}

TEST(KvFileModel, IdentityCoversTheHeaderOnly) {
  const auto& m = clitest::tiny();
  const auto id = ds4::gen::model_identity(m.model);
  EXPECT_EQ(id, ds4::gen::model_identity(m.model));
  EXPECT_NE(id, ds4::gen::model_identity(clitest::tiny(2).model));  // the seed is in the metadata
  EXPECT_EQ(ds4::gen::identity_hex(id).size(), 64u);
}

}  // namespace
