// Routing inputs: the per-group means against a double reference (sequences and causal segments, with and without
// padding, padding excluded or included); causality of segment routing; the backward as the adjoint of the
// forward, against central finite differences in double; and the error paths.
#include "camex/route/groups.hpp"

#include "finite_difference.hpp"
#include "testing.hpp"

#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

using PaddingFlags = Matrix<std::uint8_t, Space>;

PaddingFlags to_device_mask(const std::vector<std::uint8_t>& real, std::size_t sequences, std::size_t length) {
  if (real.empty()) return PaddingFlags();
  PaddingFlags m("padding", sequences, length);
  auto host = Kokkos::create_mirror_view(m);
  for (std::size_t q = 0; q < sequences; ++q)
    for (std::size_t t = 0; t < length; ++t) host(q, t) = real[q * length + t];
  Kokkos::deep_copy(m, host);
  return m;
}

/// The group whose mean router row r sees: its own under per_segment gate rows, else the previous segment (segment 0
/// its own).
std::size_t reference_source(const RoutingLayout& layout, std::size_t r) {
  if (layout.gate_rows == GateRows::per_segment) return r;
  return r % layout.segments() == 0 ? r : r - 1;
}

/// The definition, in double: the mean of the counted tokens of row g's group, zeros if none count.
HostMatrix reference_inputs(const RoutingLayout& layout, const HostMatrix& x, const std::vector<std::uint8_t>& real) {
  const std::size_t per = layout.group_length();
  HostMatrix out = HostMatrix::Zero(static_cast<Eigen::Index>(layout.groups()), x.cols());
  for (std::size_t g = 0; g < layout.groups(); ++g) {
    const std::size_t source = reference_source(layout, g);
    double count = 0;
    for (std::size_t t = source * per; t < (source + 1) * per; ++t) {
      if (!real.empty() && layout.padding == Padding::exclude && !real[t]) continue;
      out.row(g) += x.row(t);
      count += 1;
    }
    if (count > 0) out.row(g) /= count;
  }
  return out;
}

template <class T>
HostMatrix run_forward(const RoutingLayout& layout, const HostMatrix& x, const PaddingFlags& mask) {
  const auto xd = to_device<T>(x);
  Matrix<T, Space> routed("routed", layout.groups(), x.cols());
  routing_inputs(Space{}, layout, xd, mask, routed);
  return to_host(routed);
}

std::vector<RoutingLayout> layouts() {
  std::vector<RoutingLayout> out;
  for (const GateRows rows : {GateRows::per_segment, GateRows::per_group}) {
    out.push_back({.sequences = 3, .length = 10, .gate_rows = rows});
    out.push_back({.sequences = 2, .length = 12, .granularity = Granularity::causal_segment, .segment = 4, .gate_rows = rows});
    out.push_back({.sequences = 2, .length = 12, .granularity = Granularity::causal_segment, .segment = 4,
                   .padding = Padding::include, .gate_rows = rows});
    out.push_back({.sequences = 1, .length = 5, .granularity = Granularity::causal_segment, .segment = 5, .gate_rows = rows});
  }
  return out;
}

/// Right padding of random lengths (one sequence all padding, so a whole group counts no token).
std::vector<std::uint8_t> random_padding(const RoutingLayout& layout, std::mt19937_64& gen) {
  std::vector<std::uint8_t> real(layout.tokens(), 1);
  std::uniform_int_distribution<std::size_t> keep(0, layout.length);
  for (std::size_t q = 0; q < layout.sequences; ++q) {
    const std::size_t n = q == 0 ? 0 : keep(gen);
    for (std::size_t t = n; t < layout.length; ++t) real[q * layout.length + t] = 0;
  }
  return real;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(routing_groups)

BOOST_AUTO_TEST_CASE(means_match_the_definition) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const auto& layout : layouts())
      for (const bool padded : {false, true}) {
        BOOST_TEST_CONTEXT("groups " << layout.groups() << ", segment " << layout.segment << ", padded " << padded
                                     << ", padding included " << (layout.padding == Padding::include)
                                     << ", per_group rows " << (layout.gate_rows == GateRows::per_group)) {
          // I = 300 crosses a host tile (256) into a short second one.
          const HostMatrix x = rounded<float>(random_matrix(static_cast<Eigen::Index>(layout.tokens()), 300, gen));
          const auto real = padded ? random_padding(layout, gen) : std::vector<std::uint8_t>{};
          const auto mask = to_device_mask(real, layout.sequences, layout.length);
          const HostMatrix expected = reference_inputs(layout, x, real);
          // Double: the sum of at most L terms rounded once each; float adds the final rounding to float.
          const double bound_double = layout.length * unit_roundoff<double> * 2, bound_float = unit_roundoff<float> * 2;
          BOOST_TEST((run_forward<double>(layout, x, mask) - expected).cwiseAbs().maxCoeff() <= bound_double);
          BOOST_TEST((run_forward<float>(layout, x, mask) - expected).cwiseAbs().maxCoeff() <= bound_float);
        }
      }
  }
}

// With causal segments and per_group gate rows, changing any token of segment s changes only the routing input of
// segment s + 1 (and of segment 0 itself when s = 0), in every sequence; with per_segment rows only row s.
BOOST_AUTO_TEST_CASE(segment_routing_is_causal) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const GateRows rows : {GateRows::per_segment, GateRows::per_group}) {
      const RoutingLayout layout{.sequences = 2, .length = 16, .granularity = Granularity::causal_segment, .segment = 4,
                                 .gate_rows = rows};
      const HostMatrix x = random_matrix(static_cast<Eigen::Index>(layout.tokens()), 7, gen);
      const HostMatrix before = run_forward<double>(layout, x, PaddingFlags());
      for (std::size_t t = 0; t < layout.tokens(); ++t) {
        HostMatrix moved = x;
        moved.row(static_cast<Eigen::Index>(t)).array() += 1.0;
        const HostMatrix after = run_forward<double>(layout, moved, PaddingFlags());
        const std::size_t own = t / layout.segment, sequence_start = t / layout.length * layout.segments();
        for (std::size_t g = 0; g < layout.groups(); ++g) {
          const bool may_change = rows == GateRows::per_segment
                                      ? g == own
                                      : (g == own + 1 && g % layout.segments() != 0) || (g == own && g == sequence_start);
          const bool changed = (after.row(g) - before.row(g)).cwiseAbs().maxCoeff() > 0;
          BOOST_TEST(changed == may_change, "token " << t << ", group " << g << ", per_group " << (rows == GateRows::per_group));
        }
      }
    }
  }
}

// <d_routed, routing_inputs(x)> differentiated by central differences in double equals routing_inputs_backward,
// except where the gradient is stopped by design (per_group gate rows: segment 0's own routing mean), which the
// reference drops too.
BOOST_AUTO_TEST_CASE(backward_is_the_adjoint) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const auto& layout : layouts())
      for (const bool padded : {false, true}) {
        BOOST_TEST_CONTEXT("groups " << layout.groups() << ", padded " << padded) {
          const Eigen::Index width = 9;
          const HostMatrix x = random_matrix(static_cast<Eigen::Index>(layout.tokens()), width, gen);
          const HostMatrix d_routed = random_matrix(static_cast<Eigen::Index>(layout.groups()), width, gen);
          const auto real = padded ? random_padding(layout, gen) : std::vector<std::uint8_t>{};
          const auto mask = to_device_mask(real, layout.sequences, layout.length);
          Matrix<double, Space> d_x("d_x", layout.tokens(), width);
          routing_inputs_backward(Space{}, layout, to_device<double>(d_routed), mask, d_x);
          const HostMatrix got = to_host(d_x);
          // Under per_group rows, the objective with segment 0's routing mean detached (also when it is the only
          // segment): its row's term does not vary with x.
          HostMatrix live = d_routed;
          if (layout.granularity == Granularity::causal_segment && layout.gate_rows == GateRows::per_group)
            for (std::size_t g = 0; g < layout.groups(); g += layout.segments()) live.row(g).setZero();
          HostMatrix at = x;
          const auto objective = [&] { return (run_forward<double>(layout, at, mask).array() * live.array()).sum(); };
          GradientCheck check(objective, 1e-6);
          check.matrix(at, got);
          // The objective is linear: the difference quotient is exact up to rounding of O(groups * I) terms of
          // size <= 1, divided by 2h.
          BOOST_TEST(check.worst() <= 1e-8);
          // accumulate adds the same gradient to what d_x holds.
          routing_inputs_backward(Space{}, layout, to_device<double>(d_routed), mask, d_x, /*accumulate=*/true);
          BOOST_TEST((to_host(d_x) - 2 * got).cwiseAbs().maxCoeff() == 0.0);
        }
      }
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  CAMEX_TEST_CONTEXT() {
    const RoutingLayout good{.sequences = 2, .length = 8, .granularity = Granularity::causal_segment, .segment = 4};
    Matrix<float, Space> x("x", 16, 3), routed("routed", 4, 3), d_x("d_x", 16, 3);
    auto bad = good;
    bad.segment = 3;
    require_argument_error([&] { routing_inputs(Space{}, bad, x, PaddingFlags(), routed); }, "layout.segment",
                           {"dividing the sequence length L = 8", "3"});
    bad.segment = 0;
    require_argument_error([&] { routing_inputs(Space{}, bad, x, PaddingFlags(), routed); }, "layout.segment", {"0"});
    bad = good;
    bad.sequences = 0;
    require_argument_error([&] { routing_inputs(Space{}, bad, x, PaddingFlags(), routed); }, "layout.sequences", {"0"});
    bad = good;
    bad.length = 0;
    require_argument_error([&] { routing_inputs(Space{}, bad, x, PaddingFlags(), routed); }, "layout.length", {"0"});
    require_argument_error([&] { routing_inputs(Space{}, good, Matrix<float, Space>("x", 15, 3), PaddingFlags(), routed); },
                           "x", {"[16, 3]", "[15, 3]"});
    require_argument_error([&] { routing_inputs(Space{}, good, x, PaddingFlags("m", 2, 7), routed); }, "padding",
                           {"[2, 8]", "[2, 7]"});
    require_argument_error([&] { routing_inputs(Space{}, good, x, PaddingFlags(), Matrix<float, Space>("r", 2, 3)); },
                           "routed", {"[4, 3]", "[2, 3]"});
    const auto overlapping = Kokkos::subview(x, std::pair<std::size_t, std::size_t>(0, 4), Kokkos::ALL);
    require_argument_error([&] { routing_inputs(Space{}, good, x, PaddingFlags(), overlapping); }, "routed", {"disjoint"});
    require_argument_error(
        [&] { routing_inputs_backward(Space{}, good, Matrix<float, Space>("d", 3, 3), PaddingFlags(), d_x); }, "d_routed",
        {"[4, 3]", "[3, 3]"});
    require_argument_error(
        [&] { routing_inputs_backward(Space{}, good, routed, PaddingFlags(), Matrix<float, Space>("d", 16, 2)); }, "d_x",
        {"[16, 3]", "[16, 2]"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
