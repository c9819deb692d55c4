// Soft merge forward and backward against an Eigen double reference, central finite differences, the two
// schedules, determinism, and every error path.
#include "camex/merge/soft_merge.hpp"

#include "testing.hpp"

#include <cmath>
#include <tuple>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

struct Case {
  int groups, experts;
  std::size_t params;
};

// Expert counts cover one block of 8, a block plus a remainder, and pure remainders; parameter counts cover a
// single short tile, many tiles with a ragged end, and more chunks than the backward's minimum of 64. The last
// case's d_experts (and merged) pass prefer_streaming_stores' 16 MiB, so the host schedule writes them past the
// caches. For the lane schedule's d_scores batch: less than one piece of 4096, whole pieces and a short one, and
// whole pieces only (2 x 4096); its lanes load vectors where P is a multiple of 4 (1000, 2048, 8192).
const std::vector<Case> cases = {{1, 1, 7},      {1, 8, 4096 * 3 + 37}, {4, 3, 1000}, {9, 11, 20011},
                                 {3, 17, 2048},  {32, 8, 70001},        {2, 3, 1'398'107}, {2, 5, 4096 * 2}};
const Schedule schedules[] = {Schedule::tiled, Schedule::lane_per_parameter};

const char* name(Schedule s) { return s == Schedule::tiled ? "tiled" : "lane_per_parameter"; }

/// |x - ref| <= bound elementwise, reporting the worst offender.
void require_within(const HostMatrix& x, const HostMatrix& ref, const HostMatrix& bound, const char* what) {
  BOOST_REQUIRE_EQUAL(x.rows(), ref.rows());
  BOOST_REQUIRE_EQUAL(x.cols(), ref.cols());
  const HostMatrix excess = (x - ref).cwiseAbs() - bound;
  Eigen::Index r, c;
  const double worst = excess.maxCoeff(&r, &c);
  BOOST_TEST(worst <= 0.0, what << "(" << r << ", " << c << ") = " << x(r, c) << ", reference " << ref(r, c)
                                << ", allowed error " << bound(r, c));
}

template <class T>
void check_forward_and_backward(const Case& k, Schedule schedule, std::mt19937_64& gen) {
  BOOST_TEST_CONTEXT("T = " << (sizeof(T) == 4 ? "float" : "double") << ", B = " << k.groups << ", N = "
                            << k.experts << ", P = " << k.params << ", schedule " << name(schedule)) {
    const HostMatrix s = rounded<T>(random_matrix(k.groups, k.experts, gen, 0.05, 1.0));
    const HostMatrix w = rounded<T>(random_matrix(k.experts, k.params, gen));
    const HostMatrix dm = rounded<T>(random_matrix(k.groups, k.params, gen));
    const auto scores = to_device<T>(s), experts = to_device<T>(w), d_merged = to_device<T>(dm);
    Matrix<T, Space> merged("merged", k.groups, k.params), d_scores("d_scores", k.groups, k.experts),
        d_experts("d_experts", k.experts, k.params);

    soft_merge(Space{}, scores, experts, merged, schedule);
    soft_merge_backward(Space{}, scores, experts, d_merged, d_scores, d_experts, schedule);

    // Each output is a sum of K products of exactly representable inputs, accumulated in T in a fixed order;
    // the classic bound for recursive summation gives |error| <= K * u * sum |terms| (fused multiply-adds only
    // remove roundings). The reference itself is double; for T = double it errs by the same bound again.
    const double u = unit_roundoff<T>, ref_u = unit_roundoff<double>;
    const HostMatrix abs_s = s.cwiseAbs(), abs_w = w.cwiseAbs(), abs_dm = dm.cwiseAbs();
    require_within(to_host(merged), s * w, (k.experts * u + k.experts * ref_u) * (abs_s * abs_w), "merged");
    require_within(to_host(d_experts), s.transpose() * dm, (k.groups * u + k.groups * ref_u) * (abs_s.transpose() * abs_dm),
                   "d_experts");
    // d_scores sums P products. Tiled: L = 64 / sizeof(T) interleaved partial sums over a tile of at most 4096
    // (<= 4096/L terms each, then a log2(L)-level tree and the tail), tile sums added in double, so |error| <=
    // (4096/L + log2(L) + 1) * u * sum |terms|, with log2(L) <= 4. Lanes: one GEMM per piece of at most 4096
    // parameters, its k-term sums in T in whatever order the GEMM takes (k u at worst), pieces added in double.
    const double terms_in_t = schedule == Schedule::tiled ? 4096.0 / detail::dot_lanes<T> + 5 : 4096.0 + 1;
    require_within(to_host(d_scores), dm * w.transpose(),
                   (terms_in_t * u + k.params * ref_u) * (abs_dm * abs_w.transpose()), "d_scores");
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(soft_merge_suite)

BOOST_AUTO_TEST_CASE(matches_eigen_reference) {
  std::mt19937_64 gen(test_seed());
  BOOST_TEST_CONTEXT("backend " << space_name << ", CAMEX_TEST_SEED=" << test_seed()) {
    for (const auto& k : cases)
      for (auto schedule : schedules) {
        check_forward_and_backward<float>(k, schedule, gen);
        check_forward_and_backward<double>(k, schedule, gen);
      }
  }
}

// Gradients of L(S, W) = <G, soft_merge(S, W)> by central differences in double. L is linear in each argument,
// so the difference quotient is exact but for the rounding of the two evaluations of L. Each evaluation sums
// B*P products of merged values that are themselves sums of N products, so it errs by at most
// (B*P + N) * u * sum |G| .* (|S| |W|); the quotient by twice that over 2h. That absolute bound (about 1e-7
// here, on gradients of order 10) plus 1e-9 relative is the tolerance: a gradient that cancels to a small value
// is still checked to the precision the difference quotient has.
BOOST_AUTO_TEST_CASE(backward_matches_central_differences) {
  std::mt19937_64 gen(test_seed() + 1);
  BOOST_TEST_CONTEXT("backend " << space_name << ", CAMEX_TEST_SEED=" << test_seed()) {
    const int B = 3, N = 5;
    const std::size_t P = 1531;
    HostMatrix s = random_matrix(B, N, gen, 0.1, 1.0), w = random_matrix(N, P, gen);
    const HostMatrix g = random_matrix(B, P, gen);
    const auto loss = [&](const HostMatrix& s_, const HostMatrix& w_) {
      Matrix<double, Space> merged("merged", B, P);
      soft_merge(Space{}, to_device<double>(s_), to_device<double>(w_), merged);
      return (g.array() * to_host(merged).array()).sum();
    };
    Matrix<double, Space> d_scores("d_scores", B, N), d_experts("d_experts", N, P);
    soft_merge_backward(Space{}, to_device<double>(s), to_device<double>(w), to_device<double>(g), d_scores, d_experts);
    const HostMatrix ds = to_host(d_scores), dw = to_host(d_experts);

    const double h = 1e-3;
    const double scale = (g.cwiseAbs().array() * (s.cwiseAbs() * w.cwiseAbs()).array()).sum();
    const double absolute = (B * double(P) + N) * unit_roundoff<double> * scale / h;
    const auto close = [&](double analytic, double fd) { return std::abs(analytic - fd) <= 1e-9 * std::abs(fd) + absolute; };
    const auto central = [&](double& x, auto&& f) {
      const double saved = x;
      x = saved + h;
      const double up = f();
      x = saved - h;
      const double down = f();
      x = saved;
      return (up - down) / (2 * h);
    };
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < N; ++n) {
        const double fd = central(s(b, n), [&] { return loss(s, w); });
        BOOST_TEST(close(ds(b, n), fd), "d_scores(" << b << ", " << n << ") = " << ds(b, n) << ", central difference "
                                                  << fd << ", allowed " << absolute << " + 1e-9 relative");
      }
    std::uniform_int_distribution<std::size_t> pick(0, P - 1);
    for (int trial = 0; trial < 12; ++trial) {
      const int n = trial % N;
      const std::size_t p = pick(gen);
      const double fd = central(w(n, p), [&] { return loss(s, w); });
      BOOST_TEST(close(dw(n, p), fd), "d_experts(" << n << ", " << p << ") = " << dw(n, p) << ", central difference "
                                                  << fd << ", allowed " << absolute << " + 1e-9 relative");
    }
  }
}

// Same inputs, same backend: the same bits, call after call and schedule after schedule for the forward; and the
// backward's d_scores is the same whatever the number of threads (ctest runs the OpenMP suite at 1 and 2
// threads; both must equal Serial, which is compiled into every build).
BOOST_AUTO_TEST_CASE(deterministic) {
  std::mt19937_64 gen(test_seed() + 2);
  const int B = 5, N = 8;
  const std::size_t P = 300007;
  const auto scores = to_device<float>(random_matrix(B, N, gen, 0, 1)),
             experts = to_device<float>(random_matrix(N, P, gen)), d_merged = to_device<float>(random_matrix(B, P, gen));
  const auto run = [&](auto space, Schedule schedule) {
    using S = decltype(space);
    Matrix<float, S> m("m", B, P), ds("ds", B, N), dw("dw", N, P);
    auto s = Kokkos::create_mirror_view_and_copy(typename S::memory_space{}, scores);
    auto w = Kokkos::create_mirror_view_and_copy(typename S::memory_space{}, experts);
    auto dm = Kokkos::create_mirror_view_and_copy(typename S::memory_space{}, d_merged);
    soft_merge(space, s, w, m, schedule);
    soft_merge_backward(space, s, w, dm, ds, dw, schedule);
    return std::tuple{to_host(m), to_host(ds), to_host(dw)};
  };
  const auto first = run(Space{}, Schedule::automatic);
  BOOST_TEST((first == run(Space{}, Schedule::automatic)));
#if defined(KOKKOS_ENABLE_SERIAL)
  if (Kokkos::SpaceAccessibility<Space, Kokkos::HostSpace>::accessible) {
    const auto serial = run(Kokkos::Serial{}, Schedule::automatic);
    BOOST_TEST((std::get<0>(first) == std::get<0>(serial)), "forward differs from Serial");
    BOOST_TEST((std::get<1>(first) == std::get<1>(serial)), "d_scores differs from Serial");
    BOOST_TEST((std::get<2>(first) == std::get<2>(serial)), "d_experts differs from Serial");
  }
#endif
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  Matrix<float, Space> scores("scores", 3, 4), experts("experts", 4, 100), merged("merged", 3, 100);
  Kokkos::deep_copy(scores, 0.25f);
  const char* fn = "camex::soft_merge";

  require_argument_error([&] { soft_merge(Space{}, scores, Matrix<float, Space>("e", 0, 100), merged); }, "experts",
                         {fn, "non-empty", "[0, 100]"});
  require_argument_error([&] { soft_merge(Space{}, scores, Matrix<float, Space>("e", 4, 0), merged); }, "experts",
                         {"non-empty", "[4, 0]"});
  require_argument_error([&] { soft_merge(Space{}, Matrix<float, Space>("s", 0, 4), experts, merged); }, "scores",
                         {"non-empty", "[0, 4]"});
  require_argument_error([&] { soft_merge(Space{}, Matrix<float, Space>("s", 3, 5), experts, merged); }, "scores",
                         {"[3, 4]", "given [3, 5]"});
  require_argument_error([&] { soft_merge(Space{}, scores, experts, Matrix<float, Space>("m", 3, 99)); }, "merged",
                         {"[3, 100]", "given [3, 99]"});
  require_argument_error([&] { soft_merge(Space{}, scores, experts, Matrix<float, Space>("m", 2, 100)); }, "merged",
                         {"[3, 100]", "given [2, 100]"});

  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    Kokkos::deep_copy(Kokkos::subview(scores, 2, 1), bad);
    require_argument_error([&] { soft_merge(Space{}, scores, experts, merged); }, "scores",
                           {"finite", "scores(2, 1) = "});
    Kokkos::deep_copy(scores, 0.25f);
  }

  // Writing into an input would read half-merged values.
  Matrix<float, Space> both("both", 4, 100);
  require_argument_error(
      [&] { soft_merge(Space{}, scores, both, Kokkos::subview(both, Kokkos::make_pair(0, 3), Kokkos::ALL)); }, "merged",
      {"disjoint from 'experts'"});

  Matrix<float, Space> d_scores("ds", 3, 4), d_experts("dw", 4, 100);
  const char* bfn = "camex::soft_merge_backward";
  require_argument_error([&] { soft_merge_backward(Space{}, scores, experts, Matrix<float, Space>("dm", 3, 7), d_scores, d_experts); },
                         "d_merged", {bfn, "[3, 100]", "given [3, 7]"});
  require_argument_error([&] { soft_merge_backward(Space{}, scores, experts, merged, Matrix<float, Space>("ds", 4, 3), d_experts); },
                         "d_scores", {"[3, 4]", "given [4, 3]"});
  require_argument_error([&] { soft_merge_backward(Space{}, scores, experts, merged, d_scores, Matrix<float, Space>("dw", 4, 101)); },
                         "d_experts", {"[4, 100]", "given [4, 101]"});
  require_argument_error([&] { soft_merge_backward(Space{}, scores, experts, merged, d_scores, experts); }, "d_experts",
                         {"disjoint from 'experts'"});

  const std::size_t need = soft_merge_backward_workspace_bytes<float>(3, 4, 100);
  BOOST_TEST(need > 0u);
  require_argument_error(
      [&] { soft_merge_backward(Space{}, scores, experts, merged, d_scores, d_experts, make_workspace<Space>(need - 1)); },
      "workspace", {"at least " + std::to_string(need) + " bytes", "given " + std::to_string(need - 1) + " bytes"});
  const auto big = make_workspace<Space>(need + 8);
  require_argument_error(
      [&] {
        soft_merge_backward(Space{}, scores, experts, merged, d_scores, d_experts,
                            Kokkos::subview(big, Kokkos::make_pair(std::size_t{1}, need + 8)));
      },
      "workspace", {"aligned to 64 bytes"});
}

BOOST_AUTO_TEST_SUITE_END()
