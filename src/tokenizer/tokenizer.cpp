#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <unordered_map>

#include "core/error.h"

namespace ds4::tok {

namespace {

// Byte trie of the added tokens for leftmost-longest matching.
class AddedTrie {
 public:
  AddedTrie() { root_.fill(-1); }

  void insert(std::string_view s, int32_t id) {
    if (s.empty()) return;
    int32_t node = root_[static_cast<uint8_t>(s[0])];
    if (node < 0) {
      node = new_node();
      root_[static_cast<uint8_t>(s[0])] = node;
    }
    for (size_t i = 1; i < s.size(); ++i) {
      int32_t next = child(node, static_cast<uint8_t>(s[i]));
      if (next < 0) {
        next = new_node();
        nodes_[node].kids.emplace_back(static_cast<uint8_t>(s[i]), next);
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = id;  // first id wins for duplicates
  }

  bool may_start(uint8_t b) const { return root_[b] >= 0; }

  // Longest added token starting at s[0]: (id, length) or (-1, 0).
  std::pair<int32_t, size_t> match(std::string_view s) const {
    std::pair<int32_t, size_t> best{-1, 0};
    int32_t node = root_[static_cast<uint8_t>(s[0])];
    for (size_t i = 1; node >= 0; ++i) {
      if (nodes_[node].token >= 0) best = {nodes_[node].token, i};
      if (i >= s.size()) break;
      node = child(node, static_cast<uint8_t>(s[i]));
    }
    return best;
  }

 private:
  struct Node {
    int32_t token = -1;
    std::vector<std::pair<uint8_t, int32_t>> kids;
  };
  int32_t new_node() {
    nodes_.emplace_back();
    return static_cast<int32_t>(nodes_.size() - 1);
  }
  int32_t child(int32_t node, uint8_t b) const {
    for (const auto& [c, n] : nodes_[node].kids)
      if (c == b) return n;
    return -1;
  }
  std::array<int32_t, 256> root_;
  std::vector<Node> nodes_;
};

}  // namespace

struct Tokenizer::Impl {
  std::unordered_map<std::string, int32_t> normal;  // raw bytes -> id (BPE tokens)
  std::unordered_map<std::string, int32_t> added;   // content -> id
  AddedTrie trie;
  bool has_added = false;
  BpeMerges bpe;
  PreTokenizer pre;

  // Memo of pre-token -> tokens shared across calls: real text repeats words, and BPE is
  // most of the cost. One encode call holds the lock for its whole duration (try_lock, so a
  // concurrent call never waits: it just encodes without the memo). Bounded by clearing.
  struct StrHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Memo {
    std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, StrHash, std::equal_to<>> map;
    std::vector<int32_t> pool;
  };
  static constexpr size_t kMemoMaxEntries = 1 << 18;
  mutable std::mutex memo_mu;
  mutable Memo memo;

  void encode_plain(std::string_view text, std::vector<int32_t>& out) const {
    std::unique_lock lock(memo_mu, std::try_to_lock);
    if (!lock.owns_lock()) {
      pre.split(text, [&](std::string_view piece) { bpe.encode_word(piece, out); });
      return;
    }
    if (memo.map.size() > kMemoMaxEntries) {
      memo.map.clear();
      memo.pool.clear();
    }
    pre.split(text, [&](std::string_view piece) {
      if (piece.size() < 2 || piece.size() > 64) {
        bpe.encode_word(piece, out);
        return;
      }
      if (auto it = memo.map.find(piece); it != memo.map.end()) {
        auto [at, len] = it->second;
        out.insert(out.end(), memo.pool.begin() + at, memo.pool.begin() + at + len);
        return;
      }
      size_t before = out.size();
      bpe.encode_word(piece, out);
      memo.map.emplace(std::string(piece), std::pair<uint32_t, uint32_t>(static_cast<uint32_t>(memo.pool.size()),
                                                                         static_cast<uint32_t>(out.size() - before)));
      memo.pool.insert(memo.pool.end(), out.begin() + before, out.end());
    });
  }

  void clear_memo() const {
    std::lock_guard lock(memo_mu);
    memo.map.clear();
    memo.pool.clear();
  }
};

Tokenizer::Tokenizer(std::vector<TokenInfo> tokens,
                     const std::vector<std::pair<int32_t, int32_t>>& merges)
    : tokens_(std::move(tokens)), impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  const auto n = static_cast<int32_t>(tokens_.size());
  im.normal.reserve(tokens_.size());
  for (int32_t id = 0; id < n; ++id) {
    const TokenInfo& t = tokens_[id];
    if (t.is_added()) {
      if (t.bytes.empty()) fail("tokenizer: added token {} is empty", id);
      im.added.emplace(t.bytes, id);
      im.trie.insert(t.bytes, id);
      im.has_added = true;
    } else if (t.type == TokenType::Normal || t.type == TokenType::Byte) {
      im.normal.emplace(t.bytes, id);
    }
  }
  std::vector<int32_t> byte_ids(256, -1);
  for (int b = 0; b < 256; ++b) {
    auto it = im.normal.find(std::string(1, static_cast<char>(b)));
    if (it != im.normal.end()) byte_ids[b] = it->second;
  }
  std::vector<BpeMerges::Merge> ms;
  ms.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    auto [a, b] = merges[r];
    if (a < 0 || a >= n || b < 0 || b >= n) fail("tokenizer: merge {} refers to a token outside the vocabulary", r);
    auto it = im.normal.find(tokens_[a].bytes + tokens_[b].bytes);
    if (it == im.normal.end())
      fail("tokenizer: merge {} ({} + {}) produces a token missing from the vocabulary", r, a, b);
    ms.push_back({a, b, it->second});
  }
  im.bpe = BpeMerges(std::move(byte_ids), std::move(ms));
  if (auto id = find("<｜begin▁of▁sentence｜>")) bos_ = *id;
  if (auto id = find("<｜end▁of▁sentence｜>")) eos_ = *id;
}

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_append(text, allow_special, out);
  return out;
}

void Tokenizer::encode_append(std::string_view text, bool allow_special,
                              std::vector<int32_t>& out) const {
  const Impl& im = *impl_;
  if (!allow_special || !im.has_added) {
    im.encode_plain(text, out);
    return;
  }
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!im.trie.may_start(static_cast<uint8_t>(text[i]))) continue;
    auto [id, len] = im.trie.match(text.substr(i));
    if (id < 0) continue;
    if (i > start) im.encode_plain(text.substr(start, i - start), out);
    out.push_back(id);
    start = i + len;
    i = start - 1;
  }
  if (start < text.size()) im.encode_plain(text.substr(start), out);
}

const TokenInfo& Tokenizer::token(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} is outside the vocabulary (size {})", id, vocab_size());
  return tokens_[id];
}

const std::string& Tokenizer::token_bytes(int32_t id) const { return token(id).bytes; }
TokenType Tokenizer::token_type(int32_t id) const { return token(id).type; }

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

std::optional<int32_t> Tokenizer::find(std::string_view bytes) const {
  std::string key(bytes);
  if (auto it = impl_->added.find(key); it != impl_->added.end()) return it->second;
  if (auto it = impl_->normal.find(key); it != impl_->normal.end()) return it->second;
  return std::nullopt;
}

int32_t Tokenizer::require(std::string_view bytes) const {
  auto id = find(bytes);
  if (!id) fail("tokenizer has no token {}", bytes);
  return *id;
}

void Tokenizer::clear_cache() const { impl_->clear_memo(); }

std::vector<std::pair<int32_t, int32_t>> Tokenizer::merge_pairs() const {
  std::vector<std::pair<int32_t, int32_t>> out;
  out.reserve(impl_->bpe.merges().size());
  for (const auto& m : impl_->bpe.merges()) out.emplace_back(m.left, m.right);
  return out;
}

}  // namespace ds4::tok
