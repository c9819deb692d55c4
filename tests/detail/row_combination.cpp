// The centred row combination (a merge of deltas that never stores them): on the tiled schedule it gives, bit for
// bit, what the plain combination gives over materialised rows [E_1 - base .. E_n - base, base] with coefficient 1
// on the base; on both schedules it matches a double reference and returns the base exactly when every expert is
// the base.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <random>

#include "camex/detail/row_combination.hpp"
#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

template <class T>
HostMatrix combine(Schedule schedule, const Matrix<T, Space>& coef, const Matrix<T, Space>& rows, int in_rows,
                   const T* centre, std::size_t groups, std::size_t params) {
  Matrix<T, Space> out("out", groups, params);
  detail::row_combination(Space{}, schedule,
                          detail::RowCombination<T>{.coef = {coef.data(), detail::row_stride(coef), 1},
                                                    .rows = rows.data(),
                                                    .row_stride = detail::row_stride(rows),
                                                    .in_rows = in_rows,
                                                    .out = out.data(),
                                                    .out_stride = detail::row_stride(out),
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
        // The tiled schedule (the host's) is the same code on both: bit for bit. The lane schedule is one scalar
        // expression whose multiply-adds GCC fuses differently with and without the centre (-ffp-contract=fast):
        // within the bound below, like any other summation order.
        if (schedule == Schedule::tiled) BOOST_TEST((centred - materialised).cwiseAbs().maxCoeff() == 0.0);
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
      BOOST_TEST((at_base - base.replicate(groups, 1)).cwiseAbs().maxCoeff() == 0.0);
    }
  }
}
