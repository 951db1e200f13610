// Quantizer-side IQ2_XXS tables derived from kgrid_2bit_256 (formats.md 3.6): the grid as
// {1,3,5} levels, the map from packed 2-bit tuples to grid indices, and the neighbour lists
// that project off-grid tuples back onto the grid. Built once, on first use (thread-safe).
#pragma once

#include <cstdint>
#include <vector>

namespace ds4::quant::detail {

struct Iq2xxsSearchTables {
  static constexpr int kMapSize = 43692;  // every u16 packing eight 2-bit levels up to 0xAAAB
  int8_t grid8[256][8];                   // element i = 2*level_i + 1 in {1,3,5}
  uint8_t levels[256][8];                 // level_i in {0,1,2}, for the neighbour search
  std::vector<int32_t> map;               // map[u] = grid index, or -(offset+1) into neighbours
  std::vector<uint16_t> neighbours;       // [count, idx...] lists, two nearest distance shells
  int off_grid_codes = 0;                 // 43,436 expected
};

const Iq2xxsSearchTables& iq2xxs_search_tables();

}  // namespace ds4::quant::detail
