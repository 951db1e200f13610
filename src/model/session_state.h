// The decode state of a session (architecture.md 5.1), as an explicit value: it can be
// copied (snapshot / restore), truncated back to an earlier position, and serialized.
//
// Per layer it keeps a *token history*: for every retained position, the raw KV row (after
// norm, RoPE and, in official numerics, the FP8 round trip) and, in compressed layers, the
// compressor projections (value and gate-score rows, score including the position bias) of
// the attention compressor and of the indexer compressor. Plus the append-only compressed
// rows (attention, and indexer keys in indexer layers).
//
// The history holds at least what the next token needs (the last window - 1 raw rows, and the
// projections of the current partial compressor window and, for overlapped compressors, of
// the previous window), plus `retain` extra tokens. Truncating to any n with
// n_past - retain <= n <= n_past is then exact: drop the history rows and compressed rows
// past n (row w of a ratio-r compressor exists iff w < floor(n / r)); the compressor's
// streaming state at n is the history itself. No recomputation, no approximation.
//
// Serialized format (little-endian), version 1:
//   "DS4STATE" | u32 version | u32 numerics | u64 fingerprint length | fingerprint bytes |
//   u64 n_past | u64 retain | u64 n_tokens | i32 tokens[n_tokens] |
//   per layer: i64 hist_begin | 7 arrays (raw, comp_kv, comp_sc, idx_kv, idx_sc, comp, icomp),
//              each u64 count + f32[count] |
//   32-byte SHA-256 of everything before it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ds4::model {

struct HParams;

enum class Numerics : uint32_t {
  Exact = 0,     // no activation rounding simulation (matches the HF reference fixtures)
  Official = 1,  // DeepSeek's inference code: FP8 KV round trip, Hadamard + FP4 indexer
};

const char* numerics_name(Numerics n);
Numerics numerics_from_name(const std::string& s);  // "exact" | "official"; throws otherwise

struct LayerState {
  int64_t hist_begin = 0;       // position of the first retained history row
  std::vector<float> raw;       // [n_hist][head_dim]
  std::vector<float> comp_kv;   // [n_hist][c * head_dim]   (compressed layers)
  std::vector<float> comp_sc;   // [n_hist][c * head_dim]
  std::vector<float> idx_kv;    // [n_hist][2 * idx_dim]    (indexer layers)
  std::vector<float> idx_sc;    // [n_hist][2 * idx_dim]
  std::vector<float> comp;      // [n_comp][head_dim]  compressed attention rows
  std::vector<float> icomp;     // [n_comp][idx_dim]   compressed indexer keys
};

struct SessionState {
  std::string fingerprint;      // HParams::fingerprint() of the model it belongs to
  Numerics numerics = Numerics::Official;
  int64_t n_past = 0;
  int64_t retain = 0;           // extra history tokens kept for truncation
  std::vector<int32_t> tokens;  // all tokens evaluated so far
  std::vector<LayerState> layers;

  std::vector<uint8_t> serialize() const;
  // Throws ds4::Error on a bad magic, version, size or checksum.
  static SessionState deserialize(std::span<const uint8_t> bytes);
};

// What a layer's state arrays depend on besides the model-wide sizes.
struct LayerStateShape {
  int64_t ratio = 0;         // compress ratio (0: window only)
  int64_t comp_c = 1;        // 2 = overlapped compressor windows
  bool has_indexer = false;
};

// Throws ds4::Error unless `s` can be restored into a session of the model `hp` (one entry of
// `layers` per layer) with these numerics and max_ctx: same model fingerprint and numerics,
// n_past within max_ctx, and every array exactly the size its layer needs at n_past. Shared by
// the CPU and GPU sessions, so a snapshot is accepted or refused the same way by both.
void check_restorable(const SessionState& s, const HParams& hp, std::span<const LayerStateShape> layers,
                      Numerics numerics, int64_t max_ctx);

}  // namespace ds4::model
