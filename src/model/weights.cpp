#include "model/weights.h"

#include <fmt/format.h>

#include <cstring>
#include <initializer_list>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "gguf/gguf.h"
#include "quant/quant.h"

namespace ds4::model {
namespace {

// Weight types the CPU kernels multiply directly (formats.md 2.0).
bool is_matrix_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
    case GgmlType::Q2_K: case GgmlType::Q4_K: case GgmlType::IQ2_XXS: case GgmlType::MXFP4:
      return true;
    default:
      return false;
  }
}

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", ne[i]);
  return s + "]";
}

class Binder {
 public:
  explicit Binder(const gguf::File& f) : f_(f) {}

  bool has(const std::string& name) const { return f_.find_tensor(name) != nullptr; }

  const gguf::TensorInfo& info(const std::string& name, const std::vector<int64_t>& ne) const {
    const gguf::TensorInfo* t = f_.find_tensor(name);
    if (!t) fail("missing tensor {} (expected shape {})", name, shape_str(ne));
    if (t->ne != ne)
      fail("tensor {}: expected shape {}, found {} {}", name, shape_str(ne), type_name(t->type),
           t->shape_string());
    return *t;
  }

  Tensor matrix(const std::string& name, const std::vector<int64_t>& ne) const {
    const gguf::TensorInfo& t = info(name, ne);
    if (!is_matrix_type(t.type))
      fail("tensor {}: type {} cannot be used as a weight matrix (expected one of F32, F16, "
           "BF16, Q8_0, Q2_K, Q4_K, IQ2_XXS, MXFP4)", name, type_name(t.type));
    Tensor out;
    out.name = name;
    out.type = t.type;
    out.ne = t.ne;
    out.data = f_.tensor_data(t);
    out.row_bytes = row_bytes(t.type, t.ne[0]);
    return out;
  }

  Tensor int32_table(const std::string& name, const std::vector<int64_t>& ne) const {
    const gguf::TensorInfo& t = info(name, ne);
    if (t.type != GgmlType::I32)
      fail("tensor {}: expected I32 {}, found {} {}", name, shape_str(ne), type_name(t.type),
           t.shape_string());
    Tensor out;
    out.name = name;
    out.type = t.type;
    out.ne = t.ne;
    out.data = f_.tensor_data(t);
    out.row_bytes = static_cast<size_t>(t.ne[0]) * 4;
    return out;
  }

  // A small float tensor converted to float32 (norm weights, biases, HC parameters).
  std::vector<float> vec(const std::string& name, const std::vector<int64_t>& ne) const {
    const gguf::TensorInfo& t = info(name, ne);
    // Any stored weight type is accepted (a q8 recipe quantizes position biases too); the
    // values are decoded once here.
    if (!is_matrix_type(t.type))
      fail("tensor {}: expected a float or quantized type {}, found {} {}", name, shape_str(ne),
           type_name(t.type), t.shape_string());
    std::vector<float> out(static_cast<size_t>(t.n_elements()));
    quant::dequantize_row(t.type, f_.tensor_data(t), out.data(), t.n_elements());
    return out;
  }

 private:
  const gguf::File& f_;
};

HcWeights bind_hc(const Binder& b, const std::string& prefix, const HParams& hp, int64_t n_mix,
                  int64_t n_scale) {
  HcWeights w;
  w.fn = b.matrix(prefix + "_fn.weight", {hp.n_hc * hp.n_embd, n_mix});
  w.base = b.vec(prefix + "_base.weight", {n_mix});
  w.scale = b.vec(prefix + "_scale.weight", {n_scale});
  return w;
}

CompressorWeights bind_compressor(const Binder& b, const std::string& prefix, const HParams& hp,
                                  int64_t d, uint32_t ratio, int64_t c) {
  CompressorWeights w;
  w.d = d;
  w.c = c;
  w.kv = b.matrix(prefix + "_kv.weight", {hp.n_embd, c * d});
  w.gate = b.matrix(prefix + "_gate.weight", {hp.n_embd, c * d});
  w.ape = b.vec(prefix + "_ape.weight", {c * d, static_cast<int64_t>(ratio)});
  w.norm = b.vec(prefix + "_norm.weight", {d});
  return w;
}

}  // namespace

void linear(const Tensor& W, const float* X, int64_t nb, float* Y, ThreadPool* pool) {
  linear_rows(W, 0, 0, W.rows(), X, nb, Y, pool);
}

void linear_rows(const Tensor& W, int64_t slab, int64_t row0, int64_t nrows, const float* X,
                 int64_t nb, float* Y, ThreadPool* pool) {
  const uint8_t* w = W.slab(slab) + static_cast<size_t>(row0) * W.row_bytes;
  if (nb == 1)
    cpu::matvec(W.type, w, nrows, W.cols(), X, Y, pool);
  else if (nb > 1)
    cpu::matmul(W.type, w, nrows, W.cols(), X, nb, Y, pool);
}

ModelWeights ModelWeights::bind(const gguf::File& f, const HParams& hp) {
  Binder b(f);
  ModelWeights m;
  const int64_t E = hp.n_embd;
  m.tok_embd = b.matrix("token_embd.weight", {E, hp.n_vocab});
  m.output = b.matrix("output.weight", {E, hp.n_vocab});
  m.output_norm = b.vec("output_norm.weight", {E});
  m.hc_head = bind_hc(b, "output_hc", hp, hp.n_hc, 1);

  const int64_t n_mix = (2 + hp.n_hc) * hp.n_hc;  // pre, post, comb (architecture.md 3.2)
  const int64_t HD = hp.n_head * hp.head_dim;
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const std::string p = fmt::format("blk.{}.", il);
    LayerWeights L;
    L.il = il;
    L.ratio = hp.compress_ratio[static_cast<size_t>(il)];
    L.hc_attn = bind_hc(b, p + "hc_attn", hp, n_mix, 3);
    L.hc_ffn = bind_hc(b, p + "hc_ffn", hp, n_mix, 3);
    L.attn_norm = b.vec(p + "attn_norm.weight", {E});
    L.q_a = b.matrix(p + "attn_q_a.weight", {E, hp.q_lora});
    L.q_a_norm = b.vec(p + "attn_q_a_norm.weight", {hp.q_lora});
    L.q_b = b.matrix(p + "attn_q_b.weight", {hp.q_lora, HD});
    L.kv = b.matrix(p + "attn_kv.weight", {E, hp.head_dim});
    L.kv_norm = b.vec(p + "attn_kv_a_norm.weight", {hp.head_dim});
    L.sinks = b.vec(p + "attn_sinks.weight", {hp.n_head});
    L.out_a = b.matrix(p + "attn_output_a.weight", {HD / hp.o_groups, hp.o_groups * hp.o_lora});
    L.out_b = b.matrix(p + "attn_output_b.weight", {hp.o_groups * hp.o_lora, E});

    if (L.ratio > 0) {
      // Overlapped windows (c = 2) show in the projection width; those layers carry the
      // indexer (architecture.md 1.2: ratio-4 CSA layers), the others see every row (HCA).
      const gguf::TensorInfo* ckv = f.find_tensor(p + "attn_compressor_kv.weight");
      if (!ckv) fail("missing tensor {}attn_compressor_kv.weight (layer {} has compress ratio {})", p, il, L.ratio);
      const int64_t width = ckv->ne.size() == 2 ? ckv->ne[1] : 0;
      if (width != hp.head_dim && width != 2 * hp.head_dim)
        fail("tensor {}: expected shape [{}, {}] or [{}, {}], found {} {}", ckv->name, E,
             hp.head_dim, E, 2 * hp.head_dim, type_name(ckv->type), ckv->shape_string());
      const int64_t c = width / hp.head_dim;
      L.comp = bind_compressor(b, p + "attn_compressor", hp, hp.head_dim, L.ratio, c);
      L.has_indexer = c == 2;
      if (L.has_indexer) {
        L.idx_comp = bind_compressor(b, p + "indexer_compressor", hp, hp.idx_dim, L.ratio, 2);
        L.idx_q_b = b.matrix(p + "indexer.attn_q_b.weight", {hp.q_lora, hp.idx_head * hp.idx_dim});
        L.idx_proj = b.matrix(p + "indexer.proj.weight", {E, hp.idx_head});
      }
    }

    L.ffn_norm = b.vec(p + "ffn_norm.weight", {E});
    L.router = b.matrix(p + "ffn_gate_inp.weight", {E, hp.n_expert});
    if (hp.is_hash_layer(il)) {
      L.tid2eid = b.int32_table(p + "ffn_gate_tid2eid.weight", {hp.n_expert_used, hp.n_vocab});
      const int32_t* ids = reinterpret_cast<const int32_t*>(L.tid2eid.data);
      const int64_t n = hp.n_expert_used * hp.n_vocab;
      for (int64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= hp.n_expert)
          fail("tensor {}: entry {} is expert {}, outside [0, {})", L.tid2eid.name, i, ids[i], hp.n_expert);
    } else if (b.has(p + "exp_probs_b.bias")) {
      L.router_bias = b.vec(p + "exp_probs_b.bias", {hp.n_expert});
    } else {
      L.router_bias.assign(static_cast<size_t>(hp.n_expert), 0.0f);
    }
    L.gate_exps = b.matrix(p + "ffn_gate_exps.weight", {E, hp.n_ff_exp, hp.n_expert});
    L.up_exps = b.matrix(p + "ffn_up_exps.weight", {E, hp.n_ff_exp, hp.n_expert});
    L.down_exps = b.matrix(p + "ffn_down_exps.weight", {hp.n_ff_exp, E, hp.n_expert});
    if (hp.n_expert_shared > 0) {
      L.gate_shexp = b.matrix(p + "ffn_gate_shexp.weight", {E, hp.n_ff_exp});
      L.up_shexp = b.matrix(p + "ffn_up_shexp.weight", {E, hp.n_ff_exp});
      L.down_shexp = b.matrix(p + "ffn_down_shexp.weight", {hp.n_ff_exp, E});
    }
    m.layers.push_back(std::move(L));
  }
  return m;
}

}  // namespace ds4::model
