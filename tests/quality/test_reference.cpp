// Reference dumps: round trip, and every way a reference can be wrong is refused with a
// message that says which (other text, other tokenizer, truncated, corrupted, other version).
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "quality/compare.h"
#include "quality/reference.h"
#include "quality_util.h"

namespace q = ds4::quality;
using ::testing::HasSubstr;

namespace {

q::Digest digest_of(const char* s) {
  return q::sha256(std::span(reinterpret_cast<const uint8_t*>(s), std::strlen(s)));
}

q::Reference make(uint32_t k, std::vector<int32_t> tokens = qt::token_stream(40, 37)) {
  qt::MockLogits src(37);
  return q::make_reference(src, tokens, {.ctx = 16, .stride = 8}, k, digest_of("model"), digest_of("tok"));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Rewrites the trailing checksum so that only the intended defect remains.
void reseal(std::vector<uint8_t>& b) {
  const auto d = q::sha256(std::span(b).first(b.size() - 32));
  std::memcpy(b.data() + b.size() - 32, d.data(), 32);
}

TEST(QualityReference, RoundTripFullAndTopK) {
  for (uint32_t k : {0u, 5u}) {
    const q::Reference r = make(k);
    const q::Reference back = q::deserialize(q::serialize(r), "mem");
    EXPECT_EQ(back.full, k == 0);
    EXPECT_EQ(back.k, k);
    EXPECT_EQ(back.tokens, r.tokens);
    EXPECT_EQ(back.windows.ctx, 16);
    EXPECT_EQ(back.windows.stride, 8);
    ASSERT_EQ(back.positions.size(), 39u);
    EXPECT_EQ(back.model, digest_of("model"));
    for (size_t i = 0; i < r.positions.size(); ++i) {
      EXPECT_EQ(back.positions[i].target, r.positions[i].target);
      EXPECT_EQ(back.positions[i].full, r.positions[i].full);
      EXPECT_EQ(back.positions[i].top.ids, r.positions[i].top.ids);
      EXPECT_EQ(back.positions[i].top.rest_lp, r.positions[i].top.rest_lp);
    }
  }
}

TEST(QualityReference, SelfComparisonIsPerfect) {
  const q::Reference r = make(0);
  qt::MockLogits src(37);
  const q::CompareResult c = q::compare(src, r);
  // The reference stores log-probs as f32: a relative rounding of 6e-8 on each leaves a KL of
  // about 1e-8 (measured 1.7e-8), not an exact zero.
  EXPECT_LT(c.mean_kl, 1e-6);
  EXPECT_EQ(c.top1_agreement, 1.0);
  EXPECT_EQ(c.same_top_p, 1.0);
  EXPECT_NEAR(c.ppl_ratio, 1.0, 1e-6);
  EXPECT_EQ(c.positions.size(), 39u);
}

TEST(QualityReference, RejectsMalformedFiles) {
  const auto good = q::serialize(make(4));
  ASSERT_NO_THROW(q::deserialize(good, "ref"));

  auto truncated = good;
  truncated.resize(good.size() - 10);
  EXPECT_THAT(error_of([&] { q::deserialize(truncated, "ref"); }), HasSubstr("checksum mismatch"));
  EXPECT_THAT(error_of([&] { q::deserialize(std::vector<uint8_t>(good.begin(), good.begin() + 40), "ref"); }),
              HasSubstr("truncated"));
  // A file cut short and resealed: the checksum passes, the sizes do not.
  truncated = good;
  truncated.resize(good.size() - 40);
  reseal(truncated);
  EXPECT_THAT(error_of([&] { q::deserialize(truncated, "ref"); }), HasSubstr("truncated"));

  auto flipped = good;
  flipped[good.size() / 2] ^= 0x40;
  EXPECT_THAT(error_of([&] { q::deserialize(flipped, "ref"); }), HasSubstr("checksum mismatch"));

  auto version = good;
  version[8] = 7;
  reseal(version);
  EXPECT_THAT(error_of([&] { q::deserialize(version, "ref"); }), HasSubstr("version 7"));

  auto magic = good;
  magic[0] = 'X';
  EXPECT_THAT(error_of([&] { q::deserialize(magic, "ref"); }), HasSubstr("bad magic"));
  EXPECT_THAT(error_of([&] { q::load_reference("/nonexistent/ref.bin"); }), HasSubstr("cannot open"));
}

TEST(QualityReference, RefusesOtherTextOrTokenizer) {
  const q::Reference r = make(4);
  const auto same = r.tokens;
  auto other = r.tokens;
  other[5] = (other[5] + 1) % 37;
  q::CompareTarget t{digest_of("another model"), digest_of("tok"), &same};
  EXPECT_NO_THROW(q::check_compatible(r, t, 37));
  t.tokens = &other;
  EXPECT_THAT(error_of([&] { q::check_compatible(r, t, 37); }), HasSubstr("another text"));
  t.tokens = nullptr;
  t.tokenizer = digest_of("other tok");
  EXPECT_THAT(error_of([&] { q::check_compatible(r, t, 37); }), HasSubstr("another tokenizer"));
  t.tokenizer = q::Digest{};
  EXPECT_THAT(error_of([&] { q::check_compatible(r, t, 37); }), HasSubstr("model: none"));
  t.tokenizer = digest_of("tok");
  EXPECT_THAT(error_of([&] { q::check_compatible(r, t, 50); }), HasSubstr("vocabulary"));
}

TEST(QualityReference, ReportsAreWellFormed) {
  const q::Reference r = make(4);
  qt::MockLogits src(37);
  const auto c = q::compare(src, r);
  const std::string csv = q::to_csv(c);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 40);
  EXPECT_THAT(q::to_svg(c, "a <title>"), HasSubstr("<polyline"));
  EXPECT_THAT(q::to_svg(c, "a <title>"), HasSubstr("a &lt;title&gt;"));
  EXPECT_THAT(q::to_markdown(c, "m.gguf"), HasSubstr("| m.gguf | 39 |"));
  const auto j = nlohmann::json::parse(q::to_json(c, r, {}));
  for (const char* key : {"mean_kl", "p99_kl", "top1_agreement", "ppl_ratio", "n_tokens"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["n_tokens"], 39);
}

}  // namespace
