// AdamW with warm-up, linear decay and global-norm clipping: three steps over two tensors (one with weight decay,
// one without) against the update written out in double on the host, the schedule's shape, and the errors.
#include "common/train/adamw.hpp"

#include "testing.hpp"

#include <cmath>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::examples;
using namespace camex::testing;

BOOST_AUTO_TEST_CASE(schedule_warms_up_then_decays_linearly) {
  const AdamWOptions o{.learning_rate = 2.0, .warmup = 4, .total = 14, .final_fraction = 0.25};
  BOOST_TEST(scheduled_rate(o, 0) == 0.5);
  BOOST_TEST(scheduled_rate(o, 3) == 2.0);
  BOOST_TEST(std::abs(scheduled_rate(o, 9) - 2.0 * (1 - 0.5 * 0.75)) <= 1e-15);
  BOOST_TEST(scheduled_rate(o, 14) == 0.5);
  BOOST_TEST(scheduled_rate(o, 100) == 0.5);
}

BOOST_AUTO_TEST_CASE(adamw_matches_the_update_in_double) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    std::uniform_real_distribution<double> u(-1, 1);
    const std::size_t sizes[2] = {7, 5};
    std::vector<Vec<double, Space>> values, grads;
    std::vector<NamedTensor<double, Space>> tensors;
    std::vector<std::vector<double>> w(2), m(2, std::vector<double>(7, 0.0)), v(2, std::vector<double>(7, 0.0));
    for (int i = 0; i < 2; ++i) {
      values.emplace_back("w", sizes[i]);
      grads.emplace_back("g", sizes[i]);
      auto host = Kokkos::create_mirror_view(values[i]);
      for (std::size_t k = 0; k < sizes[i]; ++k) w[i].push_back(host(k) = u(gen));
      Kokkos::deep_copy(values[i], host);
      tensors.push_back({i == 0 ? "decayed" : "plain", {sizes[i]}, Parameter<double, Space>::of(i == 0 ? "decayed" : "plain", values[i], grads[i]), i == 0});
    }
    const AdamWOptions o{.learning_rate = 0.01, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-6, .weight_decay = 0.3,
                         .clip = 0.7, .warmup = 2, .total = 3, .final_fraction = 0.5};
    AdamW<double, Space> adam(tensors, o);
    for (int t = 1; t <= 3; ++t) {
      std::vector<std::vector<double>> g(2);
      double norm = 0;
      for (int i = 0; i < 2; ++i) {
        auto host = Kokkos::create_mirror_view(grads[i]);
        for (std::size_t k = 0; k < sizes[i]; ++k) {
          g[i].push_back(host(k) = 2 * u(gen));  // norms near 3: clipping is active
          norm += g[i][k] * g[i][k];
        }
        Kokkos::deep_copy(grads[i], host);
      }
      norm = std::sqrt(norm);
      BOOST_TEST(std::abs(adam.step(Space{}) - norm) <= 1e-14 * norm);
      const double lr = scheduled_rate(o, t - 1), scale = std::min(1.0, o.clip / norm);
      for (int i = 0; i < 2; ++i)
        for (std::size_t k = 0; k < sizes[i]; ++k) {
          const double gk = g[i][k] * scale;
          m[i][k] = o.beta1 * m[i][k] + (1 - o.beta1) * gk;
          v[i][k] = o.beta2 * v[i][k] + (1 - o.beta2) * gk * gk;
          const double mhat = m[i][k] / (1 - std::pow(o.beta1, t)), vhat = v[i][k] / (1 - std::pow(o.beta2, t));
          w[i][k] -= lr * (mhat / (std::sqrt(vhat) + o.eps) + (i == 0 ? o.weight_decay : 0.0) * w[i][k]);
        }
    }
    for (int i = 0; i < 2; ++i) {
      auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values[i]);
      for (std::size_t k = 0; k < sizes[i]; ++k) BOOST_TEST(std::abs(host(k) - w[i][k]) <= 1e-14);
    }
  }
}

// A finite gradient whose square is beyond float's range (clipping off) leaves the second moment infinite: the
// step reports how many entries it left non-finite, and an ordinary step reports none.
BOOST_AUTO_TEST_CASE(adamw_reports_an_update_that_overflows) {
  CAMEX_TEST_CONTEXT() {
    Vec<float, Space> w("w", 4), g("g", 4);
    AdamW<float, Space> adam({{"w", {4}, Parameter<float, Space>::of("w", w, g), false}}, {.clip = 0});
    Kokkos::deep_copy(g, 0.5f);
    adam.step(Space{});
    BOOST_TEST(adam.last_step_overflows() == 0u);
    auto host = Kokkos::create_mirror_view(g);
    host(0) = 0.25f;
    host(1) = 3e20f;  // finite; its square is not
    host(2) = -0.5f;
    host(3) = 1e-3f;
    Kokkos::deep_copy(g, host);
    adam.step(Space{});
    BOOST_TEST(adam.last_step_overflows() == 1u);
  }
}

BOOST_AUTO_TEST_CASE(adamw_errors) {
  CAMEX_TEST_CONTEXT() {
    require_argument_error([] { AdamW<float, Space>({}, {.learning_rate = 0}); }, "learning_rate", {"a positive rate", "given 0"});
    require_argument_error([] { AdamW<float, Space>({}, {.beta2 = 1}); }, "beta2", {"[0, 1)", "given 1"});
    Vec<float, Space> w("w", 3), g("g", 3);
    Kokkos::deep_copy(g, std::nanf(""));
    AdamW<float, Space> adam({{"w", {3}, Parameter<float, Space>::of("w", w, g), false}}, {});
    BOOST_CHECK_EXCEPTION(adam.step(Space{}), std::runtime_error, [](const std::runtime_error& e) {
      return std::string(e.what()).find("gradient norm is nan") != std::string::npos;
    });
  }
}
