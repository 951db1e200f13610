#include "quant/iq2_xxs_search.h"

#include <climits>

#include "quant/quant.h"

namespace ds4::quant::detail {
namespace {

Iq2xxsSearchTables build() {
  Iq2xxsSearchTables t;
  const uint16_t* kgrid = kgrid_2bit_256();
  for (int n = 0; n < 256; ++n)
    for (int i = 0; i < 8; ++i) {
      t.grid8[n][i] = static_cast<int8_t>(2 * ((kgrid[n] >> 2 * i) & 3) + 1);
      t.levels[n][i] = static_cast<uint8_t>((kgrid[n] >> 2 * i) & 3);
    }
  t.map.assign(Iq2xxsSearchTables::kMapSize, -1);
  for (int n = 0; n < 256; ++n) t.map[kgrid[n]] = n;

  // For each off-grid tuple keep every grid point in the two nearest distance shells, ordered
  // by (distance, index) as ggml's qsort comparator orders them (formats.md 3.6). Sorting is
  // not needed: the result is the first shell in index order, then the second.
  int dist[256];
  for (int u = 0; u < Iq2xxsSearchTables::kMapSize; ++u) {
    if (t.map[u] >= 0) continue;
    ++t.off_grid_codes;
    int pos[8];
    for (int k = 0; k < 8; ++k) pos[k] = 2 * ((u >> 2 * k) & 3) + 1;
    int d1 = INT_MAX, d2 = INT_MAX;  // smallest and second smallest distinct distance
    for (int n = 0; n < 256; ++n) {
      int d = 0;
      for (int k = 0; k < 8; ++k) d += (t.grid8[n][k] - pos[k]) * (t.grid8[n][k] - pos[k]);
      dist[n] = d;
      if (d < d1) {
        d2 = d1;
        d1 = d;
      } else if (d > d1 && d < d2) {
        d2 = d;
      }
    }
    const size_t head = t.neighbours.size();
    t.map[u] = -static_cast<int32_t>(head + 1);
    t.neighbours.push_back(0);
    for (int shell : {d1, d2}) {
      if (shell == INT_MAX) break;
      for (int n = 0; n < 256; ++n)
        if (dist[n] == shell) t.neighbours.push_back(static_cast<uint16_t>(n));
    }
    t.neighbours[head] = static_cast<uint16_t>(t.neighbours.size() - head - 1);
  }
  return t;
}

}  // namespace

const Iq2xxsSearchTables& iq2xxs_search_tables() {
  static const Iq2xxsSearchTables tables = build();  // C++11 magic static: one-time, thread-safe
  return tables;
}

}  // namespace ds4::quant::detail
