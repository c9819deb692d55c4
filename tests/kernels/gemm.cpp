// Batched GEMM against a double reference, on both schedules (the space's tuned path: Eigen blocks on host spaces,
// cuBLAS on Cuda; and one lane per entry): every transpose combination, beta zero (over NaN garbage) and not, padded
// leading dimensions (the padding left untouched), an operand shared by the whole batch (stride 0), row and column
// counts across the host blocks, float and double; the same call twice gives the same bits. TF32 products where
// allowed, k = 0, and every rejected argument.
#include "camex/kernels/gemm.hpp"
#include "camex/kernels/detail/gemm_cublas.hpp"

#include "testing.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

/// Rounding bound of one entry, in units of its magnitude sum_q |alpha a_q b_q| + |beta c|: k products and sums
/// plus the scaling and the beta term, (k + 3) roundings at most; with TF32 inputs each factor is first rounded to
/// 10 mantissa bits as well (2 * 2^-11 more).
template <class T>
double rounding_bound(int k, bool tf32) {
  return (k + 3) * unit_roundoff<T> + (tf32 ? 2 * std::ldexp(1.0, -11) : 0.0);
}

template <class T>
void check(Schedule schedule, Transpose ta, Transpose tb, int m, int n, int k, double beta,
           std::mt19937_64& gen, bool shared_a = false, bool tf32 = false) {
  BOOST_TEST_CONTEXT((schedule == Schedule::tiled ? "tiled" : "lanes") << ", T = " << (sizeof(T) == 4 ? "float" : "double") << ", transpose a " << (ta == Transpose::yes)
                            << ", transpose b " << (tb == Transpose::yes) << ", m " << m << ", n " << n
                            << ", k " << k << ", beta " << beta << ", shared a " << shared_a << ", tf32 " << tf32) {
    const int batch = 3;
    const bool at = ta == Transpose::yes, bt = tb == Transpose::yes;
    // Stored shapes with two columns of padding each.
    const int a_rows = at ? k : m, a_cols = (at ? m : k) + 2, b_rows = bt ? n : k, b_cols = (bt ? k : n) + 2;
    const int c_cols = n + 2;
    std::vector<HostMatrix> a, b, c;
    for (int i = 0; i < batch; ++i) {
      a.push_back(shared_a && i > 0 ? a[0] : rounded<T>(random_matrix(a_rows, a_cols, gen)));
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
    const auto c_before = to_device<T>(to_host(c_dev));
    const double alpha = 0.75;
    const GemmBatch<T> products{.transpose_a = ta, .transpose_b = tb, .m = m, .n = n, .k = k,
                                               .alpha = static_cast<T>(alpha), .a = a_dev.data(), .lda = a_cols,
                                               .stride_a = shared_a ? 0 : static_cast<std::ptrdiff_t>(a_rows) * a_cols,
                                               .b = b_dev.data(), .ldb = b_cols,
                                               .stride_b = static_cast<std::ptrdiff_t>(b_rows) * b_cols,
                                               .beta = static_cast<T>(beta), .c = c_dev.data(), .ldc = c_cols,
                                               .stride_c = static_cast<std::ptrdiff_t>(m) * c_cols, .batch = batch};
    allow_tf32(tf32);
    gemm(Space{}, products, schedule);
    const HostMatrix got = to_host(c_dev);
    Kokkos::deep_copy(c_dev, c_before);
    gemm(Space{}, products, schedule);
    allow_tf32(false);
    BOOST_TEST((to_host(c_dev) - got).cwiseAbs().maxCoeff() == 0.0, "a second run gives the same bits");
    double worst_ratio = 0;
    for (int i = 0; i < batch; ++i) {
      const HostMatrix op_a = at ? HostMatrix(a[i].leftCols(m).transpose()) : HostMatrix(a[i].leftCols(k));
      const HostMatrix op_b = bt ? HostMatrix(b[i].leftCols(k).transpose()) : HostMatrix(b[i].leftCols(n));
      const HostMatrix expected = alpha * op_a * op_b + beta * c[i].leftCols(n);
      const HostMatrix magnitude = std::abs(alpha) * op_a.cwiseAbs() * op_b.cwiseAbs() + std::abs(beta) * c[i].leftCols(n).cwiseAbs();
      const HostMatrix block = got.middleRows(i * m, m);
      worst_ratio = std::max(worst_ratio, ((block.leftCols(n) - expected).cwiseAbs().array() /
                                           (rounding_bound<T>(k, tf32) * magnitude.array() + std::numeric_limits<double>::min()))
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
            check<float>(schedule, ta, tb, 17, 19, 23, beta, gen, true);
          }
  }
}

// The row-major batch restated for a column-major BLAS (what cuBLAS receives on Cuda), run here by a plain
// column-major product written from the BLAS definition, gives the row-major product: the mapping holds on machines
// without a GPU too.
BOOST_AUTO_TEST_CASE(column_major_restatement_computes_the_row_major_product) {
  std::mt19937_64 gen(test_seed());
  for (const Transpose ta : {Transpose::no, Transpose::yes})
    for (const Transpose tb : {Transpose::no, Transpose::yes}) {
      BOOST_TEST_CONTEXT("transpose a " << (ta == Transpose::yes) << ", transpose b " << (tb == Transpose::yes)) {
        const int m = 5, n = 7, k = 4, batch = 2;
        const bool at = ta == Transpose::yes, bt = tb == Transpose::yes;
        const int a_rows = at ? k : m, a_cols = (at ? m : k) + 1, b_rows = bt ? n : k, b_cols = (bt ? k : n) + 3;
        const int c_cols = n + 2;
        const HostMatrix a = random_matrix(batch * a_rows, a_cols, gen), b = random_matrix(batch * b_rows, b_cols, gen);
        HostMatrix c = random_matrix(batch * m, c_cols, gen);
        const HostMatrix c0 = c;
        const double alpha = 0.75, beta = -0.5;
        const GemmBatch<double> row_major{.transpose_a = ta, .transpose_b = tb, .m = m, .n = n, .k = k, .alpha = alpha,
                                          .a = a.data(), .lda = a_cols, .stride_a = std::ptrdiff_t{a_rows} * a_cols,
                                          .b = b.data(), .ldb = b_cols, .stride_b = std::ptrdiff_t{b_rows} * b_cols,
                                          .beta = beta, .c = c.data(), .ldc = c_cols,
                                          .stride_c = std::ptrdiff_t{m} * c_cols, .batch = batch};
        const auto cm = detail::as_column_major(row_major);
        for (int item = 0; item < batch; ++item)
          for (int j = 0; j < cm.n; ++j)
            for (int i = 0; i < cm.m; ++i) {
              double sum = 0;
              for (int q = 0; q < cm.k; ++q) {
                const double* x = cm.a + item * cm.stride_a;
                const double* y = cm.b + item * cm.stride_b;
                sum += (cm.transpose_a ? x[q + i * cm.lda] : x[i + q * cm.lda]) *
                       (cm.transpose_b ? y[j + q * cm.ldb] : y[q + j * cm.ldb]);
              }
              double& out = cm.c[item * cm.stride_c + i + j * cm.ldc];
              out = alpha * sum + beta * out;
            }
        for (int item = 0; item < batch; ++item) {
          const HostMatrix a_i = a.middleRows(item * a_rows, a_rows), b_i = b.middleRows(item * b_rows, b_rows);
          const HostMatrix op_a = at ? HostMatrix(a_i.leftCols(m).transpose()) : HostMatrix(a_i.leftCols(k));
          const HostMatrix op_b = bt ? HostMatrix(b_i.leftCols(k).transpose()) : HostMatrix(b_i.leftCols(n));
          const HostMatrix expected = alpha * op_a * op_b + beta * c0.middleRows(item * m, m).leftCols(n);
          BOOST_TEST((c.middleRows(item * m, m).leftCols(n) - expected).cwiseAbs().maxCoeff() <= 1e-13);
          BOOST_TEST((c.middleRows(item * m, m).rightCols(2) - c0.middleRows(item * m, m).rightCols(2)).cwiseAbs().maxCoeff() == 0.0);
        }
      }
    }
}

// TF32 only changes the tuned fp32 path on Cuda (the bound allows for it); elsewhere the products stay fp32 and
// meet the tighter bound as well. fp64 ignores the setting.
BOOST_AUTO_TEST_CASE(tf32_products_stay_within_the_tf32_bound) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const Transpose ta : {Transpose::no, Transpose::yes})
      for (const Transpose tb : {Transpose::no, Transpose::yes}) {
        check<float>(Schedule::tiled, ta, tb, 64, 96, 128, 0.0, gen, false, true);
        check<double>(Schedule::tiled, ta, tb, 9, 13, 33, -0.5, gen, false, true);
      }
  }
}

// With k = 0 the products are empty: C = beta C, and A and B are never read (null is fine).
BOOST_AUTO_TEST_CASE(empty_inner_dimension_scales_c) {
  CAMEX_TEST_CONTEXT() {
    for (const Schedule schedule : {Schedule::tiled, Schedule::lane_per_parameter})
      for (const double beta : {0.0, -0.5}) {
        HostMatrix c0(3, 4);
        c0.setConstant(2.0);
        auto c = to_device<float>(c0);
        gemm(Space{}, GemmBatch<float>{.m = 3, .n = 4, .k = 0, .beta = static_cast<float>(beta), .c = c.data(), .ldc = 4},
             schedule);
        BOOST_TEST((to_host(c).array() - 2.0 * beta).abs().maxCoeff() == 0.0);
      }
  }
}

BOOST_AUTO_TEST_CASE(bad_batches_are_rejected) {
  CAMEX_TEST_CONTEXT() {
    auto a = to_device<float>(HostMatrix::Zero(4, 6)), b = to_device<float>(HostMatrix::Zero(6, 5)),
         c = to_device<float>(HostMatrix::Zero(4, 5));
    const GemmBatch<float> good{.m = 4, .n = 5, .k = 6, .a = a.data(), .lda = 6, .b = b.data(), .ldb = 5,
                                .c = c.data(), .ldc = 5};
    gemm(Space{}, good);
    const auto rejects = [&](GemmBatch<float> bad, const char* argument, std::initializer_list<std::string> fragments) {
      require_argument_error([&] { gemm(Space{}, bad); }, argument, fragments);
    };
    auto bad = good;
    bad.m = -1;
    rejects(bad, "m", {"camex::gemm", "a count of at least 0", "given -1"});
    bad = good;
    bad.n = -2;
    rejects(bad, "n", {"given -2"});
    bad = good;
    bad.k = -3;
    rejects(bad, "k", {"given -3"});
    bad = good;
    bad.batch = -4;
    rejects(bad, "batch", {"given -4"});
    bad = good;
    bad.a = nullptr;
    rejects(bad, "a", {"a matrix", "a null pointer"});
    bad = good;
    bad.b = nullptr;
    rejects(bad, "b", {"a null pointer"});
    bad = good;
    bad.c = nullptr;
    rejects(bad, "c", {"a null pointer"});
    bad = good;
    bad.lda = 5;
    rejects(bad, "lda", {"at least 6 (k, as stored)", "given 5"});
    bad = good;
    bad.transpose_a = Transpose::yes;
    bad.lda = 3;
    rejects(bad, "lda", {"at least 4 (m, A being transposed, as stored)", "given 3"});
    bad = good;
    bad.ldb = 4;
    rejects(bad, "ldb", {"at least 5 (n, as stored)"});
    bad = good;
    bad.transpose_b = Transpose::yes;
    bad.ldb = 5;
    rejects(bad, "ldb", {"at least 6 (k, B being transposed, as stored)"});
    bad = good;
    bad.ldc = 0;
    rejects(bad, "ldc", {"at least 5 (n, as stored)", "given 0"});
  }
}
