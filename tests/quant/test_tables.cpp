// IQ2_XXS tables against formats.md section 8 / Appendix A, and the derived search tables
// against the counts of formats.md 3.6.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <bit>
#include <cstring>
#include <string>

#include "quant/iq2_xxs_search.h"
#include "quant/quant.h"

namespace ds4::quant {
namespace {

std::string sha256_hex(const void* data, size_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, n, md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned int i = 0; i < len; ++i) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}

// The tables are hashed as little-endian bytes; the host is x86-64 (little-endian).
static_assert(std::endian::native == std::endian::little);

TEST(Tables, Iq2xxsGridSha256) {
  EXPECT_EQ(sha256_hex(iq2xxs_grid(), 256 * 8),
            "05826b5d3e472a3a78f196be62ac78acf81df0f909626e12ab9fa2a5d490dd54");
}

TEST(Tables, Kgrid2bit256Sha256) {
  EXPECT_EQ(sha256_hex(kgrid_2bit_256(), 256 * 2),
            "915952ebc4af8ddba8113583ca1316fc818843f7b825bbf1a25ae1c39bf0e16d");
}

TEST(Tables, KsignsSha256AndRule) {
  EXPECT_EQ(sha256_hex(ksigns_iq2xs(), 128),
            "a76742a603f8beca5212ecce0f1f02f11a4887fd2f7c8b15aca0ea3eb3380c31");
  for (int i = 0; i < 128; ++i)
    EXPECT_EQ(ksigns_iq2xs()[i], i | (std::popcount(unsigned(i)) % 2 ? 0x80 : 0)) << i;
}

TEST(Tables, GridEqualsKgridExpansionAndIsSorted) {
  static constexpr uint8_t kLevel[3] = {0x08, 0x19, 0x2B};
  for (int n = 0; n < 256; ++n) {
    for (int i = 0; i < 8; ++i) {
      const int l = (kgrid_2bit_256()[n] >> 2 * i) & 3;
      ASSERT_LT(l, 3);
      EXPECT_EQ((iq2xxs_grid()[n] >> 8 * i) & 0xFF, kLevel[l]) << n << "," << i;
    }
    if (n > 0) {
      EXPECT_LT(iq2xxs_grid()[n - 1], iq2xxs_grid()[n]);
      EXPECT_LT(kgrid_2bit_256()[n - 1], kgrid_2bit_256()[n]);
    }
  }
}

TEST(Tables, SearchTablesMatchDocumentedCounts) {
  const auto& t = detail::iq2xxs_search_tables();
  EXPECT_EQ(t.off_grid_codes, 43436);
  EXPECT_EQ(t.neighbours.size(), 417400u);
  EXPECT_EQ(t.neighbours.size() - static_cast<size_t>(t.off_grid_codes), 373964u);
  size_t max_list = 0;
  for (int u = 0; u < detail::Iq2xxsSearchTables::kMapSize; ++u) {
    const int32_t m = t.map[u];
    if (m >= 0) {
      EXPECT_EQ(kgrid_2bit_256()[m], u);
      continue;
    }
    const uint16_t* nb = t.neighbours.data() - m - 1;
    ASSERT_GT(nb[0], 0);
    max_list = std::max<size_t>(max_list, nb[0]);
    for (int j = 1; j <= nb[0]; ++j) ASSERT_LT(nb[j], 256);
  }
  EXPECT_EQ(max_list, 150u);  // "up to 150 entries each" (formats.md 8)
  for (int n = 0; n < 256; ++n)
    for (int i = 0; i < 8; ++i)
      EXPECT_EQ(t.grid8[n][i], 2 * ((kgrid_2bit_256()[n] >> 2 * i) & 3) + 1);
}

}  // namespace
}  // namespace ds4::quant
