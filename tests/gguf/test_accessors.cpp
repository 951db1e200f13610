#include <limits>

#include "gguf/gguf_test_util.h"

namespace ds4::gguf {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ggtest::error_of;
using ggtest::TempDir;

class GgufAccessors : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("acc.gguf");
    Writer w(path_);
    w.add_kv("deepseek4.block_count", Value::u32(43));
    w.add_kv("i64.small", Value::i64(4096));
    w.add_kv("i64.negative", Value::i64(-1));
    w.add_kv("u64.big", Value::u64(1ull << 33));
    w.add_kv("u8", Value::u8(6));
    w.add_kv("f32", Value::f32(1e-6f));
    w.add_kv("f64", Value::f64(10000.0));
    w.add_kv("flag", Value::boolean(true));
    w.add_kv("name", Value::string("deepseek4"));
    w.add_kv("ratios.u32", Value::u32_array({0, 0, 4, 128}));
    w.add_kv("ratios.i32", Value::i32_array({0, 0, 4, 128}));
    w.add_kv("ratios.i32neg", Value::i32_array({0, -4}));
    w.add_kv("ratios.u64big", Value::array(ValueType::U64, {Value::u64(1ull << 32)}));
    w.add_kv("ratios.u8", Value::array(ValueType::U8, {Value::u8(9)}));
    w.add_kv("clamp.f32", Value::f32_array({10.0f, 10.0f}));
    w.add_kv("clamp.f64", Value::array(ValueType::F64, {Value::f64(10.0), Value::f64(0.1)}));
    w.add_kv("tokens", Value::string_array({"a", "b c"}));
    w.add_tensor("w", GgmlType::F32, {2});
    w.begin_data();
    const float data[2] = {1.0f, -2.0f};
    w.write_tensor_data(data, sizeof(data));
    w.finish();
    file_ = std::make_unique<File>(File::open(path_));
  }

  const File& f() const { return *file_; }
  std::string err(const std::function<void()>& fn) const { return error_of(fn); }

  TempDir dir_;
  std::string path_;
  std::unique_ptr<File> file_;
};

TEST_F(GgufAccessors, IntegersOfAnyWidthThatFit) {
  EXPECT_EQ(f().get_u32("deepseek4.block_count"), 43u);
  EXPECT_EQ(f().get_u32("i64.small"), 4096u);
  EXPECT_EQ(f().get_u32("u8"), 6u);
  EXPECT_EQ(f().get_u64("u64.big"), 1ull << 33);
  EXPECT_EQ(f().get_u64("u8"), 6u);
  EXPECT_EQ(f().get_u32_or("u8"), std::optional<uint32_t>(6));
  EXPECT_EQ(f().get_u32_or("absent"), std::nullopt);
}

TEST_F(GgufAccessors, IntegerErrorsNameFileAndKey) {
  EXPECT_EQ(err([&] { f().get_u32("name"); }),
            path_ + ": metadata key name: expected an integer, found STRING");
  EXPECT_THAT(err([&] { f().get_u32("i64.negative"); }),
              HasSubstr("metadata key i64.negative: value -1 is negative"));
  EXPECT_THAT(err([&] { f().get_u32("u64.big"); }),
              HasSubstr("metadata key u64.big: value 8589934592 does not fit in UINT32"));
  EXPECT_THAT(err([&] { f().get_u64("f64"); }), HasSubstr("expected an integer, found FLOAT64"));
  EXPECT_THAT(err([&] { f().get_u32_or("name"); }), HasSubstr("found STRING"));
}

TEST_F(GgufAccessors, FloatsAcceptFloatsAndIntegers) {
  EXPECT_EQ(f().get_f64("f32"), static_cast<double>(1e-6f));
  EXPECT_EQ(f().get_f64("f64"), 10000.0);
  EXPECT_EQ(f().get_f64("deepseek4.block_count"), 43.0);
  EXPECT_EQ(f().get_f64("i64.negative"), -1.0);
  EXPECT_THAT(err([&] { f().get_f64("flag"); }),
              HasSubstr("metadata key flag: expected a number, found BOOL"));
}

TEST_F(GgufAccessors, BoolAndString) {
  EXPECT_TRUE(f().get_bool("flag"));
  EXPECT_EQ(f().get_string("name"), "deepseek4");
  EXPECT_THAT(err([&] { f().get_bool("u8"); }), HasSubstr("expected BOOL, found UINT8"));
  EXPECT_THAT(err([&] { f().get_string("u8"); }),
              HasSubstr(path_ + ": metadata key u8: expected STRING, found UINT8"));
}

TEST_F(GgufAccessors, MissingKeysAndTensors) {
  EXPECT_FALSE(f().has("deepseek4.nope"));
  EXPECT_EQ(f().find("deepseek4.nope"), nullptr);
  EXPECT_EQ(err([&] { f().get("deepseek4.nope"); }), path_ + ": missing metadata key deepseek4.nope");
  EXPECT_EQ(err([&] { f().get_u32("deepseek4.nope"); }),
            path_ + ": missing metadata key deepseek4.nope");
  EXPECT_EQ(f().find_tensor("nope"), nullptr);
  EXPECT_EQ(err([&] { f().tensor("nope"); }), path_ + ": missing tensor nope");
}

TEST_F(GgufAccessors, IntegerArraysOfAnyWidth) {
  EXPECT_THAT(f().get_u32_array("ratios.u32"), ElementsAre(0u, 0u, 4u, 128u));
  EXPECT_THAT(f().get_u32_array("ratios.i32"), ElementsAre(0u, 0u, 4u, 128u));
  EXPECT_THAT(f().get_u32_array("ratios.u8"), ElementsAre(9u));
  EXPECT_THAT(err([&] { f().get_u32_array("ratios.i32neg"); }),
              HasSubstr("metadata key ratios.i32neg: item 1 (-4) does not fit in UINT32"));
  EXPECT_THAT(err([&] { f().get_u32_array("ratios.u64big"); }),
              HasSubstr("item 0 (4294967296) does not fit in UINT32"));
  EXPECT_THAT(err([&] { f().get_u32_array("clamp.f32"); }),
              HasSubstr("metadata key clamp.f32: expected an array of integers, found an array of FLOAT32"));
  EXPECT_THAT(err([&] { f().get_u32_array("u8"); }),
              HasSubstr("expected an array of integers, found UINT8"));
}

TEST_F(GgufAccessors, FloatArrays) {
  EXPECT_THAT(f().get_f32_array("clamp.f32"), ElementsAre(10.0f, 10.0f));
  EXPECT_THAT(f().get_f32_array("clamp.f64"), ElementsAre(10.0f, 0.1f));
  EXPECT_THAT(err([&] { f().get_f32_array("ratios.u32"); }),
              HasSubstr("expected an array of FLOAT32 or FLOAT64, found an array of UINT32"));
}

TEST_F(GgufAccessors, StringArrays) {
  EXPECT_THAT(f().get_string_array("tokens"), ElementsAre("a", "b c"));
  EXPECT_THAT(err([&] { f().get_string_array("ratios.u32"); }),
              HasSubstr("expected an array of STRING, found an array of UINT32"));
}

TEST_F(GgufAccessors, TensorViewsPointIntoTheMapping) {
  const TensorInfo& t = f().tensor("w");
  EXPECT_EQ(t.n_elements(), 2);
  EXPECT_EQ(t.n_rows(), 1);
  EXPECT_EQ(t.shape_string(), "[2]");
  float v[2];
  std::memcpy(v, f().tensor_data(t), sizeof(v));
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
  EXPECT_EQ(f().tensor_data(t), f().bytes().data() + f().data_offset() + t.offset);
  // A moved File keeps its mapping and indexes.
  File moved = std::move(*file_);
  EXPECT_EQ(moved.get_u32("deepseek4.block_count"), 43u);
  EXPECT_EQ(moved.tensor("w").nbytes, 8u);
}

TEST(GgufTensorInfo, ShapeHelpers) {
  TensorInfo t;
  t.ne = {4096, 2048, 256};
  EXPECT_EQ(t.n_elements(), 4096ll * 2048 * 256);
  EXPECT_EQ(t.n_rows(), 2048 * 256);
  EXPECT_EQ(t.shape_string(), "[4096, 2048, 256]");
}

}  // namespace
}  // namespace ds4::gguf
