#include "backend/cuda/sampling.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "backend/cuda/check.h"
#include "backend/cuda/topk.h"
#include "core/error.h"

namespace ds4::cuda {

using namespace sampling_detail;

namespace {
// Candidates copied back with the header; more take a second copy. min-p at its default keeps
// a handful of tokens, so one copy is the common case.
constexpr int64_t kFirstCopy = 64;
}  // namespace

DeviceSampler::DeviceSampler(int64_t n_vocab)
    : n_vocab_(n_vocab),
      work_(static_cast<size_t>(n_vocab) * sizeof(float)),
      ids_(static_cast<size_t>(kTopkMaxK) * sizeof(int32_t)) {}

bool DeviceSampler::reduce(const float* d_logits, const model::LogitsReduceRequest& req,
                           model::LogitsReduction& out, void* stream) {
  const auto n_pen = static_cast<int64_t>(req.penalty_tokens.size());
  const auto n_bias = static_cast<int64_t>(req.bias_tokens.size());
  if (static_cast<int64_t>(req.penalty_sub.size()) != n_pen || static_cast<int64_t>(req.bias.size()) != n_bias)
    fail("device sampling: penalty or bias lists of different lengths");
  for (const int32_t t : req.penalty_tokens)
    if (t < 0 || t >= n_vocab_) return false;
  for (const int32_t t : req.bias_tokens)
    if (t < 0 || t >= n_vocab_) return false;
  const int64_t max_cand = std::clamp<int64_t>(req.max_candidates, 1, n_vocab_);
  const int64_t n_top = std::min<int64_t>(req.logprobs_top, kTopkMaxK);
  if (req.logprobs_top > kTopkMaxK) return false;
  const int64_t top_slots = std::max<int64_t>(n_top, 0);

  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t list_bytes = static_cast<size_t>(n_pen + n_bias) * 8 + 16;
  if (lists_.size() < list_bytes) lists_ = DeviceBuffer(list_bytes * 2);
  std::vector<unsigned char> lists(list_bytes);
  unsigned char* p = lists.data();
  std::memcpy(p, req.penalty_tokens.data(), static_cast<size_t>(n_pen) * 4);
  std::memcpy(p + n_pen * 4, req.penalty_sub.data(), static_cast<size_t>(n_pen) * 4);
  std::memcpy(p + n_pen * 8, req.bias_tokens.data(), static_cast<size_t>(n_bias) * 4);
  std::memcpy(p + n_pen * 8 + n_bias * 4, req.bias.data(), static_cast<size_t>(n_bias) * 4);
  if (n_pen + n_bias > 0)
    DS4_CUDA_CHECK(cudaMemcpyAsync(lists_.data(), lists.data(), list_bytes, cudaMemcpyHostToDevice, s));
  const size_t out_bytes = kHeaderBytes + static_cast<size_t>(top_slots + max_cand) * sizeof(Entry);
  if (out_.size() < out_bytes) out_ = DeviceBuffer(out_bytes);

  auto* d = static_cast<unsigned char*>(lists_.data());
  Args a{};
  a.logits = d_logits;
  a.work = work_.as<float>();
  a.n = n_vocab_;
  a.repetition_penalty = req.repetition_penalty;
  a.pen_tok = reinterpret_cast<const int32_t*>(d);
  a.pen_sub = reinterpret_cast<const float*>(d + n_pen * 4);
  a.n_pen = static_cast<int>(n_pen);
  a.bias_tok = reinterpret_cast<const int32_t*>(d + n_pen * 8);
  a.bias = reinterpret_cast<const float*>(d + n_pen * 8 + n_bias * 4);
  a.n_bias = static_cast<int>(n_bias);
  a.greedy = req.greedy ? 1 : 0;
  a.floor_offset = req.floor_offset;
  a.max_cand = static_cast<int>(max_cand);
  a.top_k = static_cast<int>(std::min<int64_t>(req.top_k, kTopkMaxK + 1));
  a.logprobs_top = static_cast<int>(n_top);
  a.ids = ids_.as<int32_t>();
  a.out = out_.as<unsigned char>();
  launch_reduce(a, stream);

  const size_t first = kHeaderBytes + static_cast<size_t>(top_slots + std::min(kFirstCopy, max_cand)) * sizeof(Entry);
  host_.resize(out_bytes);
  DS4_CUDA_CHECK(cudaMemcpyAsync(host_.data(), out_.data(), first, cudaMemcpyDeviceToHost, s));
  DS4_CUDA_CHECK(cudaStreamSynchronize(s));
  Header hd;
  std::memcpy(&hd, host_.data(), sizeof(hd));
  if (hd.status != kOk) return false;
  const size_t cand_off = kHeaderBytes + static_cast<size_t>(top_slots) * sizeof(Entry);
  if (hd.n_cand > kFirstCopy) {
    const size_t rest = static_cast<size_t>(hd.n_cand - kFirstCopy) * sizeof(Entry);
    const size_t off = cand_off + static_cast<size_t>(kFirstCopy) * sizeof(Entry);
    DS4_CUDA_CHECK(cudaMemcpyAsync(host_.data() + off, out_.as<unsigned char>() + off, rest, cudaMemcpyDeviceToHost, s));
    DS4_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  out.max = hd.max;
  out.argmax = hd.argmax;
  out.all_candidates = hd.all_candidates != 0;
  out.cand_logit.resize(static_cast<size_t>(hd.n_cand));
  out.cand_id.resize(static_cast<size_t>(hd.n_cand));
  for (int32_t i = 0; i < hd.n_cand; ++i) {
    Entry e;
    std::memcpy(&e, host_.data() + cand_off + static_cast<size_t>(i) * sizeof(Entry), sizeof(e));
    out.cand_logit[static_cast<size_t>(i)] = e.logit;
    out.cand_id[static_cast<size_t>(i)] = e.id;
  }
  if (out.all_candidates) {  // collected in any order on the device; the CPU sampler's is by id
    std::vector<size_t> order(out.cand_id.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return out.cand_id[x] < out.cand_id[y]; });
    std::vector<float> logit(order.size());
    std::vector<int32_t> id(order.size());
    for (size_t i = 0; i < order.size(); ++i) {
      logit[i] = out.cand_logit[order[i]];
      id[i] = out.cand_id[order[i]];
    }
    out.cand_logit = std::move(logit);
    out.cand_id = std::move(id);
  }
  out.lse_max = hd.lse_max;
  out.lse_log_sum = hd.lse_log_sum;
  const int64_t k = std::min(top_slots, n_vocab_);
  out.top_id.resize(static_cast<size_t>(k));
  out.top_logit.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    Entry e;
    std::memcpy(&e, host_.data() + kHeaderBytes + static_cast<size_t>(i) * sizeof(Entry), sizeof(e));
    out.top_logit[static_cast<size_t>(i)] = e.logit;
    out.top_id[static_cast<size_t>(i)] = e.id;
  }
  return true;
}

}  // namespace ds4::cuda
