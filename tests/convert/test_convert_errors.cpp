// Malformed checkpoints are refused with a message naming the problem, and no output file is
// left behind.
#include <gtest/gtest.h>

#include <cstring>

#include "convert/convert.h"
#include "core/error.h"
#include "convert/model_config.h"
#include "convert_test_util.h"

namespace ds4::convert {
namespace {

using namespace testing;

// Converts `dir` and expects ds4::Error whose message contains every one of `needles`.
void expect_refused(const std::string& dir, std::initializer_list<std::string> needles,
                    const std::string& recipe = "f32") {
  TempDir out;
  ConvertOptions o;
  o.input_dir = dir;
  o.output_path = out.file("out.gguf");
  o.recipe = recipe;
  o.threads = 1;
  try {
    convert_checkpoint(o);
    ADD_FAILURE() << "conversion of " << dir << " succeeded";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const std::string& n : needles) EXPECT_NE(m.find(n), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(o.output_path));
  EXPECT_FALSE(fs::exists(o.output_path + ".tmp"));
}

class Broken : public ::testing::Test {
 protected:
  void SetUp() override {
    static const EditableCheckpoint bf16 = EditableCheckpoint::load(fixture("dsv4-tiny-a-bf16"));
    static const EditableCheckpoint fp8 = EditableCheckpoint::load(fixture("dsv4-tiny-a-fp8"));
    ck = bf16;
    ck8 = fp8;
  }
  std::string write(const EditableCheckpoint& c) {
    const std::string d = tmp.file("ck" + std::to_string(n++));
    c.write(d);
    return d;
  }
  TempDir tmp;
  EditableCheckpoint ck, ck8;
  int n = 0;
};

TEST_F(Broken, CopyConvertsCleanly) {
  // The helper itself round-trips: an unmodified copy converts.
  TempDir out;
  ConvertOptions o;
  o.input_dir = write(ck8);
  o.output_path = out.file("ok.gguf");
  o.recipe = "bf16";
  convert_checkpoint(o);
  EXPECT_TRUE(fs::exists(o.output_path));
}

TEST_F(Broken, MissingConfig) {
  const std::string d = write(ck);
  fs::remove(d + "/config.json");
  expect_refused(d, {"config.json"});
}

TEST_F(Broken, MissingInputDirectory) { expect_refused(tmp.file("nope"), {"nope"}); }

TEST_F(Broken, MissingTensor) {
  ck.tensors.erase("layers.3.attn.wq_b.weight");
  expect_refused(write(ck), {"missing tensor layers.3.attn.wq_b.weight", "blk.3.attn_q_b.weight",
                             "[256, 64]"});
}

TEST_F(Broken, MissingExpert) {
  ck.tensors.erase("layers.4.ffn.experts.11.w2.weight");
  expect_refused(write(ck), {"layers.4.ffn.experts.11.w2.weight", "blk.4.ffn_down_exps.weight"});
}

TEST_F(Broken, WrongShape) {
  RawTensor& t = ck.tensors.at("layers.2.attn.wkv.weight");
  t.shape = {32, 128};
  t.bytes.resize(32 * 128 * 2);
  expect_refused(write(ck), {"layers.2.attn.wkv.weight", "[64, 128]", "BF16 [32, 128]"});
}

TEST_F(Broken, ConfigInconsistentWithTensors) {
  ck.config["o_lora_rank"] = 16;
  expect_refused(write(ck), {"layers.0.attn.wo_a.weight", "[32, 128]", "[64, 128]"});
}

TEST_F(Broken, UnknownDtype) {
  ck.tensors.at("norm.weight").dtype = "F64";
  ck.tensors.at("norm.weight").bytes.resize(128 * 8);
  expect_refused(write(ck), {"norm.weight", "F64"});
}

TEST_F(Broken, DtypeNotAcceptedForRole) {
  RawTensor& t = ck.tensors.at("layers.1.attn_norm.weight");
  t.dtype = "I64";
  t.bytes.resize(128 * 8);
  expect_refused(write(ck), {"layers.1.attn_norm.weight", "float", "I64 [128]"});
  RawTensor& id = ck8.tensors.at("layers.0.ffn.gate.tid2eid");
  id.dtype = "F32";
  id.bytes.resize(512 * 4 * 4);
  expect_refused(write(ck8), {"layers.0.ffn.gate.tid2eid", "integer"});
}

TEST_F(Broken, UnexpectedTensor) {
  ck.tensors["layers.0.attn.extra_bias"] = RawTensor{"F32", {4}, std::vector<uint8_t>(16)};
  expect_refused(write(ck), {"layers.0.attn.extra_bias", "unexpected"});
}

TEST_F(Broken, Fp8WithoutScale) {
  ck8.tensors.erase("layers.0.attn.wq_a.scale");
  expect_refused(write(ck8), {"layers.0.attn.wq_a.scale", "FP8"});
}

TEST_F(Broken, Fp4ScaleWrongShape) {
  RawTensor& s = ck8.tensors.at("layers.1.ffn.experts.3.w1.scale");
  s.shape = {32, 2};
  s.bytes.resize(64);
  expect_refused(write(ck8), {"layers.1.ffn.experts.3.w1.scale", "[32, 4]"});
}

TEST_F(Broken, Tid2eidOutOfRange) {
  RawTensor& t = ck.tensors.at("layers.1.ffn.gate.tid2eid");
  const int64_t bad = 16;
  std::memcpy(t.bytes.data() + 8 * 13, &bad, 8);
  expect_refused(write(ck), {"layers.1.ffn.gate.tid2eid", "16", "[0, 16)"});
}

TEST_F(Broken, TruncatedShard) {
  const std::string d = write(ck);
  const std::string shard = d + "/model-00001-of-00001.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 1000);
  expect_refused(d, {"model-00001-of-00001.safetensors", "truncated"});
}

TEST_F(Broken, TruncatedHeader) {
  const std::string d = write(ck);
  fs::resize_file(d + "/model-00001-of-00001.safetensors", 100);
  expect_refused(d, {"header length"});
}

TEST_F(Broken, CorruptHeaderJson) {
  const std::string d = write(ck);
  {
    std::fstream f(d + "/model-00001-of-00001.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("#", 1);
  }
  expect_refused(d, {"not valid JSON"});
}

TEST_F(Broken, IndexNamesMissingTensor) {
  const std::string d = write(ck);
  std::ifstream in(d + "/model.safetensors.index.json");
  auto j = nlohmann::json::parse(in);
  j["weight_map"]["layers.9.attn.ghost"] = "model-00001-of-00001.safetensors";
  std::ofstream(d + "/model.safetensors.index.json") << j.dump();
  expect_refused(d, {"layers.9.attn.ghost"});
}

TEST_F(Broken, ConfigErrors) {
  auto with = [&](const char* key, nlohmann::json v) {
    EditableCheckpoint c = ck;
    if (v.is_null())
      c.config.erase(key);
    else
      c.config[key] = v;
    return write(c);
  };
  expect_refused(with("hidden_size", nullptr), {"hidden_size", "missing"});
  expect_refused(with("unknown_switch", true), {"unknown_switch"});
  expect_refused(with("num_key_value_heads", 4), {"num_key_value_heads"});
  expect_refused(with("scoring_func", "softmax"), {"scoring_func"});
  expect_refused(with("compress_ratios", nlohmann::json::array({0, 4})), {"compress_ratios", "2 entries"});
  expect_refused(with("vocab_size", "512"), {"vocab_size", "integer"});
  EditableCheckpoint c = ck;
  c.config["rope_scaling"]["type"] = "linear";
  expect_refused(write(c), {"yarn"});
  const std::string d = write(ck);
  std::ofstream(d + "/config.json") << "{ not json";
  expect_refused(d, {"config.json", "not valid JSON"});
}

TEST_F(Broken, UnknownRecipe) {
  expect_refused(fixture("dsv4-tiny-a-bf16"), {"unknown recipe", "q3"}, "q3");
}

TEST_F(Broken, LoneModelSafetensorsWithoutIndex) {
  const std::string d = tmp.file("lone");
  ck.write(d, /*with_index=*/false);
  TempDir out;
  ConvertOptions o;
  o.input_dir = d;
  o.output_path = out.file("lone.gguf");
  o.recipe = "f32";
  convert_checkpoint(o);
  EXPECT_TRUE(fs::exists(o.output_path));
}

}  // namespace
}  // namespace ds4::convert
