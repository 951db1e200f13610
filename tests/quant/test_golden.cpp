// Golden hashes of quantizer output. Each hash was checked byte for byte against ggml's
// reference quantizers (libggml-base of llama.cpp as bundled in node-llama-cpp 3.21.1:
// quantize_q2_K/q4_K/iq2_xxs, quantize_row_q8_0/mxfp4/q8_K_ref) on the same input, so these
// tests pin bit-exactness with the ggml/ds4 quantizers (formats.md 3.9) without needing ggml.
// The IQ2_XXS "energy" case is ggml given qw[c] = sum_r x[r,c]^2 (formats.md 3.7).
// Built with GCC (no FMA contraction); a compiler that contracts a*b+c may change the bytes.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <string>
#include <vector>

#include "quant/quant.h"
#include "quant_test_util.h"

namespace ds4::quant {
namespace {

std::string sha256_hex(const std::vector<uint8_t>& b) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(b.data(), b.size(), md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned int i = 0; i < len; ++i) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}

struct Golden {
  GgmlType type;
  bool importance;  // false: reference path (IQ2_XXS: weight-energy fallback)
  float scale;      // 1e-4 pushes the f16 block scales into subnormals
  const char* sha256;
};

const Golden kGolden[] = {
    {GgmlType::Q8_0, false, 1.0f, "7c9604fd649d321d02bfd88a95c2fa44e447b9e51ea8a7ed8502fce958ab944a"},
    {GgmlType::Q2_K, false, 1.0f, "31bb9722bf5f3224e35ef8c4cb51abd36651a902352e2edb88bdde41f6b9ef3e"},
    {GgmlType::Q2_K, true, 1.0f, "c103ae4ac74deabfd5b31089a330119a307d1b73997ef779d18a9721a0f0788c"},
    {GgmlType::Q4_K, false, 1.0f, "837d4bdfbf6cb7a1907b15864cbe9d9ad869b7cee8a0a3e3d1eb9fae0cc3a05d"},
    {GgmlType::Q4_K, true, 1.0f, "e7024f9ca3621f63dfc71a114e091a6cce0204ff24682623d43dcdbefaae0610"},
    {GgmlType::IQ2_XXS, true, 1.0f, "9090cadf3b2e3e14eb0dc7827e0aabceaeb461a7aea2a38a8881b0ba16d8cb63"},
    {GgmlType::IQ2_XXS, false, 1.0f, "7def53ef60ccef607233e34f3acc4c0f134720a8c0f911dd837792bc1dcee5a1"},
    {GgmlType::MXFP4, false, 1.0f, "57ac76ca34fd8ad3407e7b37cf93fcebfcea53947e2514c6375bf518c56c3384"},
    {GgmlType::Q8_K, false, 1.0f, "00c44e39b592a6ce7c7eee37b5c632b6cf3626248bc4ce8476d1f0125240d6e5"},
    {GgmlType::Q8_0, false, 1e-4f, "6bf7739d509ec13c97860f129388d9d9413e9634231c3820ccd927101653c5d4"},
    {GgmlType::Q2_K, false, 1e-4f, "e0a379ee5e13eeab9dd0822e74a48dd207e61c2b238ec99abff1bf8c36b1ecec"},
    {GgmlType::Q2_K, true, 1e-4f, "60f0ccda2ae8c86b29265c17ce28d14a73d338eafc04f32e8d6316e30f5d9ce1"},
    {GgmlType::Q4_K, false, 1e-4f, "067d0b967aa7e4b73e21343b4a4f54dd8f5848cca8ad8f824cda8f8fa37fce9f"},
    {GgmlType::Q4_K, true, 1e-4f, "4ee90e2d75144596723d881eae44906ae43adbdef537b6cc2aa61e431a3d9a67"},
    {GgmlType::IQ2_XXS, true, 1e-4f, "14535438623cef3378a459f1c195cdd85d41a9c3914753089c38cfaf657f04db"},
    {GgmlType::IQ2_XXS, false, 1e-4f, "4f56f9909265ce3e51f717c05f2eb5371adbbc29e476901658928fc93918ae37"},
    {GgmlType::MXFP4, false, 1e-4f, "552b7b3f3d4cd377781e7d64217d4e94d9387ba8d5152fd9555af960aacf9090"},
    {GgmlType::Q8_K, false, 1e-4f, "8011ad85529937fd4c18d55962f7a3144d3e383f8922b89a44212a3f27ec4e78"},
};

TEST(Golden, QuantizerBytesMatchGgml) {
  constexpr int64_t kRows = 8, kCols = 2048;
  const auto qw = testing::portable_importance(kCols, 7);
  for (const Golden& g : kGolden) {
    auto x = testing::portable_data(kRows * kCols, 42);
    for (auto& v : x) v *= g.scale;
    std::vector<uint8_t> q(row_bytes(g.type, kCols) * kRows);
    quantize_rows(g.type, x.data(), q.data(), kRows, kCols, g.importance ? qw.data() : nullptr);
    EXPECT_EQ(sha256_hex(q), g.sha256)
        << type_name(g.type) << (g.importance ? " imatrix" : " plain") << " scale " << g.scale;
  }
}

}  // namespace
}  // namespace ds4::quant
