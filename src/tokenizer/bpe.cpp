#include "tokenizer/bpe.h"

#include <algorithm>

#include "core/error.h"

namespace ds4::tok {
namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

uint64_t mix(uint64_t x) {  // splitmix64 finaliser: ids are dense, so spread the bits
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

}  // namespace

BpeMerges::BpeMerges(std::vector<int32_t> byte_ids, std::vector<Merge> merges)
    : byte_ids_(std::move(byte_ids)), merges_(std::move(merges)) {
  if (byte_ids_.size() != 256) fail("BPE: byte table must have 256 entries");
  size_t cap = 16;
  while (cap < merges_.size() * 2) cap <<= 1;
  table_.assign(cap, Slot{kEmpty, 0, 0});
  mask_ = cap - 1;
  for (size_t r = 0; r < merges_.size(); ++r) {
    const Merge& m = merges_[r];
    uint64_t key = pair_key(m.left, m.right);
    for (uint64_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (table_[i].key == kEmpty) {
        table_[i] = Slot{key, static_cast<uint32_t>(r), m.result};
        break;
      }
      if (table_[i].key == key) break;  // duplicate merge: the first (lowest rank) wins
    }
  }
}

const BpeMerges::Slot* BpeMerges::find(int32_t left, int32_t right) const {
  uint64_t key = pair_key(left, right);
  for (uint64_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
    const Slot& s = table_[i];
    if (s.key == key) return &s;
    if (s.key == kEmpty) return nullptr;
  }
}

void BpeMerges::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  const size_t n = word.size();
  if (n == 0) return;
  if (n == 1) {
    int32_t id = byte_ids_[static_cast<uint8_t>(word[0])];
    if (id < 0) fail("BPE: the vocabulary has no token for byte 0x{:02x}", static_cast<uint8_t>(word[0]));
    out.push_back(id);
    return;
  }

  // Short words (the vast majority): keep the rank of every adjacent pair in an array, merge
  // the lowest (leftmost on ties), and look up only the two pairs that changed. O(n^2) moves
  // in the worst case but ~2 hash lookups per merge; same result as the heap below.
  if (n <= kShortWord) {
    int32_t ids[kShortWord];
    uint32_t rank[kShortWord];
    int32_t result[kShortWord];
    size_t m = n;
    for (size_t i = 0; i < n; ++i) {
      ids[i] = byte_ids_[static_cast<uint8_t>(word[i])];
      if (ids[i] < 0) fail("BPE: the vocabulary has no token for byte 0x{:02x}", static_cast<uint8_t>(word[i]));
    }
    auto look = [&](size_t i) {
      const Slot* sl = find(ids[i], ids[i + 1]);
      rank[i] = sl ? sl->rank : UINT32_MAX;
      result[i] = sl ? sl->result : -1;
    };
    for (size_t i = 0; i + 1 < m; ++i) look(i);
    while (m > 1) {
      size_t best = 0;
      for (size_t i = 1; i + 1 < m; ++i)
        if (rank[i] < rank[best]) best = i;
      if (rank[best] == UINT32_MAX) break;
      ids[best] = result[best];
      for (size_t i = best + 1; i + 1 < m; ++i) ids[i] = ids[i + 1];
      for (size_t i = best + 1; i + 2 < m; ++i) {
        rank[i] = rank[i + 1];
        result[i] = result[i + 1];
      }
      --m;
      if (best + 1 < m) look(best);
      if (best > 0) look(best - 1);
    }
    out.insert(out.end(), ids, ids + m);
    return;
  }

  struct Sym {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  // Reused per thread so that the common short word allocates nothing.
  thread_local std::vector<Sym> syms;
  syms.resize(n);
  for (size_t i = 0; i < n; ++i) {
    int32_t id = byte_ids_[static_cast<uint8_t>(word[i])];
    if (id < 0) fail("BPE: the vocabulary has no token for byte 0x{:02x}", static_cast<uint8_t>(word[i]));
    syms[i] = Sym{id, static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
  }

  // Candidate merge of the pair starting at `pos`; stale entries are detected on pop by
  // re-checking that the pair still produces the same result.
  struct Cand {
    uint32_t rank;
    int32_t pos;
    int32_t right_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Cand> heap;
  heap.clear();
  const auto later = [](const Cand& x, const Cand& y) { return x > y; };  // min-heap
  auto push = [&](int32_t pos) {
    if (pos < 0) return;
    int32_t nx = syms[pos].next;
    if (nx < 0) return;
    if (const Slot* s = find(syms[pos].id, syms[nx].id)) {
      heap.push_back(Cand{s->rank, pos, syms[nx].id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    Cand c = heap.back();
    heap.pop_back();
    Sym& a = syms[c.pos];
    if (!a.alive || a.next < 0) continue;
    Sym& b = syms[a.next];
    if (b.id != c.right_id) continue;
    const Slot* s = find(a.id, b.id);
    if (!s || s->rank != c.rank) continue;
    a.id = s->result;
    b.alive = false;
    a.next = b.next;
    if (b.next >= 0) syms[b.next].prev = c.pos;
    push(a.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

}  // namespace ds4::tok
