// Batched GEMM against a double reference, on both schedules (Eigen blocks, one lane per entry): every transpose combination, beta zero (over NaN garbage) and not,
// padded leading dimensions (the padding left untouched), row and column counts across the host blocks, float and
// double.
#include "camex/kernels/gemm.hpp"

#include "testing.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

template <class T>
void check(Schedule schedule, Transpose ta, Transpose tb, int m, int n, int k, double beta,
           std::mt19937_64& gen) {
  BOOST_TEST_CONTEXT((schedule == Schedule::tiled ? "tiled" : "lanes") << ", T = " << (sizeof(T) == 4 ? "float" : "double") << ", transpose a " << (ta == Transpose::yes)
                            << ", transpose b " << (tb == Transpose::yes) << ", m " << m << ", n " << n
                            << ", k " << k << ", beta " << beta) {
    const int batch = 3;
    const bool at = ta == Transpose::yes, bt = tb == Transpose::yes;
    // Stored shapes with two columns of padding each.
    const int a_rows = at ? k : m, a_cols = (at ? m : k) + 2, b_rows = bt ? n : k, b_cols = (bt ? k : n) + 2;
    const int c_cols = n + 2;
    std::vector<HostMatrix> a, b, c;
    for (int i = 0; i < batch; ++i) {
      a.push_back(rounded<T>(random_matrix(a_rows, a_cols, gen)));
      b.push_back(rounded<T>(random_matrix(b_rows, b_cols, gen)));
      c.push_back(rounded<T>(random_matrix(m, c_cols, gen)));
    }
    const auto stack = [](const std::vector<HostMatrix>& items) {
      HostMatrix out(items[0].rows() * static_cast<Eigen::Index>(items.size()), items[0].cols());
      for (std::size_t i = 0; i < items.size(); ++i) out.middleRows(i * items[0].rows(), items[0].rows()) = items[i];
      return out;
    };
    const auto a_dev = to_device<T>(stack(a)), b_dev = to_device<T>(stack(b));
    auto c_dev = to_device<T>(stack(c));
    if (beta == 0) Kokkos::deep_copy(c_dev, std::numeric_limits<T>::quiet_NaN());
    const double alpha = 0.75;
    gemm(Space{}, GemmBatch<T>{.transpose_a = ta, .transpose_b = tb, .m = m, .n = n, .k = k,
                                               .alpha = static_cast<T>(alpha), .a = a_dev.data(), .lda = a_cols,
                                               .stride_a = static_cast<std::ptrdiff_t>(a_rows) * a_cols,
                                               .b = b_dev.data(), .ldb = b_cols,
                                               .stride_b = static_cast<std::ptrdiff_t>(b_rows) * b_cols,
                                               .beta = static_cast<T>(beta), .c = c_dev.data(), .ldc = c_cols,
                                               .stride_c = static_cast<std::ptrdiff_t>(m) * c_cols, .batch = batch},
                 schedule);
    const HostMatrix got = to_host(c_dev);
    double worst_ratio = 0;
    for (int i = 0; i < batch; ++i) {
      const HostMatrix op_a = at ? HostMatrix(a[i].leftCols(m).transpose()) : HostMatrix(a[i].leftCols(k));
      const HostMatrix op_b = bt ? HostMatrix(b[i].leftCols(k).transpose()) : HostMatrix(b[i].leftCols(n));
      const HostMatrix expected = alpha * op_a * op_b + beta * c[i].leftCols(n);
      const HostMatrix magnitude = std::abs(alpha) * op_a.cwiseAbs() * op_b.cwiseAbs() + std::abs(beta) * c[i].leftCols(n).cwiseAbs();
      const HostMatrix block = got.middleRows(i * m, m);
      // k products and sums plus the scaling and beta term: (k + 3) roundings of the magnitude, at most.
      const double u = unit_roundoff<T>;
      worst_ratio = std::max(worst_ratio, ((block.leftCols(n) - expected).cwiseAbs().array() /
                                           ((k + 3) * u * magnitude.array() + std::numeric_limits<double>::min()))
                                              .maxCoeff());
      // The padding columns of C are untouched.
      if (beta != 0) BOOST_TEST((block.rightCols(2) - c[i].rightCols(2)).cwiseAbs().maxCoeff() == 0.0);
    }
    BOOST_TEST(worst_ratio <= 1.0);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(batched_gemm_matches_double) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const Schedule schedule : {Schedule::tiled, Schedule::lane_per_parameter})
      for (const Transpose ta : {Transpose::no, Transpose::yes})
        for (const Transpose tb : {Transpose::no, Transpose::yes})
          for (const double beta : {0.0, -0.5}) {
            // n = 300 spans a full host column block and a partial one, m = 300 a full row block and a partial one.
            check<float>(schedule, ta, tb, 5, 300, 7, beta, gen);
            check<float>(schedule, ta, tb, 300, 11, 7, beta, gen);
            check<double>(schedule, ta, tb, 9, 13, 33, beta, gen);
          }
  }
}
