// matvec and matmul: per-row agreement with vec_dot, batch agreement with matvec, and
// thread-count independence, for every weight type and ISA.
#include <gtest/gtest.h>

#include "cpu_test_util.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace ds4::cpu::test {
namespace {

struct Shape {
  int64_t nrows, ncols;
};

// Odd row counts, the minimum width and the Flash widths.
std::vector<Shape> shapes(GgmlType t) {
  const int64_t b = block_elems(t) == 1 ? 32 : block_elems(t);
  return {{1, b}, {37, b}, {13, 3 * b}, {9, 2048}, {5, 4096}};
}

std::string label(GgmlType t, Isa isa, Shape s) {
  return std::string(type_name(t)) + " " + isa_name(isa) + " " + std::to_string(s.nrows) + "x" +
         std::to_string(s.ncols);
}

TEST(Matvec, EqualsPerRowVecDot) {
  IsaGuard guard;
  std::mt19937 rng(5);
  for (GgmlType t : weight_types()) {
    for (Shape s : shapes(t)) {
      const auto w = exact_weights(t, s.nrows, s.ncols, rng);
      const auto x = gaussian(s.ncols, rng);
      std::vector<uint8_t> act(activation_bytes(t, s.ncols));
      quantize_activation(t, x.data(), act.data(), s.ncols);
      const size_t rb = row_bytes(t, s.ncols);
      for (Isa isa : available_isas()) {
        set_isa(isa);
        std::vector<float> y(static_cast<size_t>(s.nrows), -1.0f);
        matvec(t, w.data(), s.nrows, s.ncols, x.data(), y.data());
        for (int64_t r = 0; r < s.nrows; ++r)
          ASSERT_EQ(y[r], vec_dot(t, w.data() + r * rb, act.data(), s.ncols)) << label(t, isa, s);
      }
    }
  }
}

TEST(Matvec, PreQuantizedActivationEqualsMatvec) {
  IsaGuard guard;
  std::mt19937 rng(15);
  ThreadPool pool(2);
  for (GgmlType t : weight_types()) {
    const Shape s{19, 2048};
    const auto w = exact_weights(t, s.nrows, s.ncols, rng);
    const auto x = gaussian(s.ncols, rng);
    std::vector<uint8_t> act(activation_bytes(t, s.ncols));
    quantize_activation(t, x.data(), act.data(), s.ncols);
    std::vector<float> y(static_cast<size_t>(s.nrows)), ya(y.size());
    matvec(t, w.data(), s.nrows, s.ncols, x.data(), y.data());
    matvec_act(t, w.data(), s.nrows, s.ncols, act.data(), ya.data(), &pool);
    EXPECT_EQ(y, ya) << type_name(t);
  }
}

TEST(Matvec, ThreadedEqualsSingleThreaded) {
  IsaGuard guard;
  std::mt19937 rng(6);
  ThreadPool pool(4);
  for (GgmlType t : weight_types()) {
    const Shape s{301, block_elems(t) == 1 ? 512 : 2048};
    const auto w = exact_weights(t, s.nrows, s.ncols, rng);
    const auto x = gaussian(s.ncols, rng);
    for (Isa isa : available_isas()) {
      set_isa(isa);
      std::vector<float> y1(static_cast<size_t>(s.nrows)), y4(static_cast<size_t>(s.nrows));
      matvec(t, w.data(), s.nrows, s.ncols, x.data(), y1.data());
      matvec(t, w.data(), s.nrows, s.ncols, x.data(), y4.data(), &pool);
      EXPECT_EQ(y1, y4) << label(t, isa, s);
    }
  }
}

TEST(Matmul, EqualsRepeatedMatvec) {
  IsaGuard guard;
  std::mt19937 rng(8);
  ThreadPool pool(3);
  for (GgmlType t : weight_types()) {
    for (Shape s : {shapes(t)[1], shapes(t)[3]}) {
      const int64_t nb = 5;
      const auto w = exact_weights(t, s.nrows, s.ncols, rng);
      const auto X = gaussian(nb * s.ncols, rng);
      for (Isa isa : available_isas()) {
        set_isa(isa);
        std::vector<float> Y(static_cast<size_t>(nb * s.nrows)), Yt(Y.size());
        matmul(t, w.data(), s.nrows, s.ncols, X.data(), nb, Y.data());
        matmul(t, w.data(), s.nrows, s.ncols, X.data(), nb, Yt.data(), &pool);
        EXPECT_EQ(Y, Yt) << label(t, isa, s) << " threaded";
        for (int64_t b = 0; b < nb; ++b) {
          std::vector<float> y(static_cast<size_t>(s.nrows));
          matvec(t, w.data(), s.nrows, s.ncols, X.data() + b * s.ncols, y.data());
          EXPECT_EQ(std::vector<float>(Y.begin() + b * s.nrows, Y.begin() + (b + 1) * s.nrows), y)
              << label(t, isa, s) << " batch " << b;
        }
      }
    }
  }
}

// Register-blocked matmul tiles (Q8_0, Q2_K, IQ2_XXS): every token count that splits into
// full and partial token groups, realistic weights and activations (float sums that are not
// exact, so a different summation order would show), each output equal to vec_dot.
TEST(Matmul, TilesEqualVecDotBitForBit) {
  IsaGuard guard;
  std::mt19937 rng(21);
  ThreadPool pool(2);
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::IQ2_XXS, GgmlType::Q4_K}) {
    const int64_t nrows = 7, ncols = t == GgmlType::Q8_0 ? 1056 : 1280;  // odd block counts
    const auto w = real_weights(t, nrows, ncols, rng);
    const size_t rb = row_bytes(t, ncols), ab = activation_bytes(t, ncols);
    for (int64_t nb : {1, 3, 4, 8, 13}) {
      const auto X = gaussian(nb * ncols, rng);
      std::vector<uint8_t> acts(ab * static_cast<size_t>(nb));
      for (int64_t b = 0; b < nb; ++b)
        quantize_activation(t, X.data() + b * ncols, acts.data() + b * ab, ncols);
      for (Isa isa : available_isas()) {
        set_isa(isa);
        std::vector<float> Y(static_cast<size_t>(nb * nrows));
        matmul(t, w.data(), nrows, ncols, X.data(), nb, Y.data(), &pool);
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t r = 0; r < nrows; ++r)
            ASSERT_EQ(Y[b * nrows + r], vec_dot(t, w.data() + r * rb, acts.data() + b * ab, ncols))
                << type_name(t) << " " << isa_name(isa) << " nb=" << nb << " token " << b << " row " << r;
      }
    }
  }
}

TEST(Matmul, EmptyAndInvalid) {
  std::vector<uint8_t> w(row_bytes(GgmlType::Q8_0, 64) * 2);
  std::vector<float> x(128), y(4, 7.0f);
  matmul(GgmlType::Q8_0, w.data(), 2, 64, x.data(), 0, y.data());
  matvec(GgmlType::Q8_0, w.data(), 0, 64, x.data(), y.data());
  EXPECT_EQ(y[0], 7.0f);  // nothing written
  EXPECT_THROW(matvec(GgmlType::Q8_0, w.data(), 2, 63, x.data(), y.data()), Error);
  EXPECT_THROW(matvec(GgmlType::I32, w.data(), 2, 64, x.data(), y.data()), Error);
  EXPECT_THROW(matmul(GgmlType::Q4_K, w.data(), 1, 128, x.data(), 1, y.data()), Error);
  EXPECT_THROW(matmul(GgmlType::Q8_0, w.data(), 2, 64, x.data(), -1, y.data()), Error);
}

}  // namespace
}  // namespace ds4::cpu::test
