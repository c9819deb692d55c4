// The mode-product kernels under the curvature transform, checked directly against double loops on geometries
// chosen to run every piece of the host schedule: register blocks of 64, 32, 16 and 8 columns and the plain tail,
// full and partial blocks of output rows, inner runs longer than a work item's tile, the last mode (inner = 1)
// with fibre counts that do not fill the last work item, and strided tensor stacks.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "camex/kernels/mode_product.hpp"
#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

struct Geometry {
  std::size_t outer, extent, inner;
};

// outer x d x inner per case; the comments name the host path each one exercises.
const Geometry geometries[] = {
    {1, 6, 1560},    // 24 blocks of 64 columns, then 16 and 8, six output rows per block
    {3, 12, 130},    // four blocks of 32 columns and a tail of 2; 12 rows in one block
    {2, 10, 13},     // 8 columns and a tail of 5; rows 8 + 2
    {2, 32, 32},     // 32-column blocks: rows 12 + 12 + 8
    {1, 13, 2100},   // longer than one work item's tile; rows 6 + 6 + 1
    {3, 7, 1100},    // tiles narrower than their slice in three slices: the next item's lines asked for across slices
    {200, 13, 1},    // last mode: fibres 96 + 96 + 8, columns 8 + a tail of 5
    {70, 64, 1},     // last mode, 64-column blocks
    {150, 48, 1},    // last mode, columns 32 + 16; rows 12 per block and a partial block of 54
    {9, 3, 1},       // tiny
};

template <class T>
void check_geometry(const Geometry& g, std::mt19937_64& gen) {
  const detail::Mode mode{g.outer, g.extent, g.inner};
  const std::size_t tensors = 2, P = mode.size(), d = g.extent, stride = P + 5;
  const HostMatrix x = rounded<T>(random_matrix(1, tensors * stride, gen));
  const HostMatrix f = rounded<T>(random_matrix(1, tensors * d * d, gen));
  const HostMatrix prior = rounded<T>(random_matrix(1, tensors * stride, gen));
  const auto in = to_device<T>(x), factors = to_device<T>(f);
  for (const bool transpose : {false, true})
    for (const bool accumulate : {false, true}) {
      BOOST_TEST_CONTEXT("outer " << g.outer << ", d " << d << ", inner " << g.inner << ", transpose " << transpose
                                  << ", accumulate " << accumulate) {
        const auto out = to_device<T>(prior);
        Kokkos::View<T*, typename Space::memory_space> scratch("scratch", detail::mode_product_scratch(tensors, mode));
        detail::mode_product<Space, T>(Space{},
                                       {in.data(), static_cast<std::ptrdiff_t>(stride), out.data(),
                                        static_cast<std::ptrdiff_t>(stride), factors.data(), tensors},
                                       mode, transpose, accumulate,
                                       typename WorkspaceCarver<Space>::template Array<T>(scratch.data(), scratch.size()));
        const HostMatrix got = to_host(out);
        double worst_ratio = 0;
        for (std::size_t i = 0; i < tensors; ++i)
          for (std::size_t o = 0; o < g.outer; ++o)
            for (std::size_t a = 0; a < d; ++a)
              for (std::size_t t = 0; t < g.inner; ++t) {
                const std::size_t at = i * stride + (o * d + a) * g.inner + t;
                double expected = accumulate ? prior(0, at) : 0.0, magnitude = std::abs(expected);
                for (std::size_t k = 0; k < d; ++k) {
                  const double fk = transpose ? f(0, i * d * d + k * d + a) : f(0, i * d * d + a * d + k);
                  const double term = fk * x(0, i * stride + (o * d + k) * g.inner + t);
                  expected += term;
                  magnitude += std::abs(term);
                }
                // A sum of d + 1 terms rounded in T: |error| <= (d + 1) u sum |terms| (recursive summation, with
                // or without fused multiply-adds).
                const double bound = (static_cast<double>(d) + 1) * unit_roundoff<T> * magnitude;
                worst_ratio = std::max(worst_ratio, std::abs(got(0, at) - expected) / bound);
              }
        BOOST_TEST(worst_ratio <= 1.0);
        // Entries between the stacked tensors are not written.
        for (std::size_t i = 0; i < tensors; ++i)
          for (std::size_t e = P; e < stride; ++e) BOOST_TEST(got(0, i * stride + e) == prior(0, i * stride + e));
      }
    }
}

// The contraction's host paths: one fibre run per GEMM block (inner >= 512, split into blocks of 1024), o slices
// packed side by side (several blocks per chunk where chunk > 1024 / inner), and rows of o (inner = 1, more than
// 1024 per chunk). The team schedule on the same cases: term chunks that end inside a staged run of 32 and cross o
// slices, output blocks of 16 x 16 cut at d (13, 48) and several of them (48: 3 x 3), the last mode's staging
// along a.
const Geometry contraction_geometries[] = {
    {1, 6, 1560}, {1, 13, 2100}, {3, 12, 130}, {2, 10, 13}, {400, 5, 300}, {200, 13, 1}, {70000, 2, 1}, {150, 48, 1},
};

template <class T>
void check_contraction(const Geometry& g, Schedule schedule, std::mt19937_64& gen) {
  const detail::Mode mode{g.outer, g.extent, g.inner};
  const std::size_t tensors = 2, P = mode.size(), d = g.extent, stride = P + 3;
  const HostMatrix v = rounded<T>(random_matrix(1, tensors * stride, gen));
  const HostMatrix y = rounded<T>(random_matrix(1, tensors * stride, gen));
  const auto dv = to_device<T>(v), dy = to_device<T>(y);
  Kokkos::View<T*, typename Space::memory_space> grad("grad", tensors * d * d);
  Kokkos::View<double*, typename Space::memory_space> partial("partial", detail::mode_contraction_scratch(tensors, mode));
  detail::mode_contraction<Space, T>(Space{}, dv.data(), static_cast<std::ptrdiff_t>(stride), dy.data(),
                                     static_cast<std::ptrdiff_t>(stride), tensors, mode, grad.data(),
                                     typename WorkspaceCarver<Space>::template Array<double>(partial.data(), partial.size()),
                                     schedule);
  const auto got = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, grad);
  double worst_ratio = 0;
  for (std::size_t i = 0; i < tensors; ++i)
    for (std::size_t a = 0; a < d; ++a)
      for (std::size_t b = 0; b < d; ++b) {
        double expected = 0, magnitude = 0;
        for (std::size_t o = 0; o < g.outer; ++o)
          for (std::size_t t = 0; t < g.inner; ++t) {
            const double term = v(0, i * stride + (o * d + a) * g.inner + t) * y(0, i * stride + (o * d + b) * g.inner + t);
            expected += term;
            magnitude += std::abs(term);
          }
        // Blocks of at most 1024 products are summed in T, the blocks in double, the result rounded to T once:
        // |error| <= (1024 u + u) sum |terms| + u |sum| (the team schedule sums every term in double, far inside).
        const double bound = 1025 * unit_roundoff<T> * magnitude + unit_roundoff<T> * std::abs(expected);
        worst_ratio = std::max(worst_ratio, std::abs(got(i * d * d + a * d + b) - expected) / bound);
      }
  BOOST_TEST(worst_ratio <= 1.0, "outer " << g.outer << ", d " << d << ", inner " << g.inner << ", "
                                            << (schedule == Schedule::tiled ? "tiled" : "teams"));
  // Typical rounding is far below the worst-case bound; a wrong term would show as a ratio of order 1e3 and more.
}

}  // namespace

BOOST_AUTO_TEST_CASE(mode_contraction_matches_double_loops) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const auto& g : contraction_geometries)
      for (const Schedule schedule : {Schedule::tiled, Schedule::lane_per_parameter}) {
        check_contraction<float>(g, schedule, gen);
        check_contraction<double>(g, schedule, gen);
      }
  }
}

BOOST_AUTO_TEST_CASE(mode_product_matches_double_loops) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const auto& g : geometries) {
      check_geometry<float>(g, gen);
      check_geometry<double>(g, gen);
    }
  }
}
