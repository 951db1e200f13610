#include "quant/iq2_xxs_search.h"

#include <algorithm>
#include <utility>

#include "quant/quant.h"

namespace ds4::quant::detail {
namespace {

Iq2xxsSearchTables build() {
  Iq2xxsSearchTables t;
  const uint16_t* kgrid = kgrid_2bit_256();
  for (int n = 0; n < 256; ++n)
    for (int i = 0; i < 8; ++i) t.grid8[n][i] = static_cast<int8_t>(2 * ((kgrid[n] >> 2 * i) & 3) + 1);
  t.map.assign(Iq2xxsSearchTables::kMapSize, -1);
  for (int n = 0; n < 256; ++n) t.map[kgrid[n]] = n;

  // For each off-grid tuple keep every grid point in the two nearest distance shells, sorted
  // by (distance, index) as ggml's qsort comparator does (formats.md 3.6).
  std::vector<std::pair<int, int>> dist(256);
  for (int u = 0; u < Iq2xxsSearchTables::kMapSize; ++u) {
    if (t.map[u] >= 0) continue;
    ++t.off_grid_codes;
    int pos[8];
    for (int k = 0; k < 8; ++k) pos[k] = 2 * ((u >> 2 * k) & 3) + 1;
    for (int n = 0; n < 256; ++n) {
      int d2 = 0;
      for (int k = 0; k < 8; ++k) d2 += (t.grid8[n][k] - pos[k]) * (t.grid8[n][k] - pos[k]);
      dist[n] = {d2, n};
    }
    std::sort(dist.begin(), dist.end());
    int count = 0, nhave = 1, d2 = dist[0].first;
    for (int j = 0; j < 256; ++j) {
      if (dist[j].first > d2) {
        if (nhave == 2) break;
        d2 = dist[j].first;
        ++nhave;
      }
      ++count;
    }
    t.map[u] = -static_cast<int32_t>(t.neighbours.size() + 1);
    t.neighbours.push_back(static_cast<uint16_t>(count));
    for (int j = 0; j < count; ++j) t.neighbours.push_back(static_cast<uint16_t>(dist[j].second));
  }
  return t;
}

}  // namespace

const Iq2xxsSearchTables& iq2xxs_search_tables() {
  static const Iq2xxsSearchTables tables = build();  // C++11 magic static: one-time, thread-safe
  return tables;
}

}  // namespace ds4::quant::detail
