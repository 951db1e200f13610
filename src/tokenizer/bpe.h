// Byte-level BPE merges (architecture.md 7.1): within one pre-token, start from one token per
// byte and repeatedly apply the lowest-ranked merge among adjacent pairs (leftmost first on
// ties) until none applies. Implemented with a linked list of symbols and a min-heap of
// candidate merges, so a pre-token of n bytes costs O(n log n) even for very long runs.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace ds4::tok {

class BpeMerges {
 public:
  struct Merge {
    int32_t left;
    int32_t right;
    int32_t result;
  };

  BpeMerges() = default;
  // `byte_ids[b]` is the token of the single byte b (-1 if the vocabulary lacks it); merges
  // are in rank order (index = rank).
  BpeMerges(std::vector<int32_t> byte_ids, std::vector<Merge> merges);

  // Appends the tokens of one pre-token to `out`. Throws ds4::Error if a byte has no token.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  const std::vector<Merge>& merges() const { return merges_; }
  const std::vector<int32_t>& byte_ids() const { return byte_ids_; }

 private:
  struct Slot {
    uint64_t key;  // (left << 32) | right, or kEmpty
    uint32_t rank;
    int32_t result;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static constexpr size_t kShortWord = 24;
  const Slot* find(int32_t left, int32_t right) const;

  std::vector<int32_t> byte_ids_;
  std::vector<Merge> merges_;
  std::vector<Slot> table_;  // open addressing, power-of-two size, linear probing
  uint64_t mask_ = 0;
};

}  // namespace ds4::tok
