#include "quality/tensor_error.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "convert/model_config.h"
#include "convert/safetensors.h"
#include "convert/source_decode.h"
#include "convert/tensor_plan.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "quant/quant.h"

namespace ds4::quality {

using convert::Role;

double ErrorSums::rel_rms() const {
  if (sum_w2 == 0) return sum_d2 == 0 ? 0 : INFINITY;
  return std::sqrt(sum_d2 / sum_w2);
}

void ErrorSums::add(const ErrorSums& o) {
  n += o.n;
  sum_d2 += o.sum_d2;
  sum_w2 += o.sum_w2;
  max_abs = std::max(max_abs, o.max_abs);
}

namespace {

const char* role_label(Role r) {
  switch (r) {
    case Role::Embedding: return "embedding";
    case Role::Output: return "output";
    case Role::Vector: return "vector";
    case Role::HcFn: return "hc_fn";
    case Role::AttnProj: return "attn_proj";
    case Role::Compressor: return "compressor";
    case Role::Indexer: return "indexer";
    case Role::Router: return "router";
    case Role::Tid2eid: return "tid2eid";
    case Role::SharedExpert: return "shared_expert";
    case Role::ExpertGate: return "expert_gate";
    case Role::ExpertUp: return "expert_up";
    case Role::ExpertDown: return "expert_down";
  }
  return "?";
}

const convert::StTensor* scale_of(const convert::Checkpoint& ck, const convert::StTensor& w) {
  if (w.dtype == convert::StDtype::F8_E4M3 || w.dtype == convert::StDtype::I8)
    return &ck.get(convert::scale_name(w.name));
  return nullptr;
}

// Rows [r0, r1) of source `s` against GGUF rows starting at `qrow` of `t`.
void compare_rows(const gguf::File& f, const gguf::TensorInfo& t, const convert::Checkpoint& ck,
                  const convert::StTensor& s, int64_t qrow, ThreadPool& pool, ErrorSums& total) {
  const convert::StTensor* scale = scale_of(ck, s);
  const int64_t rows = convert::logical_rows(s), cols = convert::logical_cols(s);
  const size_t rb = row_bytes(t.type, cols);
  const uint8_t* base = f.tensor_data(t);
  std::mutex mu;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1));
  parallel_for(&pool, rows, grain, [&](int64_t b, int64_t e, int) {
    std::vector<float> w(static_cast<size_t>((e - b) * cols)), q(static_cast<size_t>(cols));
    convert::decode_rows(s, scale, b, e, w.data());
    ErrorSums acc;
    for (int64_t r = b; r < e; ++r) {
      quant::dequantize_row(t.type, base + static_cast<size_t>(qrow + r) * rb, q.data(), cols);
      const float* wr = w.data() + (r - b) * cols;
      for (int64_t c = 0; c < cols; ++c) {
        const double d = static_cast<double>(q[c]) - wr[c];
        acc.sum_d2 += d * d;
        acc.sum_w2 += static_cast<double>(wr[c]) * wr[c];
        acc.max_abs = std::max(acc.max_abs, std::abs(d));
      }
      acc.n += cols;
    }
    std::lock_guard<std::mutex> lock(mu);
    total.add(acc);
  });
  ck.release(s);
  if (scale) ck.release(*scale);
}

void compare_tid2eid(const gguf::File& f, const gguf::TensorInfo& t, const convert::StTensor& s,
                     uint32_t n_experts, ErrorSums& e) {
  std::vector<int32_t> want(static_cast<size_t>(s.numel()));
  convert::decode_tid2eid(s, n_experts, want.data());
  if (static_cast<uint64_t>(want.size()) * 4 != t.nbytes || t.type != GgmlType::I32)
    fail("tensor {}: expected I32 with {} elements, found {} {}", t.name, want.size(),
         type_name(t.type), t.shape_string());
  const auto* got = reinterpret_cast<const int32_t*>(f.tensor_data(t));
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    e.sum_d2 += d * d;
    e.sum_w2 += static_cast<double>(want[i]) * want[i];
    e.max_abs = std::max(e.max_abs, std::abs(d));
  }
  e.n += static_cast<int64_t>(want.size());
}

template <typename K>
void group_add(std::vector<std::pair<K, ErrorSums>>& g, const K& key, const ErrorSums& e) {
  auto it = std::find_if(g.begin(), g.end(), [&](const auto& p) { return p.first == key; });
  if (it == g.end()) g.emplace_back(key, e);
  else it->second.add(e);
}

}  // namespace

TensorReport tensor_errors(const gguf::File& f, const std::string& dir, int threads) {
  namespace fs = std::filesystem;
  const convert::ModelConfig cfg = convert::load_model_config((fs::path(dir) / "config.json").string());
  convert::Checkpoint ck(dir);
  const auto plan = convert::build_plan(cfg);
  convert::validate_checkpoint(plan, cfg, ck);
  ThreadPool pool(threads);
  TensorReport rep;
  for (const convert::PlannedTensor& p : plan) {
    const gguf::TensorInfo* t = f.find_tensor(p.name);
    if (!t) fail("{}: missing tensor {} (is it a conversion of {}?)", f.path(), p.name, dir);
    if (t->ne != p.ne)
      fail("tensor {}: the checkpoint implies shape {}, the GGUF has {}", p.name,
           gguf::TensorInfo{.name = "", .ne = p.ne}.shape_string(), t->shape_string());
    TensorError te{p.name, role_label(p.role), std::string(type_name(t->type)), p.layer, {}};
    if (p.role == Role::Tid2eid) {
      compare_tid2eid(f, *t, ck.get(p.sources[0]), cfg.n_experts, te.err);
    } else {
      int64_t qrow = 0;
      for (const std::string& src : p.sources) {
        const convert::StTensor& s = ck.get(src);
        if (convert::logical_cols(s) != t->ne[0])
          fail("tensor {}: source {} has rows of {} elements, the GGUF {}", p.name, src,
               convert::logical_cols(s), t->ne[0]);
        compare_rows(f, *t, ck, s, qrow, pool, te.err);
        qrow += convert::logical_rows(s);
      }
    }
    group_add(rep.by_role, te.role, te.err);
    group_add(rep.by_layer, te.layer, te.err);
    group_add(rep.by_type, te.type, te.err);
    rep.tensors.push_back(std::move(te));
  }
  std::stable_sort(rep.by_layer.begin(), rep.by_layer.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  return rep;
}

std::string to_text(const TensorReport& r) {
  std::string s = fmt::format("{:<44} {:<14} {:<8} {:>12} {:>12} {:>12}\n", "tensor", "role", "type",
                              "elements", "rel_rms", "max_abs");
  for (const auto& t : r.tensors)
    s += fmt::format("{:<44} {:<14} {:<8} {:>12} {:>12.4e} {:>12.4e}\n", t.name, t.role, t.type,
                     t.err.n, t.err.rel_rms(), t.err.max_abs);
  s += "\nby role:\n";
  for (const auto& [k, e] : r.by_role)
    s += fmt::format("  {:<16} {:>14} elements  rel_rms {:.4e}  max_abs {:.4e}\n", k, e.n, e.rel_rms(), e.max_abs);
  s += "by type:\n";
  for (const auto& [k, e] : r.by_type)
    s += fmt::format("  {:<16} {:>14} elements  rel_rms {:.4e}  max_abs {:.4e}\n", k, e.n, e.rel_rms(), e.max_abs);
  s += "by layer:\n";
  for (const auto& [k, e] : r.by_layer)
    s += fmt::format("  {:<16} {:>14} elements  rel_rms {:.4e}  max_abs {:.4e}\n",
                     k < 0 ? std::string("global") : fmt::format("layer {}", k), e.n, e.rel_rms(), e.max_abs);
  return s;
}

namespace {
nlohmann::json sums_json(const ErrorSums& e) {
  return {{"elements", e.n}, {"rel_rms", e.rel_rms()}, {"max_abs", e.max_abs}};
}
}  // namespace

std::string to_json(const TensorReport& r) {
  nlohmann::json j;
  j["tensors"] = nlohmann::json::array();
  for (const auto& t : r.tensors) {
    auto o = sums_json(t.err);
    o["name"] = t.name;
    o["role"] = t.role;
    o["type"] = t.type;
    o["layer"] = t.layer;
    j["tensors"].push_back(o);
  }
  for (const auto& [k, e] : r.by_role) j["by_role"][k] = sums_json(e);
  for (const auto& [k, e] : r.by_type) j["by_type"][k] = sums_json(e);
  j["by_layer"] = nlohmann::json::array();
  for (const auto& [k, e] : r.by_layer) {
    auto o = sums_json(e);
    o["layer"] = k;
    j["by_layer"].push_back(o);
  }
  return j.dump(2);
}

std::string to_csv(const TensorReport& r) {
  std::string s = "tensor,role,type,layer,elements,rel_rms,max_abs\n";
  for (const auto& t : r.tensors)
    s += fmt::format("{},{},{},{},{},{:.9g},{:.9g}\n", t.name, t.role, t.type, t.layer, t.err.n,
                     t.err.rel_rms(), t.err.max_abs);
  return s;
}

}  // namespace ds4::quality
