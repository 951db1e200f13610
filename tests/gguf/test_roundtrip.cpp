#include <filesystem>
#include <set>

#include "gguf/sample_file.h"

namespace ds4::gguf {
namespace {

using ::testing::HasSubstr;
using ggtest::error_of;
using ggtest::make_sample;
using ggtest::read_bytes;
using ggtest::Sample;
using ggtest::TempDir;
using ggtest::write_sample;

void expect_matches(const File& f, const Sample& s) {
  ASSERT_EQ(f.tensors().size(), s.tensors.size());
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    const auto& want = s.tensors[i];
    const TensorInfo& got = f.tensors()[i];
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(got.type, want.type) << want.name;
    EXPECT_EQ(got.ne, want.ne) << want.name;
    ASSERT_EQ(got.nbytes, want.data.size()) << want.name;
    EXPECT_EQ(got.offset % f.alignment(), 0u) << want.name;
    EXPECT_EQ(&f.tensor(want.name), &got);
    const uint8_t* p = f.tensor_data(got);
    EXPECT_TRUE(std::equal(want.data.begin(), want.data.end(), p)) << want.name;
  }
  for (const auto& kv : s.metadata) {
    const Value* v = f.find(kv.key);
    ASSERT_NE(v, nullptr) << kv.key;
    EXPECT_TRUE(*v == kv.value) << kv.key;
  }
}

TEST(GgufRoundTrip, EveryValueTypeAndTensorTypeReadsBackBitExactly) {
  TempDir dir;
  const std::string path = dir.file("rt.gguf");
  const Sample s = make_sample();
  write_sample(s, path);
  const File f = File::open(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  // Metadata keep file order, and nothing was added at the default alignment.
  ASSERT_EQ(f.metadata().size(), s.metadata.size());
  for (size_t i = 0; i < s.metadata.size(); ++i) EXPECT_EQ(f.metadata()[i].key, s.metadata[i].key);
  expect_matches(f, s);
}

TEST(GgufRoundTrip, SampleCoversEveryStorableTensorType) {
  const Sample s = make_sample();
  std::set<GgmlType> used;
  for (const auto& t : s.tensors) used.insert(t.type);
  for (uint32_t id = 0; id < 64; ++id) {
    const TypeTraits* tr = type_traits(id);
    if (tr && tr->storable) {
      EXPECT_TRUE(used.count(tr->type)) << tr->name;
    }
  }
  std::set<ValueType> kinds;
  for (const auto& kv : s.metadata) {
    kinds.insert(kv.value.type());
    if (kv.value.type() == ValueType::ARRAY) kinds.insert(kv.value.array_elem_type());
  }
  EXPECT_EQ(kinds.size(), 13u);
}

TEST(GgufRoundTrip, LayoutIsPackedAlignedAndZeroPadded) {
  TempDir dir;
  const std::string path = dir.file("layout.gguf");
  const Sample s = make_sample();
  {
    Writer w(path);
    for (const auto& kv : s.metadata) w.add_kv(kv.key, kv.value);
    for (const auto& t : s.tensors) w.add_tensor(t.name, t.type, t.ne);
    const uint64_t predicted = w.total_bytes();
    w.begin_data();
    for (const auto& t : s.tensors) w.write_tensor_data(t.data.data(), t.data.size());
    w.finish();
    EXPECT_EQ(predicted, std::filesystem::file_size(path));
    EXPECT_EQ(w.total_bytes(), predicted);
  }
  const std::vector<uint8_t> bytes = read_bytes(path);
  const File f = File::parse(bytes);
  EXPECT_EQ(f.path(), "<buffer>");
  EXPECT_EQ(f.bytes().size(), bytes.size());
  // Offsets are the running sum of padded sizes (formats.md 1.1) and every gap is zero.
  uint64_t expect_offset = 0;
  std::vector<bool> covered(bytes.size(), false);
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(t.offset, expect_offset) << t.name;
    expect_offset += (t.nbytes + 31) / 32 * 32;
    for (uint64_t i = 0; i < t.nbytes; ++i) covered[f.data_offset() + t.offset + i] = true;
  }
  EXPECT_EQ(f.data_offset() + expect_offset, bytes.size());
  for (size_t i = f.data_offset(); i < bytes.size(); ++i)
    if (!covered[i]) {
      ASSERT_EQ(bytes[i], 0) << "padding byte " << i;
    }
}

TEST(GgufRoundTrip, StreamingInPiecesGivesTheSameFile) {
  TempDir dir;
  const Sample s = make_sample(11);
  write_sample(s, dir.file("whole.gguf"));
  write_sample(s, dir.file("pieces.gguf"), 32, 3, 7);
  EXPECT_EQ(read_bytes(dir.file("whole.gguf")), read_bytes(dir.file("pieces.gguf")));
}

TEST(GgufRoundTrip, Version2IsAccepted) {
  TempDir dir;
  const Sample s = make_sample();
  write_sample(s, dir.file("v2.gguf"), 32, 2);
  const File f = File::open(dir.file("v2.gguf"));
  EXPECT_EQ(f.version(), 2u);
  expect_matches(f, s);
}

TEST(GgufRoundTrip, NonDefaultAlignmentIsRecordedInGeneralAlignment) {
  TempDir dir;
  const Sample s = make_sample();
  for (uint32_t align : {1u, 64u, 4096u}) {
    const std::string path = dir.file(fmt::format("a{}.gguf", align));
    write_sample(s, path, align);
    const File f = File::open(path);
    EXPECT_EQ(f.alignment(), align);
    EXPECT_EQ(f.data_offset() % align, 0u);
    if (align != 32) {
      EXPECT_EQ(f.get_u32("general.alignment"), align);
    }
    expect_matches(f, s);
  }
}

TEST(GgufRoundTrip, ExplicitGeneralAlignmentMustMatchTheWriter) {
  TempDir dir;
  {
    Writer w(dir.file("ok.gguf"), 64);
    w.add_kv("general.alignment", Value::u32(64));
    w.finish();
    const File f = File::open(dir.file("ok.gguf"));
    EXPECT_EQ(f.alignment(), 64u);
    EXPECT_EQ(f.metadata().size(), 1u);
  }
  Writer w(dir.file("bad.gguf"), 64);
  w.add_kv("general.alignment", Value::u64(64));
  EXPECT_THAT(error_of([&] { w.begin_data(); }), HasSubstr("general.alignment must be UINT32 64"));
}

TEST(GgufRoundTrip, EmptyFileHasOnlyAHeader) {
  TempDir dir;
  Writer w(dir.file("empty.gguf"));
  w.finish();
  const File f = File::open(dir.file("empty.gguf"));
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.data_offset(), 32u);
}

}  // namespace
}  // namespace ds4::gguf

namespace ds4::gguf {
namespace {

// The fuzzing seeds must stay valid files, or the fuzzer starts from nothing but errors.
TEST(GgufCorpus, SeedFilesAreValidAndSmall) {
  const std::filesystem::path dir = std::filesystem::path(DS4_SOURCE_DIR) / "fuzz/corpus/gguf";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto bytes = ggtest::read_bytes(e.path().string());
    EXPECT_LT(bytes.size(), 4096u) << e.path();
    EXPECT_NO_THROW(File::parse(bytes)) << e.path();
    ++n;
  }
  EXPECT_GE(n, 3);
}

}  // namespace
}  // namespace ds4::gguf
