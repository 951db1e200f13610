// A byte-level recognizer of one JSON value (RFC 8259), used to guide the sampling of a DSML
// parameter written with string="false": the model's tokens are accepted only while their bytes
// keep the value a valid JSON prefix, and a value cut short (token limit, a special token) is
// completed with the fewest bytes that make it valid. Tokens split UTF-8 characters and escapes
// anywhere, so the state is kept per byte, not per token.
//
// Stricter than JSON where a value would not survive the JSON parsers clients use (the server
// itself parses arguments with nlohmann): no whitespace before or after the top-level value
// (DSML writes the value right after '>'), nesting deeper than kMaxDepth is refused, \u escapes
// must form valid surrogate pairs (nlohmann rejects lone surrogates), and numbers stay finite
// doubles (at most kMaxDigits integer digits and kMaxExpDigits exponent digits: 1e999 is
// out of range for nlohmann) and a top-level integer fits int64 (kMaxIntDigits).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace ds4::server {

// JSON schema "type" names as a bit set.
enum JsonKind : uint8_t {
  kJsonNull = 1,
  kJsonBool = 2,
  kJsonInteger = 4,
  kJsonNumber = 8,  // includes integers
  kJsonString = 16,
  kJsonObject = 32,
  kJsonArray = 64,
  kJsonAny = 127,
};

// The kinds a JSON schema allows at its top level: "type" as a string or an array of names,
// `enum`/`const` values' kinds; anything else (no type, unknown names) allows every kind.
uint8_t json_kinds_of_schema(const nlohmann::ordered_json& schema);

class JsonGuide {
 public:
  static constexpr int kMaxDepth = 24;
  static constexpr int kMaxDigits = 100;
  static constexpr int kMaxIntDigits = 18;
  static constexpr int kMaxExpDigits = 2;

  explicit JsonGuide(uint8_t kinds = kJsonAny);

  // Feeds bytes; false (and the state unchanged) when they cannot continue a valid value.
  bool feed(std::string_view bytes);
  // Whether `bytes` would be accepted, without changing the state.
  bool accepts(std::string_view bytes) const;
  // The bytes so far are a complete value (a number may still grow: see finished()).
  bool complete() const;
  // Complete and nothing can follow (closed container, string or literal at the top).
  bool finished() const { return mode_ == Mode::Done; }
  // Shortest bytes that make the value complete (empty when it already is).
  std::string completion() const;
  // Nothing fed yet.
  bool empty() const { return fed_ == 0; }

 private:
  enum class Mode : uint8_t {
    Value,       // expecting a value (after '[', ',' in an array, ':' or at the start)
    ArrayFirst,  // just after '[': a value or ']'
    ObjectFirst, // just after '{': a key or '}'
    ObjectKey,   // after ',' in an object: a key
    Colon,       // after a key
    After,       // after a value inside a container: ',' or the closing bracket
    Literal,     // inside true / false / null
    Number,
    String,
    Done,        // top-level value finished
  };
  enum class Num : uint8_t { Minus, Zero, Int, Dot, Frac, Exp, ExpSign, ExpInt };
  enum class Str : uint8_t { Normal, Escape, Hex, LowBackslash, LowU, Utf8 };

  bool byte(unsigned char c);
  bool start_value(unsigned char c);
  bool open(char container, Mode next);
  void value_done();
  bool number_complete() const;
  // One byte that moves an incomplete value towards completion (completion()'s step).
  unsigned char next_completion_byte() const;

  Mode mode_ = Mode::Value;
  uint8_t kinds_;
  uint8_t depth_ = 0;
  std::array<char, kMaxDepth> stack_{};  // 'o' object, 'a' array
  // Literal
  const char* lit_ = nullptr;
  uint8_t lit_pos_ = 0;
  // Number
  Num num_ = Num::Minus;
  bool int_only_ = false;
  uint16_t digits_ = 0;  // digits of the integer part or of the exponent, whichever is current
  // String
  Str str_ = Str::Normal;
  bool key_ = false;          // the string is an object key
  uint8_t hex_pos_ = 0;       // digits seen in the current \uXXXX
  bool low_needed_ = false;   // the current \u escape must be a low surrogate
  bool hex_d_ = false;        // the current \u escape started with 'd' (maybe a surrogate)
  bool high_ = false;         // the current \u escape is a high surrogate
  uint8_t utf8_left_ = 0;     // continuation bytes still expected
  unsigned char utf8_lo_ = 0x80, utf8_hi_ = 0xBF;  // range of the next continuation byte
  uint64_t fed_ = 0;
};

}  // namespace ds4::server
