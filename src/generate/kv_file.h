// Session snapshots on disk ("KV files"): save a conversation's state, load it in a later
// process and continue without prefilling again.
//
// Layout (little-endian), version 1:
//   "DS4KVSNP" | u32 version | u32 reserved (0) |
//   32-byte model identity (model_identity below) |
//   u64 context size the session was created with |
//   u64 n_tokens | i32 tokens[n_tokens] |
//   u64 note length | note bytes (free text for the application, e.g. the CLI's conversation) |
//   u64 state length | Session::serialize() bytes |
//   32-byte SHA-256 of everything before it.
// The state carries its own checksum and model fingerprint too; the outer identity is stricter
// (it changes with any metadata or tensor-table change, e.g. another quantization of the same
// shapes, whose logits differ) and lets a foreign file be refused before its state is parsed.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace ds4::gen {

class Generator;

using ModelIdentity = std::array<uint8_t, 32>;

// SHA-256 of the GGUF's header, metadata and tensor table: bytes [0, data_offset).
ModelIdentity model_identity(const model::Model& model);
std::string identity_hex(const ModelIdentity& id);

struct KvFile {
  ModelIdentity model{};
  int64_t ctx = 0;
  std::vector<int32_t> tokens;
  std::string note;
  std::vector<uint8_t> state;  // Session::serialize()
};

// Writes atomically (PATH.tmp.PID, then rename): a crash never leaves half a file under PATH.
void write_kv_file(const std::string& path, const KvFile& f);
// Reads and checks magic, version, sizes and checksum; throws ds4::Error with one sentence
// naming the file otherwise.
KvFile read_kv_file(const std::string& path);

// Saves the generator's live session (with `note`).
void save_session(const std::string& path, const Generator& g, const std::string& note = {});
// Loads a file written by save_session into the generator's session, refusing files of another
// model, or whose state holds more tokens than the session's context. Returns the file's note.
std::string load_session(const std::string& path, Generator& g);

}  // namespace ds4::gen
