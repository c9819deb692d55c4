// The centred row combination (a merge of deltas that never stores them): on both schedules it gives, bit for bit,
// what the plain combination gives over materialised rows [E_1 - base .. E_n - base, base] with coefficient 1 on
// the base, matches a double reference and returns the base exactly when every expert is the base. The schedules
// give each other's bits, and the register blocks of the host give combine_rows' bits, streamed or not.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <iomanip>
#include <random>
#include <tuple>
#include <vector>

#include "camex/kernels/row_combination.hpp"
#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

using Scalars = std::tuple<float, double>;

template <class T>
HostMatrix combine(Schedule schedule, const Matrix<T, Space>& coef, const Matrix<T, Space>& rows, int in_rows,
                   const T* centre, std::size_t groups, std::size_t params) {
  Matrix<T, Space> out("out", groups, params);
  detail::row_combination(Space{}, schedule,
                          detail::RowCombination<T>{.coef = {coef.data(), row_stride(coef), 1},
                                                    .rows = rows.data(),
                                                    .row_stride = row_stride(rows),
                                                    .in_rows = in_rows,
                                                    .out = out.data(),
                                                    .out_stride = row_stride(out),
                                                    .out_rows = static_cast<int>(groups),
                                                    .length = params,
                                                    .centre = centre});
  return to_host(out);
}

}  // namespace

BOOST_AUTO_TEST_CASE(centred_combination_is_the_combination_of_deltas) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    // 11 experts: a block of 8 inputs and a block of 3; P not a multiple of any tile or vector length.
    const std::size_t n = 11, groups = 3, params = 5003;
    const HostMatrix experts = rounded<float>(random_matrix(n, params, gen));
    const HostMatrix base = rounded<float>(random_matrix(1, params, gen));
    const HostMatrix scores = rounded<float>(random_matrix(groups, n, gen, 0, 1));
    HostMatrix deltas(n + 1, params), with_base(groups, n + 1);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t p = 0; p < params; ++p)
        deltas(i, p) = static_cast<double>(static_cast<float>(experts(i, p)) - static_cast<float>(base(0, p)));
    deltas.row(n) = base;
    with_base << scores, HostMatrix::Ones(groups, 1);

    const auto e = to_device<float>(experts), b = to_device<float>(base), s = to_device<float>(scores);
    const auto d = to_device<float>(deltas), sb = to_device<float>(with_base);
    for (const Schedule schedule : {Schedule::tiled, Schedule::lane_per_parameter}) {
      BOOST_TEST_CONTEXT((schedule == Schedule::tiled ? "tiled" : "lane_per_parameter")) {
        const HostMatrix centred = combine<float>(schedule, s, e, static_cast<int>(n), b.data(), groups, params);
        const HostMatrix materialised = combine<float>(schedule, sb, d, static_cast<int>(n + 1), nullptr, groups, params);
        // Both schedules run the same fused multiply-adds in the same order (written out, not left to the
        // compiler's contraction), and the base enters last with coefficient 1: bit for bit on every space.
        BOOST_TEST((centred - materialised).cwiseAbs().maxCoeff() == 0.0);
        // Against double: n + 2 rounded terms (n differences, the sum, the base) per entry.
        double worst_ratio = 0;
        for (std::size_t g = 0; g < groups; ++g)
          for (std::size_t p = 0; p < params; ++p) {
            double expected = base(0, p), magnitude = std::abs(base(0, p));
            for (std::size_t i = 0; i < n; ++i) {
              expected += scores(g, i) * (experts(i, p) - base(0, p));
              magnitude += std::abs(scores(g, i)) * (std::abs(experts(i, p)) + std::abs(base(0, p)));
            }
            const double bound = (n + 2) * unit_roundoff<float> * magnitude;
            worst_ratio = std::max(worst_ratio, std::abs(centred(g, p) - expected) / bound);
          }
        BOOST_TEST(worst_ratio <= 1.0);
      }
    }
    // Every expert equal to the base: the output is the base exactly, whatever the scores.
    const auto same = to_device<float>(base.replicate(n, 1));
    for (const Schedule schedule : {Schedule::tiled, Schedule::lane_per_parameter}) {
      const HostMatrix at_base = combine<float>(schedule, s, same, static_cast<int>(n), b.data(), groups, params);
      Eigen::Index g = 0, p = 0;
      const double worst = (at_base - base.replicate(groups, 1)).cwiseAbs().maxCoeff(&g, &p);
      BOOST_TEST(worst == 0.0, (schedule == Schedule::tiled ? "tiled" : "lane_per_parameter")
                                   << ": group " << g << ", parameter " << p << ": got " << std::setprecision(9)
                                   << at_base(g, p) << ", base "
                                   << base(0, p));
    }
  }
}

// Non-temporal copies: every alignment of the destination and every length around the vector width give exactly
// the source (the head is stored plainly up to a vector boundary, the tail after the last whole vector).
BOOST_AUTO_TEST_CASE(streaming_copy_is_a_copy) {
  std::mt19937_64 gen(test_seed());
  std::uniform_real_distribution<float> value(-1, 1);
  alignas(64) float src[160], dst[160];
  for (float& v : src) v = value(gen);
  for (int offset = 0; offset < 16; ++offset)
    for (int len = 0; len <= 160 - 16; len += 7) {
      std::fill(std::begin(dst), std::end(dst), -2.0f);
      detail::copy_streaming(dst + offset, src, len);
      detail::streaming_fence();
      for (int p = 0; p < 160; ++p) {
        const bool written = p >= offset && p < offset + len;
        if (dst[p] != (written ? src[p - offset] : -2.0f)) BOOST_FAIL("offset " << offset << " len " << len << " p " << p);
      }
    }
}

// An output past prefer_streaming_stores' threshold takes the streaming tiled schedule (on host spaces; others
// the tiled one): the same sums as combine_rows over the whole row, with and without a centre. Bit for bit on
// host spaces; a device's fused multiply-adds give the host's bits only where the host compiles its own as fused
// ones too, so there the bound is n + 2 roundings of the largest possible magnitude (|rows|, |centre| <= 1, scores
// in [0, 1]: 2n + 1).
BOOST_AUTO_TEST_CASE(streaming_schedule_matches_the_plain_combination) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t n = 3, groups = 2, params = (std::size_t{17} << 20) / (groups * sizeof(float)) + 37;
    BOOST_REQUIRE(detail::prefer_streaming_stores(groups * params * sizeof(float)) == bool{CAMEX_HAS_STREAMING_STORES});
    const HostMatrix experts = rounded<float>(random_matrix(n, params, gen));
    const HostMatrix base = rounded<float>(random_matrix(1, params, gen));
    const HostMatrix scores = rounded<float>(random_matrix(groups, n, gen, 0, 1));
    const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> e = experts.cast<float>(),
                                                                                 b = base.cast<float>(),
                                                                                 s = scores.cast<float>();
    const auto e_dev = to_device<float>(experts), b_dev = to_device<float>(base), s_dev = to_device<float>(scores);
    for (const bool centred : {false, true}) {
      BOOST_TEST_CONTEXT("centred " << centred) {
        const HostMatrix got = combine<float>(Schedule::tiled, s_dev, e_dev, static_cast<int>(n),
                                              centred ? b_dev.data() : nullptr, groups, params);
        std::vector<float> expected(params);
        double worst = 0;
        for (std::size_t g = 0; g < groups; ++g) {
          detail::combine_rows<float>(static_cast<int>(n), e.data(), static_cast<std::ptrdiff_t>(params),
                                      {s.data(), static_cast<std::ptrdiff_t>(n), 1}, static_cast<std::ptrdiff_t>(g),
                                      expected.data(), static_cast<int>(params), centred ? b.data() : nullptr);
          for (std::size_t p = 0; p < params; ++p) worst = std::max(worst, std::abs(got(g, p) - expected[p]));
        }
        constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<Space, Kokkos::HostSpace>::accessible);
        BOOST_TEST(worst <= (on_host ? 0.0 : (n + 2) * unit_roundoff<float> * (2 * n + 1)));
      }
    }
  }
}

// A tile's prefetch asks for each line of its rows once: whole lines per row (a partial line counts), the first set
// of rows, then the second; an empty set is skipped; asking past the end does nothing.
BOOST_AUTO_TEST_CASE(tile_prefetch_counts_every_line_once) {
  std::vector<float> a(3 * 40), b(2 * 40);
  for (const auto& [first, second, len, lines] :
       {std::tuple{3, 2, 33, 5 * 3}, std::tuple{3, 2, 32, 5 * 2}, std::tuple{0, 2, 40, 2 * 3}, std::tuple{3, 0, 1, 3 * 1}}) {
    BOOST_TEST_CONTEXT("rows " << first << " + " << second << ", len " << len) {
      detail::TilePrefetch<float> ahead({a.data(), 40, first}, {b.data(), 40, second}, len);
      BOOST_TEST(ahead.remaining() == lines);
      int asked = 0;
      while (ahead.remaining() > 0 && asked <= lines) {
        ahead.issue(1);
        ++asked;
      }
      BOOST_TEST(asked == lines);
      ahead.issue(7);
      BOOST_TEST(ahead.remaining() == 0);
    }
  }
  BOOST_TEST(detail::TilePrefetch<float>{}.remaining() == 0);
}

// The register-blocked dot products of the backward: every block shape tile_dots takes (4, 2 and 1 rows of `a`
// against 4, 2 and 1 rows) gives, bit for bit, the single product dot_block<1, 1>; and each product is within the bound of its summation (len roundings of the sum of |a||row|) of the double one.
// Host code: the blocks are what the host schedule runs.
BOOST_AUTO_TEST_CASE(blocked_dot_products_are_the_single_products) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const int a_count = 7, k_count = 11;
    for (const int len : {1, 15, 16, 17, 1000, 1029}) {
      BOOST_TEST_CONTEXT("len " << len) {
        const HostMatrix a = rounded<float>(random_matrix(a_count, len, gen)),
                         rows = rounded<float>(random_matrix(k_count, len, gen));
        const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> af = a.cast<float>(),
                                                                                     rf = rows.cast<float>();
        std::vector<double> blocked(a_count * k_count, 0.5), single(a_count * k_count, 0.5);
        detail::tile_dots<float>(a_count, af.data(), len, k_count, rf.data(), len, len, blocked.data());
        std::vector<double> prefetching(a_count * k_count, 0.5);
        detail::TilePrefetch<float> ahead({rf.data(), len, k_count}, {af.data(), len, a_count}, len);
        detail::tile_dots<float>(a_count, af.data(), len, k_count, rf.data(), len, len, prefetching.data(), &ahead);
        BOOST_TEST((prefetching == blocked));
        double worst_ratio = 0;
        for (int m = 0; m < a_count; ++m)
          for (int k = 0; k < k_count; ++k) {
            detail::dot_block<1, 1, float>(af.data() + m * len, 0, rf.data() + k * len, 0, len, &single[m * k_count + k], 0);
            const double exact = a.row(m).dot(rows.row(k)) + 0.5;
            const double magnitude = (a.row(m).cwiseAbs().array() * rows.row(k).cwiseAbs().array()).sum();
            worst_ratio = std::max(worst_ratio, std::abs(blocked[m * k_count + k] - exact) /
                                                    ((len + 1) * unit_roundoff<float> * magnitude));
          }
        BOOST_TEST((blocked == single));
        BOOST_TEST(worst_ratio <= 1.0);
      }
    }
  }
}

// The register blocks (combine_rows_blocked, the host's tiled schedule) give, bit for bit, what combine_rows gives one
// output row at a time, with and without a centre; so does the streaming variant, whose rows leave the registers in
// non-temporal stores when every row starts on a store boundary and go through a staged buffer otherwise (an odd
// offset); and accumulating into an output continues each row's chain of fused multiply-adds from the value there.
// Floats and doubles (whose blocks hold half as many columns per register); output counts past one register block
// and one staged group of 16, K past one block of 8, lengths that end inside a 64-column block and inside a vector.
BOOST_AUTO_TEST_CASE_TEMPLATE(register_blocks_are_the_row_combination, T, Scalars) {
  std::mt19937_64 gen(test_seed());
  using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  CAMEX_TEST_CONTEXT() {
    for (const int out_rows : {1, 8, 19})
      for (const int K : {3, 13})
        for (const int len : {7, 300, 1029})
          for (const bool centred : {false, true}) {
            BOOST_TEST_CONTEXT("out_rows " << out_rows << ", K " << K << ", len " << len << ", centred " << centred) {
              const RowMajor rows = rounded<T>(random_matrix(K, len, gen)).template cast<T>(),
                             centre = rounded<T>(random_matrix(1, len, gen)).template cast<T>(),
                             coef = rounded<T>(random_matrix(out_rows, K, gen)).template cast<T>(),
                             initial = rounded<T>(random_matrix(out_rows, len, gen)).template cast<T>();
              const detail::Coefficients<T> c{coef.data(), K, 1};
              const T* centre_row = centred ? centre.data() : nullptr;
              // Row stride a whole number of 64-byte lines, so the aligned case streams every row from registers.
              const int stride = (len + 15) / 16 * 16;
              std::vector<T> single(out_rows * stride, -1), continued(out_rows * stride, -1);
              for (int o = 0; o < out_rows; ++o) {
                detail::combine_rows(K, rows.data(), len, c, o, single.data() + o * stride, len, centre_row);
                for (int p = 0; p < len; ++p) {
                  T acc = initial(o, p);
                  for (int k = 0; k < K; ++k)
                    acc = detail::multiply_add(coef(o, k), centred ? rows(k, p) - centre(0, p) : rows(k, p), acc);
                  continued[o * stride + p] = centred ? acc + centre(0, p) : acc;
                }
              }
              const auto same_rows = [&](const std::vector<T>& want, const T* got, std::ptrdiff_t got_stride) {
                for (int o = 0; o < out_rows; ++o)
                  for (int p = 0; p < len; ++p)
                    if (got[o * got_stride + p] != want[o * stride + p]) return false;
                return true;
              };
              Kokkos::View<T*, Kokkos::HostSpace> cached("cached", out_rows * stride);
              detail::combine_rows_blocked(out_rows, K, rows.data(), len, c, cached.data(), stride, len, false, centre_row);
              BOOST_TEST(same_rows(single, cached.data(), stride));
              for (int o = 0; o < out_rows; ++o)
                for (int p = 0; p < len; ++p) cached(o * stride + p) = initial(o, p);
              detail::combine_rows_blocked(out_rows, K, rows.data(), len, c, cached.data(), stride, len, true, centre_row);
              BOOST_TEST(same_rows(continued, cached.data(), stride));
              // In pieces, asking for the lines of another tile between them (as the backward does): the same bits,
              // and every line asked for by the end of the tile.
              detail::TilePrefetch<T> ahead({rows.data(), len, K}, {centre.data(), 0, 1}, len);
              detail::combine_tile_on_host<T>(false, out_rows, K, rows.data(), len, c, cached.data(), stride, len,
                                              centre_row, &ahead);
              BOOST_TEST(same_rows(single, cached.data(), stride));
              BOOST_TEST(ahead.remaining() == 0);
              for (const int offset : {0, 3}) {
                BOOST_TEST_CONTEXT("offset " << offset) {
                  Kokkos::View<T*, Kokkos::HostSpace> streamed("streamed", out_rows * stride + offset);
                  BOOST_REQUIRE(reinterpret_cast<std::uintptr_t>(streamed.data()) % 64 == 0);
                  detail::combine_rows_blocked_streaming(out_rows, K, rows.data(), len, c, streamed.data() + offset,
                                                         stride, len, centre_row);
                  detail::streaming_fence();
                  BOOST_TEST(same_rows(single, streamed.data() + offset, stride));
                }
              }
            }
          }
  }
}

// The lane schedule (four consecutive parameters per lane, a team's coefficients staged in its scratch: the GPU's)
// and the tiled schedule (register blocks on host spaces) give the same bits on the space under test, centred or
// not: with rows off the lanes' vector boundary (P = 3001, scalar loads, a short last lane), on it (P = 3004, vector
// loads), and with a coefficient matrix past the 16 KiB a team stages (70 x 64 floats, read where it lies).
BOOST_AUTO_TEST_CASE_TEMPLATE(lane_and_tiled_schedules_agree_bit_for_bit, T, Scalars) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const auto& [n, groups, params] : {std::tuple<std::size_t, std::size_t, std::size_t>{9, 7, 3001},
                                            {9, 7, 3004}, {64, 70, 262}}) {
      const auto e = to_device<T>(rounded<T>(random_matrix(n, params, gen)));
      const auto b = to_device<T>(rounded<T>(random_matrix(1, params, gen)));
      const auto s = to_device<T>(rounded<T>(random_matrix(groups, n, gen, 0, 1)));
      const bool vectors = detail::lane_vectors_fit(e.data(), row_stride(e)) && detail::lane_vectors_fit(b.data(), 0);
      BOOST_TEST(vectors == (params % detail::lane_entries == 0));
      for (const bool centred : {false, true}) {
        BOOST_TEST_CONTEXT("n " << n << ", groups " << groups << ", P " << params << ", centred " << centred) {
          const T* centre = centred ? b.data() : nullptr;
          const HostMatrix tiled = combine<T>(Schedule::tiled, s, e, static_cast<int>(n), centre, groups, params);
          const HostMatrix lanes = combine<T>(Schedule::lane_per_parameter, s, e, static_cast<int>(n), centre, groups, params);
          BOOST_TEST((tiled - lanes).cwiseAbs().maxCoeff() == 0.0);
        }
      }
    }
  }
}
