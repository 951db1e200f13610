#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string>

#include "core/error.h"

namespace ds4::tok {
namespace {

// `\s` spelled out as the Unicode White_Space property, which is what the reference
// (Hugging Face tokenizers, Oniguruma) uses. PCRE2's own \s differs on U+0085 and
// JavaScript's includes U+FEFF; docs/tokenizer.md lists the consequence.
#define DS4_WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

// Pass 1: digit runs split into groups of at most three.
constexpr const char* kDigits = "\\p{N}{1,3}";
// Pass 2: runs of CJK ideographs U+4E00..U+9FA5, Hiragana and Katakana.
constexpr const char* kCjk = "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+";
// Pass 3: the general pattern, as in the tokenizer.json of DeepSeek V3 (and llama.cpp's
// joyai-llm), with \s replaced by DS4_WS.
constexpr const char* kGeneral =
    "[\\x21-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7e][A-Za-z]+"
    "|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\\r\\n]*"
    "|[" DS4_WS "]*[\\r\\n]+"
    "|[" DS4_WS "]+(?![^" DS4_WS "])"
    "|[" DS4_WS "]+";

struct Regex {
  pcre2_code* code = nullptr;
  explicit Regex(const char* pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    // MATCH_INVALID_UTF: invalid byte sequences simply never match (they stay in gaps)
    // instead of making every match call fail.
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("pre-tokenizer regex does not compile at offset {}: {}", off,
           reinterpret_cast<const char*>(msg));
    }
    // JIT is an optimisation; without it (unsupported CPU) matching still works.
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
};

// Per-thread match state: match data sized for one pair and a JIT stack large enough for
// long whitespace or punctuation runs.
struct ThreadState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadState() {
    md = pcre2_match_data_create(1, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    if (!md || !mctx || !stack) fail("pre-tokenizer: out of memory for PCRE2 match state");
    pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~ThreadState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mctx);
    pcre2_match_data_free(md);
  }
};

ThreadState& thread_state() {
  thread_local ThreadState s;
  return s;
}

}  // namespace

struct PreTokenizer::Impl {
  Regex digits{kDigits};
  Regex cjk{kCjk};
  Regex general{kGeneral};
};

PreTokenizer::PreTokenizer() : impl_(std::make_unique<Impl>()) {}
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

namespace {

// Hugging Face `Split` with behaviour "Isolated": every match and every non-empty gap
// between matches becomes a piece. The piece is the whole subject, so look-aheads such as
// `(?!\S)` see the end of the piece, not the text after it (that is what the reference does).
template <typename F>
void split_isolated(const Regex& re, std::string_view s, F&& piece) {
  ThreadState& ts = thread_state();
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0, gap = 0;
  while (pos < s.size()) {
    int rc = pcre2_match(re.code, subject, s.size(), pos, 0, ts.md, ts.mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("pre-tokenizer: regex match failed: {}", reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ts.md);
    size_t b = ov[0], e = ov[1];
    if (e == b) {  // cannot happen with these patterns; guard against an endless loop
      ++pos;
      continue;
    }
    if (b > gap) piece(s.substr(gap, b - gap), false);
    piece(s.substr(b, e - b), true);
    pos = gap = e;
  }
  if (gap < s.size()) piece(s.substr(gap), false);
}

}  // namespace

void PreTokenizer::split_impl(std::string_view text,
                              const std::function<void(std::string_view)>& emit) const {
  const Impl& im = *impl_;
  split_isolated(im.digits, text, [&](std::string_view p1, bool digit_match) {
    // A digit-only piece matches neither later pattern (no \p{N} is in the CJK ranges, and
    // every general alternative needs a letter, mark, punctuation, symbol or space).
    if (digit_match) {
      emit(p1);
      return;
    }
    split_isolated(im.cjk, p1, [&](std::string_view p2, bool) {
      // CJK runs still go through pass 3: U+30FB (Katakana middle dot) is punctuation.
      split_isolated(im.general, p2, [&](std::string_view p3, bool) { emit(p3); });
    });
  });
}

}  // namespace ds4::tok
