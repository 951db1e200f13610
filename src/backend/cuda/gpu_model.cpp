#include "backend/cuda/gpu_model.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <random>

#include "backend/cuda/matvec.h"
#include "core/error.h"
#include "model/model.h"
#include "model/rope.h"

namespace ds4::cuda {
namespace {

double gib(size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0); }

// Every matrix of the model paired with its device slot, in file order of use.
void for_each_matrix(const model::ModelWeights& w, std::vector<DLayer>& dl, DTensor& tok, DTensor& out,
                     DHc& head, const std::function<void(const model::Tensor&, DTensor&)>& fn) {
  fn(w.tok_embd, tok);
  fn(w.hc_head.fn, head.fn);
  fn(w.output, out);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const model::LayerWeights& L = w.layers[i];
    DLayer& D = dl[i];
    fn(L.hc_attn.fn, D.hc_attn.fn);
    fn(L.hc_ffn.fn, D.hc_ffn.fn);
    fn(L.q_a, D.q_a);
    fn(L.q_b, D.q_b);
    fn(L.kv, D.kv);
    fn(L.out_a, D.out_a);
    fn(L.out_b, D.out_b);
    fn(L.comp.kv, D.comp.kv);
    fn(L.comp.gate, D.comp.gate);
    fn(L.idx_comp.kv, D.idx_comp.kv);
    fn(L.idx_comp.gate, D.idx_comp.gate);
    fn(L.idx_q_b, D.idx_q_b);
    fn(L.idx_proj, D.idx_proj);
    fn(L.router, D.router);
    fn(L.tid2eid, D.tid2eid);
    fn(L.gate_exps, D.gate_exps);
    fn(L.up_exps, D.up_exps);
    fn(L.down_exps, D.down_exps);
    fn(L.gate_shexp, D.gate_shexp);
    fn(L.up_shexp, D.up_shexp);
    fn(L.down_shexp, D.down_shexp);
  }
}

size_t tensor_bytes(const model::Tensor& t) {
  if (!t.present()) return 0;
  size_t n = t.row_bytes;
  for (size_t i = 1; i < t.ne.size(); ++i) n *= static_cast<size_t>(t.ne[i]);
  return n;
}

}  // namespace

const void* GpuModel::alloc(size_t bytes) {
  bufs_.emplace_back(bytes);
  bytes_ += bytes;
  return bufs_.back().data();
}

const float* GpuModel::floats(const std::vector<float>& v) {
  if (v.empty()) return nullptr;
  bufs_.emplace_back(v.size() * sizeof(float));
  bufs_.back().upload(v.data(), v.size() * sizeof(float));
  bytes_ += v.size() * sizeof(float);
  return bufs_.back().as<float>();
}

std::unique_ptr<GpuModel> GpuModel::upload(const model::Model& m, const UploadOptions& o) {
  std::unique_ptr<GpuModel> g(new GpuModel());
  g->dev_ = require_device(o.device);
  g->hp_ = m.hparams();
  const model::HParams& hp = g->hp_;
  const model::ModelWeights& w = m.weights();
  g->layers_.resize(w.layers.size());

  // Check the budget before allocating anything: the clear error, not an out-of-memory one.
  size_t total = 0;
  for_each_matrix(w, g->layers_, g->tok_embd_, g->output_, g->hc_head_,
                  [&](const model::Tensor& t, DTensor&) { total += tensor_bytes(t); });
  const size_t reserve = size_t(512) << 20;  // session state, scratch, CUDA context
  if (total + reserve > g->dev_.free_bytes)
    fail("--backend cuda: the model's weights need {:.2f} GiB of GPU memory (+0.5 GiB working "
         "space), but {} has {:.2f} GiB free of {:.2f} GiB",
         gib(total), g->dev_.name, gib(g->dev_.free_bytes), gib(g->dev_.total_bytes));

  const auto t0 = std::chrono::steady_clock::now();
  size_t done = 0, next_report = size_t(1) << 30;
  const bool progress = o.progress && total > (size_t(1) << 30);
  for_each_matrix(w, g->layers_, g->tok_embd_, g->output_, g->hc_head_,
                  [&](const model::Tensor& t, DTensor& d) {
                    if (!t.present()) return;
                    if (t.type != GgmlType::I32 && !matvec_supported(t.type))
                      fail("--backend cuda: tensor {} has type {}, which has no GPU kernel", t.name,
                           type_name(t.type));
                    const size_t n = tensor_bytes(t);
                    g->bufs_.emplace_back(n);
                    g->bufs_.back().upload(t.data, n);
                    g->bytes_ += n;
                    d.type = t.type;
                    d.cols = t.cols();
                    d.rows = t.rows();
                    d.slabs = t.ne.size() > 2 ? t.ne[2] : 1;
                    d.row_bytes = t.row_bytes;
                    d.d = g->bufs_.back().data();
                    done += n;
                    if (progress && done >= next_report) {
                      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                      std::fprintf(stderr, "\rcuda: uploading weights %.1f / %.1f GiB (%.1f GB/s)", gib(done),
                                   gib(total), static_cast<double>(done) / 1e9 / s);
                      std::fflush(stderr);
                      next_report += size_t(1) << 30;
                    }
                  });

  g->output_norm_ = g->floats(w.output_norm);
  g->hc_head_.base = g->floats(w.hc_head.base);
  g->hc_head_.scale = g->floats(w.hc_head.scale);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const model::LayerWeights& L = w.layers[i];
    DLayer& D = g->layers_[i];
    D.il = L.il;
    D.ratio = L.ratio;
    D.has_indexer = L.has_indexer;
    D.omega = g->floats(model::Rope::for_layer(hp, L.il).omega());
    D.hc_attn.base = g->floats(L.hc_attn.base);
    D.hc_attn.scale = g->floats(L.hc_attn.scale);
    D.hc_ffn.base = g->floats(L.hc_ffn.base);
    D.hc_ffn.scale = g->floats(L.hc_ffn.scale);
    D.attn_norm = g->floats(L.attn_norm);
    D.q_a_norm = g->floats(L.q_a_norm);
    D.kv_norm = g->floats(L.kv_norm);
    D.sinks = g->floats(L.sinks);
    D.comp.ape = g->floats(L.comp.ape);
    D.comp.norm = g->floats(L.comp.norm);
    D.comp.d = L.comp.d;
    D.comp.c = static_cast<int>(L.comp.c);
    D.idx_comp.ape = g->floats(L.idx_comp.ape);
    D.idx_comp.norm = g->floats(L.idx_comp.norm);
    D.idx_comp.d = L.idx_comp.d;
    D.idx_comp.c = static_cast<int>(L.idx_comp.c);
    D.ffn_norm = g->floats(L.ffn_norm);
    if (!hp.is_hash_layer(L.il)) D.router_bias = g->floats(L.router_bias);
  }
  g->upload_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (progress)
    std::fprintf(stderr, "\rcuda: uploaded %.2f GiB of weights to %s in %.1f s (%.1f GB/s)\n", gib(g->bytes_),
                 g->dev_.name.c_str(), g->upload_s_, static_cast<double>(g->bytes_) / 1e9 / g->upload_s_);
  return g;
}

std::unique_ptr<GpuModel> GpuModel::synthetic(const model::HParams& hp, const std::vector<TensorDecl>& tensors,
                                              uint64_t seed, int device) {
  std::unique_ptr<GpuModel> g(new GpuModel());
  g->dev_ = require_device(device);
  g->hp_ = hp;
  g->layers_.resize(static_cast<size_t>(hp.n_layers));
  size_t total = 0;
  for (const TensorDecl& t : tensors) {
    size_t n = row_bytes(t.type, t.ne.at(0));
    for (size_t i = 1; i < t.ne.size(); ++i) n *= static_cast<size_t>(t.ne[i]);
    total += n;
  }
  if (total + (size_t(512) << 20) > g->dev_.free_bytes)
    fail("--backend cuda: the synthetic model needs {:.2f} GiB of GPU memory (+0.5 GiB working space), but {} "
         "has {:.2f} GiB free of {:.2f} GiB", gib(total), g->dev_.name, gib(g->dev_.free_bytes),
         gib(g->dev_.total_bytes));
  const auto t0 = std::chrono::steady_clock::now();
  std::mt19937_64 rng(seed);
  uint64_t k = 0;
  for (const TensorDecl& t : tensors) {
    // Where the tensor goes: a global slot or blk.<il>.<suffix>.
    std::string suffix = t.name;
    DLayer* L = nullptr;
    if (t.name.rfind("blk.", 0) == 0) {
      const size_t dot = t.name.find('.', 4);
      const int64_t il = std::stoll(t.name.substr(4, dot - 4));
      if (il < 0 || il >= hp.n_layers) fail("synthetic model: tensor {} outside the {} layers", t.name, hp.n_layers);
      L = &g->layers_[static_cast<size_t>(il)];
      L->il = il;
      suffix = t.name.substr(dot + 1);
    }
    int64_t count = 1;
    for (int64_t v : t.ne) count *= v;
    const bool matrix = t.ne.size() >= 2 && t.type != GgmlType::I32;
    if (t.type == GgmlType::I32) {  // tid2eid: random expert ids
      std::vector<int32_t> ids(static_cast<size_t>(count));
      for (auto& x : ids) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(hp.n_expert));
      g->bufs_.emplace_back(ids.size() * 4);
      g->bufs_.back().upload(ids.data(), ids.size() * 4);
      g->bytes_ += ids.size() * 4;
      if (!L) fail("synthetic model: unexpected I32 tensor {}", t.name);
      L->tid2eid = DTensor{GgmlType::I32, t.ne[1], t.ne[0], 1, static_cast<size_t>(t.ne[0]) * 4,
                           g->bufs_.back().data()};
      continue;
    }
    if (!matrix || suffix.find("_base.") != std::string::npos || suffix.find("_scale.") != std::string::npos ||
        suffix.find("_ape.") != std::string::npos || suffix.find("sinks") != std::string::npos ||
        suffix.find("exp_probs_b") != std::string::npos) {
      // Small float vectors: norms 1, HC scales 0.1, everything else 0.
      float v = 0.0f;
      if (suffix.find("norm") != std::string::npos) v = 1.0f;
      if (suffix.find("_scale.") != std::string::npos) v = 0.1f;
      const float* d = g->floats(std::vector<float>(static_cast<size_t>(count), v));
      auto set = [&](const char* name, const float*& slot) {
        if (suffix == name) slot = d;
      };
      if (!L) {
        if (suffix == "output_norm.weight") g->output_norm_ = d;
        if (suffix == "output_hc_base.weight") g->hc_head_.base = d;
        if (suffix == "output_hc_scale.weight") g->hc_head_.scale = d;
        continue;
      }
      set("hc_attn_base.weight", L->hc_attn.base);
      set("hc_attn_scale.weight", L->hc_attn.scale);
      set("hc_ffn_base.weight", L->hc_ffn.base);
      set("hc_ffn_scale.weight", L->hc_ffn.scale);
      set("attn_norm.weight", L->attn_norm);
      set("attn_q_a_norm.weight", L->q_a_norm);
      set("attn_kv_a_norm.weight", L->kv_norm);
      set("attn_sinks.weight", L->sinks);
      set("attn_compressor_ape.weight", L->comp.ape);
      set("attn_compressor_norm.weight", L->comp.norm);
      set("indexer_compressor_ape.weight", L->idx_comp.ape);
      set("indexer_compressor_norm.weight", L->idx_comp.norm);
      set("ffn_norm.weight", L->ffn_norm);
      set("exp_probs_b.bias", L->router_bias);
      continue;
    }
    DTensor d;
    d.type = t.type;
    d.cols = t.ne[0];
    d.rows = t.ne[1];
    d.slabs = t.ne.size() > 2 ? t.ne[2] : 1;
    d.row_bytes = row_bytes(t.type, t.ne[0]);
    void* p = const_cast<void*>(g->alloc(d.bytes()));
    fill_random_weights(t.type, p, d.rows * d.slabs, d.cols, seed * 1000003 + ++k);
    d.d = p;
    if (!L) {
      if (suffix == "token_embd.weight") g->tok_embd_ = d;
      if (suffix == "output.weight") g->output_ = d;
      if (suffix == "output_hc_fn.weight") g->hc_head_.fn = d;
      continue;
    }
    const std::pair<const char*, DTensor*> slots[] = {
        {"hc_attn_fn.weight", &L->hc_attn.fn}, {"hc_ffn_fn.weight", &L->hc_ffn.fn},
        {"attn_q_a.weight", &L->q_a}, {"attn_q_b.weight", &L->q_b}, {"attn_kv.weight", &L->kv},
        {"attn_output_a.weight", &L->out_a}, {"attn_output_b.weight", &L->out_b},
        {"attn_compressor_kv.weight", &L->comp.kv}, {"attn_compressor_gate.weight", &L->comp.gate},
        {"indexer_compressor_kv.weight", &L->idx_comp.kv}, {"indexer_compressor_gate.weight", &L->idx_comp.gate},
        {"indexer.attn_q_b.weight", &L->idx_q_b}, {"indexer.proj.weight", &L->idx_proj},
        {"ffn_gate_inp.weight", &L->router}, {"ffn_gate_exps.weight", &L->gate_exps},
        {"ffn_up_exps.weight", &L->up_exps}, {"ffn_down_exps.weight", &L->down_exps},
        {"ffn_gate_shexp.weight", &L->gate_shexp}, {"ffn_up_shexp.weight", &L->up_shexp},
        {"ffn_down_shexp.weight", &L->down_shexp}};
    bool found = false;
    for (const auto& [name, slot] : slots)
      if (suffix == name) {
        *slot = d;
        found = true;
      }
    if (!found) fail("synthetic model: tensor {} has no place in the GPU model", t.name);
  }
  // Per-layer structure the file would imply (weights.cpp bind).
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    DLayer& L = g->layers_[static_cast<size_t>(il)];
    L.il = il;
    L.ratio = hp.compress_ratio[static_cast<size_t>(il)];
    L.omega = g->floats(model::Rope::for_layer(hp, il).omega());
    if (L.ratio > 0) {
      if (!L.comp.kv.present()) fail("synthetic model: layer {} has ratio {} but no compressor", il, L.ratio);
      L.comp.d = hp.head_dim;
      L.comp.c = static_cast<int>(L.comp.kv.rows / hp.head_dim);
      L.has_indexer = L.comp.c == 2;
      L.idx_comp.d = hp.idx_dim;
      L.idx_comp.c = 2;
    }
    if (!hp.is_hash_layer(il) && !L.router_bias)
      L.router_bias = g->floats(std::vector<float>(static_cast<size_t>(hp.n_expert), 0.0f));
  }
  device_synchronize();
  g->upload_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return g;
}

}  // namespace ds4::cuda
