#include <bit>
#include <cmath>
#include <limits>

#include "gguf/gguf_test_util.h"

namespace ds4::gguf {
namespace {

using ::testing::HasSubstr;
using ggtest::error_of;

TEST(GgufValue, ScalarsKeepTheirTypeAndValue) {
  EXPECT_EQ(Value::u8(200).type(), ValueType::U8);
  EXPECT_EQ(Value::u8(200).as_u32(), 200u);
  EXPECT_EQ(Value::i8(-5).as_i64(), -5);
  EXPECT_EQ(Value::u16(65535).as_u64(), 65535u);
  EXPECT_EQ(Value::i16(-32768).as_i64(), -32768);
  EXPECT_EQ(Value::u32(4000000000u).as_u32(), 4000000000u);
  EXPECT_EQ(Value::i32(-7).type(), ValueType::I32);
  EXPECT_EQ(Value::u64(std::numeric_limits<uint64_t>::max()).as_u64(),
            std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(Value::i64(std::numeric_limits<int64_t>::min()).as_i64(),
            std::numeric_limits<int64_t>::min());
  EXPECT_EQ(Value::f32(1.5f).as_f64(), 1.5);
  EXPECT_EQ(Value::f64(-2.25).as_f64(), -2.25);
  EXPECT_TRUE(Value::boolean(true).as_bool());
  EXPECT_FALSE(Value::boolean(false).as_bool());
  EXPECT_EQ(Value::string("deepseek4").as_string(), "deepseek4");
  EXPECT_TRUE(Value::i16(1).is_integer());
  EXPECT_FALSE(Value::f32(1).is_integer());
  EXPECT_TRUE(Value::f64(1).is_float());
  EXPECT_FALSE(Value::boolean(true).is_float());
}

TEST(GgufValue, IntegerWidthsConvertWhenTheValueFits) {
  EXPECT_EQ(Value::i64(12).as_u32("k"), 12u);
  EXPECT_EQ(Value::u64(1u << 20).as_u32("k"), 1u << 20);
  EXPECT_EQ(Value::u8(3).as_i64("k"), 3);
  EXPECT_EQ(Value::i32(-3).as_f64("k"), -3.0);
  EXPECT_EQ(Value::u64(10).as_f64("k"), 10.0);
}

TEST(GgufValue, TypeErrorsNameTheKeyAndBothTypes) {
  EXPECT_EQ(error_of([] { Value::string("x").as_u32("deepseek4.block_count"); }),
            "metadata key deepseek4.block_count: expected an integer, found STRING");
  EXPECT_THAT(error_of([] { Value::i32(-1).as_u32("a.b"); }),
              HasSubstr("metadata key a.b: value -1 is negative"));
  EXPECT_THAT(error_of([] { Value::u64(1ull << 32).as_u32("a.b"); }),
              HasSubstr("metadata key a.b: value 4294967296 does not fit in UINT32"));
  EXPECT_THAT(error_of([] { Value::u64(std::numeric_limits<uint64_t>::max()).as_i64("x"); }),
              HasSubstr("does not fit in INT64"));
  EXPECT_THAT(error_of([] { Value::boolean(true).as_f64("f"); }),
              HasSubstr("metadata key f: expected a number, found BOOL"));
  EXPECT_THAT(error_of([] { Value::u8(1).as_bool("b"); }),
              HasSubstr("metadata key b: expected BOOL, found UINT8"));
  EXPECT_THAT(error_of([] { Value::f32(1).as_string("s"); }),
              HasSubstr("metadata key s: expected STRING, found FLOAT32"));
  EXPECT_THAT(error_of([] { Value::string("x").as_array("a"); }),
              HasSubstr("metadata key a: expected ARRAY, found STRING"));
  // Without a key the message still says what was wrong.
  EXPECT_THAT(error_of([] { Value::f64(1).as_i64(); }),
              HasSubstr("metadata value: expected an integer, found FLOAT64"));
}

TEST(GgufValue, ArraysMustBeHomogeneous) {
  const Value a = Value::u32_array({1, 2, 3});
  EXPECT_EQ(a.type(), ValueType::ARRAY);
  EXPECT_EQ(a.array_elem_type(), ValueType::U32);
  ASSERT_EQ(a.as_array().size(), 3u);
  EXPECT_EQ(a.as_array()[2].as_u32(), 3u);
  EXPECT_THAT(error_of([] { Value::array(ValueType::U32, {Value::u32(1), Value::i32(2)}); }),
              HasSubstr("item 1 has type INT32"));
  EXPECT_THAT(error_of([] { Value::array(static_cast<ValueType>(13), {}); }),
              HasSubstr("unknown element type 13"));
  const Value nested = Value::array(ValueType::ARRAY, {Value::string_array({"a"}), Value::i32_array({})});
  EXPECT_EQ(nested.as_array()[1].array_elem_type(), ValueType::I32);
}

TEST(GgufValue, EqualityComparesTypeAndExactBits) {
  EXPECT_EQ(Value::u32(5), Value::u32(5));
  EXPECT_NE(Value::u32(5), Value::u64(5));
  EXPECT_NE(Value::i32(5), Value::i32(6));
  EXPECT_NE(Value::string("a"), Value::string("b"));
  const float nan = std::bit_cast<float>(0x7fc01234u);
  EXPECT_EQ(Value::f32(nan), Value::f32(nan));
  EXPECT_NE(Value::f32(0.0f), Value::f32(-0.0f));
  EXPECT_NE(Value::u32_array({1, 2}), Value::u32_array({1, 3}));
  EXPECT_NE(Value::array(ValueType::U32, {}), Value::array(ValueType::I32, {}));
}

TEST(GgufValue, TypeNamesFollowTheSpec) {
  EXPECT_EQ(value_type_name(ValueType::U8), "UINT8");
  EXPECT_EQ(value_type_name(ValueType::F32), "FLOAT32");
  EXPECT_EQ(value_type_name(ValueType::I64), "INT64");
  EXPECT_EQ(value_type_name(ValueType::ARRAY), "ARRAY");
  EXPECT_EQ(value_type_name(static_cast<ValueType>(99)), "UNKNOWN");
}

}  // namespace
}  // namespace ds4::gguf
