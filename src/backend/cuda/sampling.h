// The GPU side of sampling (model/logits_reduce.h): penalties, logit bias, argmax, the min-p
// candidate set or the top-k, and the raw logits' log-sum-exp and best tokens, computed next
// to the logits so that a decode step copies back a few hundred bytes instead of the whole
// vocabulary. gen::Sampler finishes the step on the host with its own code (temperature,
// top-p, min-p, the draw), so tokens are those of the CPU sampler for the same logits.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cuda/buffer.h"
#include "model/logits_reduce.h"

namespace ds4::cuda {

class DeviceSampler {
 public:
  explicit DeviceSampler(int64_t n_vocab);

  // Reduces d_logits [n_vocab] as `req` says, on `stream`, and waits for the result. Returns
  // false when the request cannot be served (a NaN or +inf logit, every token banned, more
  // than req.max_candidates candidates and no usable top_k, logprobs asked of invalid raw
  // logits); the caller then samples from the full logits, which reports the error.
  bool reduce(const float* d_logits, const model::LogitsReduceRequest& req, model::LogitsReduction& out,
              void* stream);

 private:
  int64_t n_vocab_;
  DeviceBuffer work_;   // the adjusted logits
  DeviceBuffer lists_;  // penalty and bias lists
  DeviceBuffer out_;    // header, top entries, candidates
  DeviceBuffer ids_;    // top-k scratch
  std::vector<unsigned char> host_;
};

namespace sampling_detail {

// Device -> host result layout (sampling.cu writes it, sampling.cpp reads it).
struct Header {
  int32_t status = 0;  // Status
  int32_t argmax = 0;
  float max = 0.0f;
  int32_t n_cand = 0;  // candidates written
  int32_t all_candidates = 1;
  int32_t pad = 0;
  double lse_max = 0.0, lse_log_sum = 0.0;
};
struct Entry {
  float logit;
  int32_t id;
};
enum Status : int32_t { kOk = 0, kNan = 1, kPosInf = 2, kAllBanned = 3, kTooMany = 4, kBadRaw = 5 };
constexpr size_t kHeaderBytes = 64;

struct Args {
  const float* logits;
  float* work;
  int64_t n;
  float repetition_penalty;
  const int32_t* pen_tok;
  const float* pen_sub;
  int n_pen;
  const int32_t* bias_tok;
  const float* bias;
  int n_bias;
  int greedy;
  double floor_offset;
  int max_cand;
  int top_k;
  int logprobs_top;
  int32_t* ids;
  unsigned char* out;  // Header, then logprobs_top Entries, then max_cand Entries
};

void launch_reduce(const Args& a, void* stream);

}  // namespace sampling_detail
}  // namespace ds4::cuda
