#include <filesystem>

#include "gguf/gguf_test_util.h"

namespace ds4::gguf {
namespace {

using ::testing::HasSubstr;
using ggtest::error_of;
using ggtest::TempDir;
namespace fs = std::filesystem;

TEST(GgufWriter, FinalNameAppearsOnlyAfterFinish) {
  TempDir dir;
  const std::string path = dir.file("m.gguf");
  Writer w(path);
  w.add_tensor("a", GgmlType::F32, {4});
  w.begin_data();
  EXPECT_TRUE(fs::exists(path + ".tmp"));
  EXPECT_FALSE(fs::exists(path));
  const float data[4] = {1, 2, 3, 4};
  w.write_tensor_data(data, sizeof(data));
  w.finish();
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(GgufWriter, AbandonedWriterRemovesItsTempFile) {
  TempDir dir;
  const std::string path = dir.file("m.gguf");
  {
    Writer w(path);
    w.add_tensor("a", GgmlType::F32, {4});
    w.begin_data();
    w.write_tensor_data("abcd", 4);
  }
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_FALSE(fs::exists(path));
}

TEST(GgufWriter, ChecksTheBytesWrittenPerTensor) {
  TempDir dir;
  const std::vector<uint8_t> buf(64, 1);
  {
    Writer w(dir.file("short.gguf"));
    w.add_tensor("a", GgmlType::F16, {8});
    w.add_tensor("b", GgmlType::F32, {2});
    w.begin_data();
    w.write_tensor_data(buf.data(), 16);
    w.write_tensor_data(buf.data(), 4);
    EXPECT_EQ(error_of([&] { w.finish(); }),
              fmt::format("{}: tensor b: only 4 of its 8 bytes were written", dir.file("short.gguf")));
  }
  EXPECT_FALSE(fs::exists(dir.file("short.gguf")));
  {
    Writer w(dir.file("long.gguf"));
    w.add_tensor("a", GgmlType::F16, {8});
    w.begin_data();
    EXPECT_THAT(error_of([&] { w.write_tensor_data(buf.data(), 17); }),
                HasSubstr("tensor a: a write of 17 bytes exceeds the 16 bytes left of its 16 bytes"));
    w.write_tensor_data(buf.data(), 16);
    EXPECT_THAT(error_of([&] { w.write_tensor_data(buf.data(), 1); }),
                HasSubstr("after the last tensor was complete"));
    w.finish();
    EXPECT_THAT(error_of([&] { w.write_tensor_data(buf.data(), 1); }), HasSubstr("after finish()"));
    EXPECT_THAT(error_of([&] { w.finish(); }), HasSubstr("finish() called twice"));
  }
}

TEST(GgufWriter, RejectsInvalidDeclarations) {
  TempDir dir;
  const std::string path = dir.file("bad.gguf");
  EXPECT_THAT(error_of([&] { Writer(path, 48); }), HasSubstr("alignment 48 is not a power of two"));
  EXPECT_THAT(error_of([&] { Writer(path, 0); }), HasSubstr("alignment 0 is not a power of two"));
  EXPECT_THAT(error_of([&] { Writer(path, 32, 1); }), HasSubstr("cannot write GGUF version 1"));

  Writer w(path);
  w.add_kv("k", Value::u32(1));
  EXPECT_THAT(error_of([&] { w.add_kv("k", Value::u8(1)); }), HasSubstr("duplicate metadata key k"));
  Value deep = Value::u32_array({1});
  for (int i = 0; i < 8; ++i) deep = Value::array(ValueType::ARRAY, {deep});
  EXPECT_THAT(error_of([&] { w.add_kv("deep", deep); }), HasSubstr("nested 9 levels deep"));
  w.add_tensor("t", GgmlType::F32, {1});
  EXPECT_THAT(error_of([&] { w.add_tensor("t", GgmlType::F32, {1}); }),
              HasSubstr("duplicate tensor name t"));
  EXPECT_THAT(error_of([&] { w.add_tensor("", GgmlType::F32, {1}); }),
              HasSubstr("empty tensor name"));
  EXPECT_THAT(error_of([&] { w.add_tensor("q", GgmlType::Q8_K, {256}); }),
              HasSubstr("tensor q: type Q8_K cannot be stored in a file"));
  EXPECT_THAT(error_of([&] { w.add_tensor("q", static_cast<GgmlType>(77), {256}); }),
              HasSubstr("tensor q: unknown tensor type id 77"));
  EXPECT_THAT(error_of([&] { w.add_tensor("q", GgmlType::Q8_0, {48, 2}); }),
              HasSubstr("tensor q: ne[0] = 48 is not a multiple of the Q8_0 block size 32"));
  EXPECT_THAT(error_of([&] { w.add_tensor("q", GgmlType::F32, {4, 0}); }),
              HasSubstr("tensor q: dimension 1 is 0, expected a positive size"));
  EXPECT_THAT(error_of([&] { w.add_tensor("q", GgmlType::F32, {}); }),
              HasSubstr("tensor q: n_dims 0 is out of range (1 to 8)"));
  EXPECT_THAT(error_of([&] { w.add_tensor("q", GgmlType::F32, {1, 1, 1, 1, 1, 1, 1, 1, 1}); }),
              HasSubstr("n_dims 9 is out of range"));
  EXPECT_THAT(error_of([&] { w.add_tensor("q", GgmlType::F32, {1ll << 40, 1ll << 40}); }),
              HasSubstr("tensor q: shape [1099511627776, 1099511627776] overflows"));
  w.begin_data();
  EXPECT_THAT(error_of([&] { w.add_kv("late", Value::u8(1)); }),
              HasSubstr("cannot add metadata after begin_data()"));
  EXPECT_THAT(error_of([&] { w.add_tensor("late", GgmlType::F32, {1}); }),
              HasSubstr("cannot add tensors after begin_data()"));
}

TEST(GgufWriter, ReportsAnUnwritablePath) {
  TempDir dir;
  Writer w(dir.file("no/such/dir/m.gguf"));
  EXPECT_THAT(error_of([&] { w.begin_data(); }), HasSubstr("cannot create"));
}

TEST(GgufWriter, WriteBeforeBeginDataIsAnError) {
  TempDir dir;
  Writer w(dir.file("m.gguf"));
  w.add_tensor("a", GgmlType::F32, {1});
  EXPECT_THAT(error_of([&] { w.write_tensor_data("abcd", 4); }), HasSubstr("before begin_data()"));
}

}  // namespace
}  // namespace ds4::gguf
