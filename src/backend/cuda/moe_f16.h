// Routed experts of a large prefill batch on the f16 tensor cores through cuBLAS: the path
// moe_experts_batch (matmul.h) takes for many tokens. Internal to the CUDA backend; plain C++.
//
// Why: the int8 grouped kernels (matmul.cu) decode every 128 x 256 weight tile once per 64
// tokens and apply a float scale per 32-element chunk; at 8192 tokens (~192 per expert) they
// spend most of their time in copies and decoding, not in MMAs (docs/cuda.md, "Prefill GEMMs on
// the tensor cores"). Here each expert's gate, up and down matrices are expanded to f16 once
// per call (a bounded scratch of a few experts, double-buffered so that the expansion of the
// next group overlaps the products of this one), the tokens' quantized activations are expanded
// to f16 (d * q) in expert order, and cuBLAS runs per expert
//   gu[slot]  = [G_e; U_e] x16[slot]     (m = 2 n_ff, f16 in, f32 accumulation and output)
//   h16[slot] = f16(dequant(quant(w * silu(min(g, L)) * clamp(u, -L, L))))   (our kernel)
//   z[slot]   = D_e h16[slot]            (m = n_embd, f32 output)
// on a few side streams (one product of ~192 tokens fills only a third of the SMs). The sum
// over each token's experts is matmul.cu's combine (ascending expert id, no atomics).
//
// Numerics: the same activations as the CPU (x and h are quantized to the partner format first,
// bit-identically, then expanded as d * q), but each weight and activation value is rounded to
// f16 (2^-11 relative) and cuBLAS sums in its own order; the gate/up error then moves some
// hidden values across a Q8_K / Q8_0 rounding boundary of the requantized h. Measured on an
// H200 against the CPU composition (tests/cuda/test_moe_batch_f16.cpp, 256 experts x top-6):
// relative L2 2.2e-3 (q2, T = 512 and 4096), 2.3e-4 (q4), 2.0e-3 (mxfp4), 1.7e-3 (Q8_0 shared
// expert); max |d| / max |ref| <= 2.8e-3. The int8 path: 4e-5 L2 (float summation order only). Deterministic for a given batch
// (fixed cuBLAS algorithms, no atomics in our kernels), but a token's output may change in the
// last bits with the other tokens of its expert (cuBLAS picks its kernel by the token count).
//
// Cost: the expansion of all the experts' weights (~10 ms per Flash layer on an H200, whatever
// T) is paid back only for many tokens. One layer (256 experts x top-6, q2, H200, median of 7,
// test MoeBatchF16.PrintsLayerTimes), int8 vs f16 path: T = 1024 5.63 vs 10.68 ms, 2048 6.25
// vs 11.31, 4096 12.35 vs 11.77, 8192 20.50 vs 14.36 ms; q4 at 8192 19.81 vs 15.41; mxfp4 at
// 8192 21.95 vs 30.85 (slower: opt-in); the Q8_0 shared expert (one expert) at 8192 3.47 vs
// 1.18 ms. Hence the default threshold T >= 4096.
//
// Switches (read on every call): DS4_CUDA_NO_MOE_F16=1 the int8 path always;
// DS4_CUDA_MOE_F16_MIN_T=N the smallest T served (default kMoeF16MinTokens, floor
// kMoeF16FloorTokens, below which the workspace has no room for this path);
// DS4_CUDA_MOE_F16_MXFP4=1 serves MXFP4 experts too (measured slower, off by default);
// DS4_CUDA_MOE_F16_GROUP=N experts per expanded group (1..kMoeF16MaxGroup, default 8);
// DS4_CUDA_MOE_F16_STREAMS=N side streams for the products (1..8, default 4). Group 8 x 4
// streams was the fastest at T = 8192 (14.41 ms; 4 x 4 14.51, 16 x 4 14.88, 8 x 1 15.97).
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/cuda/matmul.h"
#include "backend/cuda/matmul_launch.h"

namespace ds4::cuda {

inline constexpr int64_t kMoeF16MinTokens = 4096;
inline constexpr int64_t kMoeF16FloorTokens = 128;
inline constexpr int kMoeF16MaxGroup = 8;

// Bytes this path needs next to the int8 path's workspace for T tokens: 0 when it cannot serve
// the shape (types, column counts not multiples of 256, T below the floor). At Flash shapes
// about T * 6 * 24 KiB + 805 MB (T = 8192: 2.0 GB).
size_t moe_f16_workspace_bytes(const MoeBatchShape& s, int64_t T);

// Whether moe_experts_batch takes this path now: workspace room (T >= floor), T >= the
// threshold, the switch not set, MXFP4 only if opted in, and `stream` not capturing a graph
// (the path reads the per-expert token counts back to the host).
bool moe_f16_serves(const MoeBatchShape& s, int64_t T, void* stream);

// After launch_moe_route: fills ws.z for every valid slot (ws.h is used as the f16 hidden
// state; ws.act_h is not used). d_extra holds moe_f16_workspace_bytes(s, T) bytes.
// Synchronizes `stream` once (the token counts) and returns with all work ordered on `stream`.
void moe_f16_experts(const MoeBatchShape& s, const void* d_gate, const void* d_up, const void* d_down,
                     const int32_t* d_ids, int64_t T, const detail::MoeBatchWs& ws, void* d_extra, void* stream);

}  // namespace ds4::cuda
