// Model loading rejects files that do not match the DeepSeek V4 layout with messages that
// name the key or tensor.
#include <gtest/gtest.h>

#include "e2e_util.h"
#include "gguf/gguf.h"

namespace {

namespace fs = std::filesystem;

// Copies `src` to `dst` with the tensor `name` replaced by F32 zeros of shape `ne` (or dropped
// when ne is empty).
void rewrite(const std::string& src, const std::string& dst, const std::string& name,
             const std::vector<int64_t>& ne) {
  const auto in = ds4::gguf::File::open(src);
  ds4::gguf::Writer w(dst);
  for (const auto& kv : in.metadata())
    if (kv.key != "general.alignment") w.add_kv(kv.key, kv.value);
  for (const auto& t : in.tensors()) {
    if (t.name != name) w.add_tensor(t.name, t.type, t.ne);
    else if (!ne.empty()) w.add_tensor(t.name, ds4::GgmlType::F32, ne);
  }
  w.begin_data();
  for (const auto& t : in.tensors()) {
    if (t.name != name) {
      w.write_tensor_data(in.tensor_data(t), t.nbytes);
    } else if (!ne.empty()) {
      int64_t n = 1;
      for (int64_t d : ne) n *= d;
      const std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
      w.write_tensor_data(zeros.data(), zeros.size() * 4);
    }
  }
  w.finish();
}

std::string load_error(const std::string& path) {
  try {
    ds4::model::Model::load(path, {.threads = 1});
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Load, NamesTheTensorOnShapeOrPresenceErrors) {
  const std::string src = e2e::converted("dsv4-tiny-a-bf16", "bf16");
  const std::string tmp = (fs::temp_directory_path() / ("ds4-load-" + std::to_string(getpid()) + ".gguf")).string();

  rewrite(src, tmp, "blk.3.attn_q_b.weight", {64, 128});
  std::string e = load_error(tmp);
  EXPECT_NE(e.find("tensor blk.3.attn_q_b.weight: expected shape [64, 256], found F32 [64, 128]"),
            std::string::npos) << e;

  rewrite(src, tmp, "blk.2.indexer.proj.weight", {});
  e = load_error(tmp);
  EXPECT_NE(e.find("missing tensor blk.2.indexer.proj.weight"), std::string::npos) << e;

  rewrite(src, tmp, "blk.0.ffn_gate_tid2eid.weight", {4, 512});
  e = load_error(tmp);
  EXPECT_NE(e.find("tensor blk.0.ffn_gate_tid2eid.weight: expected I32"), std::string::npos) << e;
  fs::remove(tmp);

  // The untouched file loads, and reads every size from its metadata.
  const auto m = ds4::model::Model::load(src, {.threads = 1});
  EXPECT_EQ(m.hparams().n_layers, 6);
  EXPECT_EQ(m.hparams().compress_ratio, (std::vector<uint32_t>{0, 0, 4, 16, 4, 16}));
  EXPECT_EQ(m.hparams().idx_dim, 32);
  EXPECT_TRUE(m.weights().layers[2].has_indexer);
  EXPECT_FALSE(m.weights().layers[3].has_indexer);
}

}  // namespace
