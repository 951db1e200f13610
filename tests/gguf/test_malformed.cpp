// Every validation of the reader, reached with hand-built or corrupted files.
#include "gguf/sample_file.h"

namespace ds4::gguf {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using ggtest::error_of;
using ggtest::parse;
using ggtest::parse_error;
using ggtest::Raw;
using ggtest::TempDir;

constexpr uint32_t kF32 = 0, kQ8_0 = 8, kQ8_K = 15, kArray = 9;

// A valid file with one F32 [4] tensor, to be varied by the tests.
Raw one_tensor(std::vector<uint64_t> ne = {4}, uint32_t type = kF32, uint64_t offset = 0,
               size_t data = 16) {
  Raw r;
  r.header(1, 1).kv_string("general.architecture", "deepseek4").tensor("w", ne, type, offset);
  r.pad(32).zeros(data);
  return r;
}

TEST(GgufMalformed, BaselineIsValid) {
  const auto b = one_tensor().b;
  const File f = parse(b);
  EXPECT_EQ(f.get_string("general.architecture"), "deepseek4");
  EXPECT_EQ(f.tensor("w").nbytes, 16u);
}

TEST(GgufMalformed, BadMagic) {
  Raw r = one_tensor();
  r.b[3] = 'G';
  EXPECT_EQ(parse_error(r.b),
            "<buffer>: not a GGUF file (the first bytes are 47 47 55 47, expected 47 47 55 46 "
            "\"GGUF\")");
}

TEST(GgufMalformed, UnsupportedVersions) {
  EXPECT_THAT(parse_error(Raw().header(0, 0, 1).b),
              HasSubstr("GGUF version 1 is not supported"));
  EXPECT_THAT(parse_error(Raw().header(0, 0, 4).b),
              HasSubstr("unsupported GGUF version 4 (only versions 2 and 3 are supported)"));
  EXPECT_NO_THROW(parse(Raw().header(0, 0, 2).b));
  EXPECT_THAT(parse_error(Raw().header(0, 0, 0x03000000).b),
              HasSubstr("big-endian GGUF files are not supported (version 3"));
}

TEST(GgufMalformed, EmptyAndTinyBuffersAreTruncated) {
  EXPECT_EQ(parse_error({}),
            "<buffer>: truncated file: header needs 4 bytes at offset 0, but the file has 0 bytes");
  EXPECT_THAT(parse_error({'G', 'G'}), HasSubstr("truncated file"));
}

TEST(GgufMalformed, CountsOverTheLimits) {
  EXPECT_THAT(parse_error(Raw().header(3, 0).b, ReadLimits{.max_tensors = 2}),
              HasSubstr("tensor count 3 exceeds the limit of 2"));
  EXPECT_THAT(parse_error(Raw().header(0, 5).b, ReadLimits{.max_kv = 4}),
              HasSubstr("metadata count 5 exceeds the limit of 4"));
  EXPECT_THAT(parse_error(Raw().header(~0ull, 0).b), HasSubstr("tensor count 18446744073709551615"));
  EXPECT_THAT(parse_error(Raw().header(0, 1000).zeros(100).b),
              HasSubstr("truncated file: the header declares 1000 metadata records and 0 tensors, "
                        "more than the 100 bytes that follow can hold"));
  EXPECT_THAT(parse_error(Raw().header(10, 0).zeros(100).b),
              HasSubstr("declares 0 metadata records and 10 tensors"));
}

TEST(GgufMalformed, StringLengths) {
  EXPECT_THAT(parse_error(Raw().header(0, 1).kv_u32("a.long.key", 1).b,
                          ReadLimits{.max_string_bytes = 8}),
              HasSubstr("key of metadata record 0: string of 10 bytes exceeds the limit of 8 bytes"));
  EXPECT_THAT(parse_error(Raw().header(0, 1).u64(1ull << 60).zeros(20).b),
              HasSubstr("string of 1152921504606846976 bytes exceeds the limit"));
  EXPECT_THAT(parse_error(Raw().header(0, 1).u64(100).zeros(20).b),
              HasSubstr("truncated file: key of metadata record 0 needs 100 bytes at offset 32"));
  Raw r;
  r.header(0, 1).str("k").u32(8).u64(1000).zeros(10);
  EXPECT_THAT(parse_error(r.b), HasSubstr("truncated file: metadata key k needs 1000 bytes"));
}

TEST(GgufMalformed, UnknownValueTypes) {
  Raw r;
  r.header(0, 1).str("x.y").u32(13).u32(0);
  EXPECT_EQ(parse_error(r.b), "<buffer>: metadata key x.y: unknown value type 13");
  Raw a;
  a.header(0, 1).str("arr").u32(kArray).u32(42).u64(0);
  EXPECT_THAT(parse_error(a.b), HasSubstr("metadata key arr: unknown array element type 42"));
}

TEST(GgufMalformed, ArrayCounts) {
  Raw r;
  r.header(0, 1).str("arr").u32(kArray).u32(4).u64(5).zeros(20);
  EXPECT_THAT(parse_error(r.b, ReadLimits{.max_array_elems = 4}),
              HasSubstr("metadata key arr: array of 5 items exceeds the limit of 4"));
  Raw big;
  big.header(0, 1).str("arr").u32(kArray).u32(4).u64(1000000).zeros(20);
  EXPECT_THAT(parse_error(big.b),
              HasSubstr("truncated file: metadata key arr declares an array of 1000000 UINT32 "
                        "items, more than the 20 bytes left in the file can hold"));
  Raw two;
  two.header(0, 2).str("a").u32(kArray).u32(0).u64(3).zeros(3);
  two.str("b").u32(kArray).u32(0).u64(3).zeros(3);
  EXPECT_NO_THROW(parse(two.b, ReadLimits{.max_total_array_elems = 6}));
  EXPECT_THAT(parse_error(two.b, ReadLimits{.max_total_array_elems = 5}),
              HasSubstr("metadata key b: array of 3 items brings the file's array items past the "
                        "limit of 5"));
  // Strings inside arrays are checked one by one as well.
  Raw s;
  s.header(0, 1).str("toks").u32(kArray).u32(8).u64(2).str("ok").u64(50).zeros(10);
  EXPECT_THAT(parse_error(s.b), HasSubstr("truncated file: metadata key toks needs 50 bytes"));
}

Raw nested(int levels) {
  Raw r;
  r.header(0, 1).str("deep").u32(kArray);
  for (int i = 1; i < levels; ++i) r.u32(kArray).u64(1);
  r.u32(4).u64(1).u32(7);
  return r;
}

TEST(GgufMalformed, ArrayNestingDepth) {
  const File ok = parse(nested(8).b);
  const Value* v = &ok.get("deep");
  for (int i = 1; i < 8; ++i) v = &v->as_array().at(0);
  EXPECT_EQ(v->as_array().at(0).as_u32(), 7u);
  EXPECT_THAT(parse_error(nested(9).b),
              HasSubstr("metadata key deep: arrays are nested more than 8 levels deep"));
  EXPECT_THAT(parse_error(nested(3).b, ReadLimits{.max_array_depth = 2}),
              HasSubstr("more than 2 levels deep"));
}

TEST(GgufMalformed, BoolMustBeZeroOrOne) {
  Raw r;
  r.header(0, 1).str("b").u32(7).u8(2);
  EXPECT_THAT(parse_error(r.b), HasSubstr("metadata key b: BOOL value 2 is neither 0 nor 1"));
}

TEST(GgufMalformed, DuplicateKeys) {
  Raw r;
  r.header(0, 2).kv_u32("general.x", 1).kv_u32("general.x", 2);
  EXPECT_EQ(parse_error(r.b), "<buffer>: duplicate metadata key general.x");
}

TEST(GgufMalformed, Alignment) {
  Raw bad;
  bad.header(0, 1).kv_u32("general.alignment", 48);
  EXPECT_THAT(parse_error(bad.b), HasSubstr("metadata key general.alignment: 48 is not a power of two"));
  // Zero, or a type other than UINT32, means the default 32 (formats.md 1.1).
  Raw zero;
  zero.header(0, 1).kv_u32("general.alignment", 0);
  EXPECT_EQ(parse(zero.b).alignment(), 32u);
  Raw wide;
  wide.header(0, 1).str("general.alignment").u32(10).u64(64);
  EXPECT_EQ(parse(wide.b).alignment(), 32u);
  Raw good;
  good.header(1, 1).kv_u32("general.alignment", 16).tensor("w", {4}, kF32, 0).pad(16).zeros(16);
  const File f = parse(good.b);
  EXPECT_EQ(f.alignment(), 16u);
  EXPECT_EQ(f.data_offset() % 16, 0u);
}

TEST(GgufMalformed, TensorNames) {
  Raw empty;
  empty.header(1, 0).tensor("", {4}, kF32, 0).pad(32).zeros(16);
  EXPECT_THAT(parse_error(empty.b), HasSubstr("tensor info 0 has an empty name"));
  Raw dup;
  dup.header(2, 0).tensor("w", {4}, kF32, 0).tensor("w", {4}, kF32, 32).pad(32).zeros(64);
  EXPECT_EQ(parse_error(dup.b), "<buffer>: duplicate tensor name w");
  Raw trunc;
  trunc.header(1, 0).u64(100).zeros(30);
  EXPECT_THAT(parse_error(trunc.b), HasSubstr("truncated file: name of tensor info 0 needs 100 bytes"));
}

TEST(GgufMalformed, DimensionCount) {
  EXPECT_EQ(parse_error(one_tensor({}).b),
            "<buffer>: tensor w: n_dims 0 is out of range (1 to 8)");
  EXPECT_THAT(parse_error(one_tensor({4, 1, 1, 1, 1, 1, 1, 1, 1}).b),
              HasSubstr("tensor w: n_dims 9 is out of range (1 to 8)"));
  EXPECT_THAT(parse_error(one_tensor({4, 1, 1, 1, 1}).b, ReadLimits{.max_dims = 4}),
              HasSubstr("n_dims 5 is out of range (1 to 4)"));
  EXPECT_NO_THROW(parse(one_tensor({4, 1, 1, 1, 1, 1, 1, 1}).b));
}

TEST(GgufMalformed, DimensionSizes) {
  EXPECT_THAT(parse_error(one_tensor({4, 0}).b),
              HasSubstr("tensor w: dimension 1 is 0, expected a positive size"));
  EXPECT_THAT(parse_error(one_tensor({~0ull}).b),
              HasSubstr("tensor w: dimension 0 is -1, expected a positive size"));
  EXPECT_THAT(parse_error(one_tensor({1ull << 32, 1ull << 31, 4}).b),
              HasSubstr("tensor w: shape [4294967296, 2147483648, 4] overflows"));
  // The element count fits but the byte count does not.
  EXPECT_THAT(parse_error(one_tensor({1ull << 31, 1ull << 31}).b), HasSubstr("overflows"));
}

TEST(GgufMalformed, TensorTypes) {
  EXPECT_EQ(parse_error(one_tensor({4}, 99).b), "<buffer>: tensor w: unknown tensor type id 99");
  EXPECT_THAT(parse_error(one_tensor({256}, kQ8_K).b),
              HasSubstr("tensor w: type Q8_K cannot be stored in a file"));
  EXPECT_THAT(parse_error(one_tensor({33}, kQ8_0).b),
              HasSubstr("tensor w: ne[0] = 33 is not a multiple of the Q8_0 block size 32"));
  EXPECT_NO_THROW(parse(one_tensor({32}, kQ8_0, 0, 34).b));
}

TEST(GgufMalformed, OffsetsMustBeAligned) {
  EXPECT_EQ(parse_error(one_tensor({4}, kF32, 4, 32).b),
            "<buffer>: tensor w: offset 4 is not a multiple of the alignment 32");
}

TEST(GgufMalformed, DataPastTheEndOfTheFile) {
  Raw r = one_tensor({4}, kF32, 0, 15);
  const uint64_t start = r.b.size() - 15;
  EXPECT_EQ(parse_error(r.b),
            fmt::format("<buffer>: tensor w: data [offset {}, size 16] runs past the end of the "
                        "file ({} bytes)",
                        start, r.b.size()));
  // Offsets near 2^64 must not wrap around into the file.
  EXPECT_THAT(parse_error(one_tensor({4}, kF32, ~0ull - 31).b), HasSubstr("runs past the end"));
  EXPECT_THAT(parse_error(one_tensor({4}, kF32, 1ull << 62).b), HasSubstr("runs past the end"));
  // Tensor infos that end exactly at the end of the file, without padding.
  Raw nopad;
  nopad.header(1, 0).tensor("w", {4}, kF32, 0);
  EXPECT_THAT(parse_error(nopad.b), HasSubstr("runs past the end"));
}

TEST(GgufMalformed, OverlappingTensors) {
  Raw r;
  r.header(2, 0).tensor("a", {16}, kF32, 0).tensor("b", {4}, kF32, 32).pad(32).zeros(64);
  const std::string msg = parse_error(r.b);
  EXPECT_THAT(msg, HasSubstr("tensors a and b overlap"));
  Raw same;
  same.header(2, 0).tensor("a", {4}, kF32, 32).tensor("b", {4}, kF32, 32).pad(32).zeros(64);
  EXPECT_THAT(parse_error(same.b), HasSubstr("overlap"));
  Raw adjacent;
  adjacent.header(2, 0).tensor("a", {8}, kF32, 0).tensor("b", {4}, kF32, 32).pad(32).zeros(48);
  EXPECT_NO_THROW(parse(adjacent.b));
}

// Cutting a valid file anywhere before the end of its last tensor is an error, never a crash;
// each prefix is a fresh allocation of exactly that size so AddressSanitizer sees overreads.
TEST(GgufMalformed, EveryTruncationIsAnError) {
  TempDir dir;
  const auto s = ggtest::make_sample();
  ggtest::write_sample(s, dir.file("full.gguf"));
  const std::vector<uint8_t> full = ggtest::read_bytes(dir.file("full.gguf"));
  const File f = File::parse(full);
  const TensorInfo& last = f.tensors().back();
  const size_t end_of_data = f.data_offset() + last.offset + last.nbytes;
  ASSERT_LT(end_of_data, full.size()) << "the sample should end with padding";
  for (size_t n = 0; n < end_of_data; ++n) {
    const std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_THROW(File::parse(cut), Error) << "prefix of " << n << " bytes";
  }
  // Trailing padding after the last tensor is optional.
  for (size_t n = end_of_data; n <= full.size(); ++n) {
    const std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_NO_THROW(File::parse(cut)) << "prefix of " << n << " bytes";
  }
}

// Flipping any single header byte must give a valid file or a ds4::Error, never a crash.
TEST(GgufMalformed, EveryHeaderByteCorruptionIsHandled) {
  TempDir dir;
  ggtest::write_sample(ggtest::make_sample(), dir.file("full.gguf"));
  const std::vector<uint8_t> full = ggtest::read_bytes(dir.file("full.gguf"));
  const size_t header_end = File::parse(full).data_offset();
  int errors = 0;
  for (size_t i = 0; i < header_end; ++i) {
    for (uint8_t x : {0x01, 0x80, 0xff}) {
      std::vector<uint8_t> bad = full;
      bad[i] ^= x;
      try {
        File::parse(bad);
      } catch (const Error&) {
        ++errors;
      }
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(GgufMalformed, OpenNamesThePath) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { File::open(dir.file("missing.gguf")); }),
              HasSubstr("cannot open " + dir.file("missing.gguf")));
  EXPECT_THAT(error_of([&] { File::open(dir.file("")); }), HasSubstr("is not a regular file"));
  ggtest::write_bytes(dir.file("empty.gguf"), {});
  EXPECT_THAT(error_of([&] { File::open(dir.file("empty.gguf")); }),
              StartsWith(dir.file("empty.gguf") + ": truncated file"));
  Raw r = one_tensor();
  r.b[0] = 'X';
  ggtest::write_bytes(dir.file("bad.gguf"), r.b);
  EXPECT_THAT(error_of([&] { File::open(dir.file("bad.gguf")); }),
              StartsWith(dir.file("bad.gguf") + ": not a GGUF file"));
}

}  // namespace
}  // namespace ds4::gguf
