// Kernels of the V4 forward pass on the GPU, one token per step (architecture.md 3), besides
// the weight products (matvec.h). Plain C++ declarations (no CUDA types), so the session code
// and the tests compile with the host compiler. Every kernel mirrors one CPU function of
// src/model and follows its arithmetic (double where the CPU sums in double, the same
// rounding simulations), so that results agree with the CPU up to float summation order.
//
// Position-dependent kernels read the token and position from a StepCtl in device memory,
// never from a kernel argument: a decode step captured once in a CUDA graph then replays for
// any position, and a prefill is a sequence of such steps without host synchronization.
//
// Kernels with a trailing `tokens` argument also run a batch in one launch (the batched
// prefill, gpu_prefill.cpp): ctl then points at `tokens` StepCtl, and every per-token array
// holds `tokens` consecutive rows of the one-token size (e.g. H: [tokens][nc][E]); shared
// inputs (weights, rings) stay as they are. Each token's arithmetic is that of the
// one-token call, so a batch gives bit-identical results to `tokens` separate calls.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ggml_type.h"

namespace ds4::cuda::fwd {

struct StepCtl {
  int64_t pos = 0;    // position of the token being evaluated
  int32_t token = 0;  // its id (tokens[index])
  int32_t index = 0;  // index into the chunk's token array
};

// ctl->token = tokens[ctl->index].
void step_begin(StepCtl* ctl, const int32_t* tokens, void* stream);
// ctl->pos += 1, ctl->index += 1.
void step_end(StepCtl* ctl, void* stream);

// H[s][0..E) = row ctl->token of the embedding table, for every stream s < nc (3.1).
// Table types: F32, F16, BF16, Q8_0.
void embed(GgmlType type, const void* table, size_t row_bytes, int64_t E, int nc,
           const StepCtl* ctl, float* H, void* stream, int64_t tokens = 1);

// y[r] = RMSNorm(x[r]) * w (w may be null: unweighted) for `rows` rows of n (ops.cpp);
// y may equal x.
void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t rows, float eps,
             void* stream);

struct HcShape {
  int nc = 4;       // streams
  int64_t E = 0;    // hidden size
  float rms_eps = 1e-6f, hc_eps = 1e-6f;
  int iters = 20;   // Sinkhorn iterations
};
// hyper_connection.cpp hc_pre after the fn product: mix_raw [(2 + nc) * nc] -> a [E],
// post [nc], comb [nc][nc] (Sinkhorn-normalized).
void hc_pre(const HcShape& s, const float* mix_raw, const float* H, const float* base,
            const float* scale, float* a, float* post, float* comb, void* stream,
            int64_t tokens = 1);
// The whole of hc_pre plus the RMSNorm that follows it (3.2), for float fn weights (F32, F16,
// BF16): mix = fn . H, the RMS factor, sigmoids and Sinkhorn, a = sum_k pre[k] H[k] and
// x = RMSNorm(a) * norm. Two launches that use the whole GPU (hc_pre above is one block after
// a separate fn product): the first splits the nc*E columns over blocks (partial products and
// sums of squares); in the second every block reduces those partials in one fixed order
// (identical results in every block, independent of timing), one block runs post and
// Sinkhorn (a warp, the matrix in registers, the CPU's sequential sums) and the others
// normalize their slice of x. E % 4 == 0. By default (E <= 4096, DS4_CUDA_NO_HC_V3 unset) the
// two launches are one: its last block to finish (an arrival counter) does the second
// launch's work. scratch: hc_fused_scratch_bytes(s), zero-filled before its first use (the
// counter; each call leaves it at zero again), one call at a time.
size_t hc_fused_scratch_bytes(const HcShape& s);
// Decode options of hc_pre_fused / hc_post_pre_fused that only the one-launch kernel carries
// out (they return whether it ran; the two launches ignore these and finish comb themselves):
struct HcPreExtras {
  // Also write x as E / 32 Q8_0 activation blocks (BlockQ8_0Act: what quantize_activation
  // makes of x for a Q8_0 or MXFP4 product, bit for bit), so the products of x need no
  // quantize launch. E % 128 == 0.
  void* x_q8 = nullptr;
  // Leave comb as the Sinkhorn's input (scale[2] * (mix * r) + base); hc_comb_sinkhorn then
  // finishes it in place, e.g. on another stream: only the next hc_post reads comb, so the
  // one-warp Sinkhorn (~3.5 us) need not delay the sublayer that reads x.
  bool defer_sinkhorn = false;
};
bool hc_pre_fused(const HcShape& s, GgmlType fn_type, const void* fn, const float* H,
                  const float* base, const float* scale, const float* norm, float* a, float* x,
                  float* post, float* comb, void* scratch, void* stream, const HcPreExtras& ex = {});
// The Sinkhorn of a deferred comb (HcPreExtras::defer_sinkhorn), in place, one warp: the same
// operations as the HC pre's own, so the same bits.
void hc_comb_sinkhorn(const HcShape& s, float* comb, void* stream);
// hc_comb_sinkhorn's work carried by another launch as one extra block (rows_finish_jobs,
// fused_router): a deferred Sinkhorn without a launch or a graph edge of its own.
struct CombJob {
  HcShape s;
  float* comb = nullptr;
};
// The inputs of an hc_post (3.3) whose output the next HC pre or the head reads:
// H = post[k] * f + sum_j comb[j][k] * H_in[j].
struct HcPostIn {
  const float* f = nullptr;     // the sublayer's output [E]
  const float* H_in = nullptr;  // the state the sublayer read [nc][E]
  const float* post = nullptr;  // [nc]
  const float* comb = nullptr;  // [nc][nc]
};
// hc_post(p) -> H, then hc_pre_fused on H, in hc_pre_fused's two launches (decode: a
// sublayer's hc_post and the next sublayer's HC pre): each block of the first launch computes
// its columns of H, writes them (the state the next hc_post reads) and uses them at once.
// Bit-identical to hc_post + hc_pre_fused (the same device code). p.post / p.comb may be the
// post / comb outputs (the first launch reads them, the second writes them); H must not alias
// p.H_in.
bool hc_post_pre_fused(const HcShape& s, const HcPostIn& p, float* H, GgmlType fn_type,
                       const void* fn, const float* base, const float* scale, const float* norm,
                       float* a, float* x, float* post, float* comb, void* scratch, void* stream,
                       const HcPreExtras& ex = {});
// H_out[k] = post[k] * f + sum_j comb[j][k] * H_in[j].
void hc_post(const HcShape& s, const float* f, const float* H_in, const float* post,
             const float* comb, float* H_out, void* stream, int64_t tokens = 1);
// The output head's collapse (hc_head, 3.6) and the output RMSNorm: x = RMSNorm(sum_k pre_k
// H_k) * norm, for float fn weights (nc rows), in hc_pre_fused's two launches; with p set,
// hc_post(p) -> H first, as in hc_post_pre_fused (else H is only read). Equals the fn product +
// hc_head + rmsnorm up to float summation order. scratch: hc_fused_scratch_bytes(s).
void hc_head_fused(const HcShape& s, const HcPostIn* p, float* H, GgmlType fn_type,
                   const void* fn, const float* base, const float* scale, const float* norm,
                   float* x, void* scratch, void* stream);
// hc_head after the fn product: mix_raw [nc] -> x [E].
void hc_head(const HcShape& s, const float* mix_raw, const float* H, const float* base,
             const float* scale, float* x, void* stream);

// What happens to a finished row (compressor.h RowSim).
enum class Sim : int { None = 0, Fp8Nope = 1, HadamardFp4 = 2 };

// For each of `rows` vectors of d floats (stride `stride`): optional RMSNorm (weight `norm`
// or unweighted), RoPE of the last n_rope dims at ctl->pos with the layer's frequencies
// `omega` [n_rope / 2], then the simulation `sim` (n_nope dims for Fp8Nope). in-place when
// out == in. With ring_cap > 0, one row is written to out + (pos % ring_cap) * d (the raw
// KV ring of the session). A batch of `tokens` has rows * tokens rows (token t's at
// (t * rows + r) * stride), each finished at its token's position.
struct RowFinish {
  int64_t d = 0;
  int64_t n_rope = 0;
  int64_t n_nope = 0;
  bool do_norm = true;
  const float* norm = nullptr;
  float eps = 1e-6f;
  Sim sim = Sim::None;
};
void rows_finish(const RowFinish& f, const float* omega, const float* in, float* out,
                 int64_t rows, int64_t stride, int64_t ring_cap, const StepCtl* ctl,
                 void* stream, int64_t tokens = 1);
// Up to kMaxRowsJobs row sets of rows_finish in one launch (a block per row, job 0's rows
// first), each with its own settings, rows, stride and ring: e.g. RMSNorm(q_a x) and the KV
// row into the ring (3.4.1, 3.4.2; a weighted RMSNorm is a RowFinish without RoPE, and the
// arithmetic of rmsnorm). act, when set: the finished rows also as Q8_0 activation blocks
// (BlockQ8_0Act [rows][d / 32], bit-identical to quantize_activation(Q8_0) of them; d a
// multiple of 32), the input of a Q8_0 product without a quantize launch. With `tokens`,
// each job's rows and act of token t are those of rows_finish (t * rows + r).
struct RowsJob {
  RowFinish f;
  const float* in = nullptr;
  float* out = nullptr;
  int64_t rows = 1, stride = 0, ring_cap = 0;
  void* act = nullptr;
};
inline constexpr int kMaxRowsJobs = 2;
// comb (one token only): that Sinkhorn as one more block of the launch.
void rows_finish_jobs(const RowsJob* jobs, int n_jobs, const float* omega, const StepCtl* ctl,
                      void* stream, int64_t tokens = 1, const CombJob* comb = nullptr);

// Compressor state for the step's token: ring_kv[pos % cap] = kv, ring_sc[pos % cap] = sc +
// ape[pos % ratio] (width floats each, compressor_project).
void comp_store(const float* kv, const float* sc, const float* ape, int64_t width,
                int64_t ratio, float* ring_kv, float* ring_sc, int64_t cap, const StepCtl* ctl,
                void* stream, int64_t tokens = 1);
// When pos + 1 completes window w = (pos + 1) / ratio - 1: pools it (and the previous
// window's A half when c = 2) from the rings, finishes the row (RowFinish f with RoPE at the
// window start) and writes it to rows[w]. No-op otherwise (compressor_advance).
// A batch of `tokens` (ctl [tokens]): a block per token, each token that completes a window
// pools it (a prefill chunk's windows in one launch; they read only ring rows).
void comp_emit(const RowFinish& f, const float* omega, const float* ring_kv,
               const float* ring_sc, int64_t cap, int64_t ratio, int c, float* rows,
               const StepCtl* ctl, void* stream, int64_t tokens = 1);
// One decode step of up to kMaxCompJobs compressors of a layer (its attention compressor and
// the indexer's, which share ratio and omega) in one launch, one block per compressor:
// comp_store of the token's projections kv / sc, then comp_emit of the window it completes.
// Bit-identical to comp_store + comp_emit per compressor (the same device code).
struct CompJob {
  RowFinish f;                 // f.d: the compressor's row width d
  int c = 1;                   // 2: overlapped windows (ratio 4), projections of c * d floats
  const float* kv = nullptr;   // the token's projections [c * d]
  const float* sc = nullptr;
  const float* ape = nullptr;  // [ratio][c * d]
  float* ring_kv = nullptr;    // [cap][c * d]
  float* ring_sc = nullptr;
  float* rows = nullptr;       // compressed rows [.][d]
};
inline constexpr int kMaxCompJobs = 2;
void comp_store_emit(const CompJob* jobs, int n_jobs, const float* omega, int64_t cap, int64_t ratio,
                     const StepCtl* ctl, void* stream);

// Lightning indexer (indexer.cpp) for the step's token. q [NI][DI] (rotated and simulated
// in place by idx_prep_q), wts [NI] raw head weights (scaled by wscale here), icomp [.][DI].
// Writes scores [n_vis] and the selection sel [K] / n_sel [1]: rows 0..n_vis-1 when
// n_vis = (pos + 1) / ratio <= K, else the K best by (score desc, index asc).
// A batch of `tokens` (idx_select): q [tokens][NI][DI], wts [tokens][NI], sel [tokens][K],
// n_sel [tokens], and each token's scores at scores + t * scores_stride (>= its n_vis).
void idx_prep_q(float* q, int64_t NI, int64_t DI, int64_t n_rope, const float* omega,
                bool official, const StepCtl* ctl, void* stream, int64_t tokens = 1);
void idx_select(const float* q, const float* wts, float wscale, int64_t NI, int64_t DI,
                const float* icomp, int64_t ratio, int64_t K, float* scores, int32_t* sel,
                int32_t* n_sel, const StepCtl* ctl, void* stream, int64_t tokens = 1,
                int64_t scores_stride = 0);
// idx_select's selection alone, from scores computed elsewhere (the prefill's tiled scores,
// prefill_indexer.h): sel / n_sel of each of `tokens` queries from its scores (all rows in
// order when n_vis <= K; the scores are then not read).
void idx_topk(const float* scores, int64_t scores_stride, int64_t ratio, int64_t K, int32_t* sel,
              int32_t* n_sel, const StepCtl* ctl, void* stream, int64_t tokens = 1);

// Attention with sinks (attention.cpp) for the step's token, all heads, followed by the
// de-rotation of the output at pos: o [NH][D]. Rows: the raw window (ring) and compressed
// rows comp (sel/n_sel selection, or all (pos + 1) / ratio when sel is null; none when
// ratio == 0). Flash-decoding: the rows are split into chunks of kAttnChunk, one block per
// (chunk, group of kAttnHeads heads) stages its rows in shared memory once and keeps each
// head's max, sum of exponentials and weighted V sum of the chunk in float; a second launch
// merges the chunks of a head in chunk order (in double, with the sink), so the result is
// deterministic. D must be a multiple of 4. scratch: attention_scratch_floats(s).
// A batch of `tokens`: q and o [tokens][NH][D], sel [tokens][sel_stride], n_sel [tokens],
// scratch tokens * attention_scratch_floats(s) (each token its own partials). o_q8 (D % 32 ==
// 0): o also as Q8_0 activation blocks [tokens][NH * D / 32] (BlockQ8_0Act, what
// quantize_activation makes of o for a Q8_0 / MXFP4 wo_a, bit for bit).
struct AttnShape {
  int64_t NH = 0, D = 0, n_rope = 0, window = 0;
  int64_t ring_cap = 0;
  int64_t ratio = 0;
  int64_t max_rows = 0;
};
inline constexpr int64_t kAttnChunk = 32;  // rows per block (= lanes of a warp)
inline constexpr int64_t kAttnHeads = 8;   // heads per block (= its warps)
size_t attention_scratch_floats(const AttnShape& s);
void attention(const AttnShape& s, const float* q, const float* ring, const float* comp,
               const int32_t* sel, const int32_t* n_sel, const float* sinks,
               const float* omega, float* scratch, float* o, const StepCtl* ctl, void* stream,
               int64_t tokens = 1, int64_t sel_stride = 0, void* o_q8 = nullptr, bool early_rows = false);
// early_rows (decode, one token): the first launch loads its rows, the selection and the
// position before it waits for its predecessor, which is sound only when every kernel that
// wrote them has completed or is idx_topk / comp_store_emit (they signal their dependents
// after their writes) -- the decode step's order. DS4_CUDA_NO_ATTN_EARLY_ROWS=1 turns it off.

// Routing (moe.cpp route): logits [NE] -> ids [K], weights [K]. Hash layers pass tid2eid
// (int32 [n_vocab][K]) and use row ctl->token; others pick the top K of score + bias.
void route(const float* logits, int64_t NE, int64_t K, const float* bias,
           const int32_t* tid2eid, bool norm, float scale, const StepCtl* ctl, int32_t* ids,
           float* weights, void* stream, int64_t tokens = 1);

// The decode router in one launch: logits [NE] = the router's weights w [NE][ncols] (F16 or
// BF16) times x [ncols], with the bits of matvec, then route's ids and weights, computed by
// the product's last block to finish. arrivals: one counter, zero before the first call
// (each call leaves it zero). fused_router_fits says whether the type and shape allow it
// (otherwise: matvec, then route).
struct RouteArgs {
  int64_t NE = 0, K = 0;
  const float* bias = nullptr;      // biased top-k, or
  const int32_t* tid2eid = nullptr;  // hash routing by ctl->token
  bool norm = false;
  float scale = 1.0f;
  int32_t* ids = nullptr;
  float* weights = nullptr;
};
bool fused_router_fits(GgmlType type, const void* w, int64_t NE, int64_t ncols, int64_t K);
// comb: that Sinkhorn as one more block of the launch (CombJob).
void fused_router(GgmlType type, const void* w, int64_t ncols, const float* x, float* logits, uint32_t* arrivals,
                  const RouteArgs& a, const StepCtl* ctl, void* stream, const CombJob* comb = nullptr);

// Experts of float type (F32, F16, BF16), which moe_experts does not take: the same
// computation with plain dot products. gate/up [n_expert][F][E], down [n_expert][E][F].
// h: K * F floats of workspace.
void moe_float(GgmlType type, const void* gate, const void* up, const void* down, int64_t E,
               int64_t F, const int32_t* ids, const float* w, int K, float limit,
               const float* x, float* h, float* y, void* stream);

// y = a + b (n floats).
void add(const float* a, const float* b, float* y, int64_t n, void* stream);
// Copies n floats (device to device, on the stream).
void copy(const float* src, float* dst, int64_t n, void* stream);

}  // namespace ds4::cuda::fwd
