// The legacy imatrix .dat reader (formats.md 5.1) and the expert lookup (formats.md 5.3).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "convert/imatrix.h"
#include "core/error.h"

namespace ds4::convert {
namespace {

struct Dat {
  std::vector<uint8_t> b;
  void i32(int32_t v) { put(&v, 4); }
  void f32(float v) { put(&v, 4); }
  void str(const std::string& s) { put(s.data(), s.size()); }
  void put(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  void entry(const std::string& name, int32_t ncall, const std::vector<float>& v) {
    i32(static_cast<int32_t>(name.size()));
    str(name);
    i32(ncall);
    i32(static_cast<int32_t>(v.size()));
    for (float x : v) f32(x);
  }
};

void expect_error(const Dat& d, const std::string& needle) {
  try {
    Imatrix::parse(d.b, "test.dat");
    ADD_FAILURE() << "accepted a file that should fail with: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Imatrix, ParsesEntriesAndTrailer) {
  Dat d;
  d.i32(2);
  d.entry("blk.0.ffn_down_exps.weight", 4, {4, 8, 12, 16, 20, 24});  // 2 experts x 3 cols
  d.entry("blk.0.ffn_gate_exps.weight.expert.1", 1, {1, 2, 3});
  d.i32(42);
  d.i32(5);
  d.str("a.txt");
  const Imatrix m = Imatrix::parse(d.b, "test.dat");
  ASSERT_EQ(m.entries().size(), 2u);
  EXPECT_EQ(m.chunks(), 42);
  EXPECT_EQ(m.dataset(), "a.txt");
  // Divided by ncall.
  EXPECT_EQ(m.entries().at("blk.0.ffn_down_exps.weight").values,
            (std::vector<float>{1, 2, 3, 4, 5, 6}));

  // Packed entry sliced per expert.
  const float* e1 = m.find_expert("blk.0.ffn_down_exps.weight", "layers.0.ffn.experts.1.w2.weight",
                                  1, 3, 2);
  ASSERT_NE(e1, nullptr);
  EXPECT_EQ(e1[0], 4.0f);
  // Per-expert name takes precedence over nothing; missing names give nullptr.
  const float* g1 = m.find_expert("blk.0.ffn_gate_exps.weight", "layers.0.ffn.experts.1.w1.weight",
                                  1, 3, 2);
  ASSERT_NE(g1, nullptr);
  EXPECT_EQ(g1[2], 3.0f);
  EXPECT_EQ(m.find_expert("blk.0.ffn_gate_exps.weight", "layers.0.ffn.experts.0.w1.weight", 0, 3,
                          2),
            nullptr);
  // Wrong size is fatal.
  EXPECT_THROW(m.find_expert("blk.0.ffn_down_exps.weight", "x", 0, 4, 2), Error);
}

TEST(Imatrix, TrailerIsOptional) {
  Dat d;
  d.i32(1);
  d.entry("layers.2.ffn.experts.0.w3.weight", 0, {7, 8});
  const Imatrix m = Imatrix::parse(d.b, "test.dat");
  EXPECT_EQ(m.chunks(), 0);
  EXPECT_TRUE(m.dataset().empty());
  // ncall 0: values kept as they are; the HF name is found too.
  const float* v = m.find_expert("blk.2.ffn_up_exps.weight", "layers.2.ffn.experts.0.w3.weight", 0,
                                 2, 8);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v[1], 8.0f);
}

TEST(Imatrix, RejectsMalformedFiles) {
  {
    Dat d;
    d.i32(1);
    d.i32(0);  // name_len 0
    expect_error(d, "name length 0");
  }
  {
    Dat d;
    d.i32(1);
    d.i32(5000);
    expect_error(d, "name length 5000");
  }
  {
    Dat d;
    d.i32(1);
    d.entry("a", 1, {});
    expect_error(d, "nval 0");
  }
  {
    Dat d;
    d.i32(1);
    d.entry("a", 1, {1.0f, std::numeric_limits<float>::quiet_NaN()});
    expect_error(d, "not finite");
  }
  {
    Dat d;
    d.i32(1);
    d.entry("a", 1, {1.0f, std::numeric_limits<float>::infinity()});
    expect_error(d, "not finite");
  }
  {
    Dat d;
    d.i32(2);
    d.entry("a", 1, {1.0f, 2.0f});
    expect_error(d, "truncated");
  }
  {
    Dat d;
    d.i32(1);
    d.entry("a", 1, {1.0f, 2.0f});
    d.b.pop_back();  // cut inside the last value
    d.b.pop_back();
    expect_error(d, "truncated");
  }
  {
    Dat d;
    d.i32(2);
    d.entry("a", 1, {1.0f});
    d.entry("a", 1, {1.0f});
    expect_error(d, "twice");
  }
  {
    Dat d;
    d.i32(-1);
    expect_error(d, "negative");
  }
  {
    Dat d;
    expect_error(d, "truncated");
  }
}

TEST(Imatrix, LoadMissingFile) {
  EXPECT_THROW(Imatrix::load("/nonexistent/im.dat"), Error);
}

}  // namespace
}  // namespace ds4::convert
