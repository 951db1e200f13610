// The safetensors shard reader: header validation on hand-written files.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>

#include "convert/safetensors.h"
#include "convert_test_util.h"
#include "core/error.h"

namespace ds4::convert {
namespace {

using namespace testing;

// A shard with the given header JSON and `data_bytes` bytes of data.
std::string shard(const TempDir& tmp, const std::string& header, size_t data_bytes) {
  static int n = 0;
  const std::string p = tmp.file("s" + std::to_string(n++) + ".safetensors");
  std::ofstream out(p, std::ios::binary);
  const uint64_t len = header.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  const std::string data(data_bytes, '\x01');
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  return p;
}

void expect_bad(const std::string& path, const std::string& needle) {
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "accepted " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Safetensors, ReadsTensors) {
  TempDir tmp;
  const auto f = SafetensorsFile::open(shard(
      tmp,
      R"({"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"F8_E8M0","shape":[4],"data_offsets":[12,16]},"__metadata__":{"format":"pt"}})",
      16));
  ASSERT_EQ(f->tensors().size(), 2u);
  const StTensor& a = f->tensors().at("a");
  EXPECT_EQ(a.dtype, StDtype::BF16);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.nbytes, 12u);
  EXPECT_EQ(a.describe(), "BF16 [2, 3]");
  EXPECT_EQ(f->tensors().at("b").data, a.data + 12);
  f->release(a);  // advisory; the data stays readable
  EXPECT_EQ(a.data[0], 1);
}

TEST(Safetensors, RejectsBadHeaders) {
  TempDir tmp;
  expect_bad(shard(tmp, "[1,2]", 0), "not an object");
  expect_bad(shard(tmp, R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
  expect_bad(shard(tmp, R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), "Q4");
  expect_bad(shard(tmp, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
             "malformed shape");
  expect_bad(shard(tmp, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
             "needs 12 bytes");
  expect_bad(shard(tmp, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
             "outside");
  expect_bad(shard(tmp,
                   R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                   12),
             "overlap");
  expect_bad(tmp.file("absent.safetensors"), "cannot open");
  {
    const std::string p = tmp.file("short.safetensors");
    std::ofstream(p) << "abc";
    expect_bad(p, "too short");
  }
}

}  // namespace
}  // namespace ds4::convert
