// AdamW with warm-up, linear decay and global-norm clipping: three steps over two tensors (one with weight decay,
// one without) against the update written out in double on the host, the schedule's shape, shards of the optimiser
// (ZeRO stage 1) against the whole one, bit for bit, and the errors.
#include "common/train/adamw.hpp"

#include "testing.hpp"

#include <cmath>
#include <random>
#include <span>
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

BOOST_AUTO_TEST_CASE(norm_chunks_cut_each_tensor_from_its_start) {
  BOOST_TEST((norm_chunk_bounds({10, 0, 4, 9}, 4) == std::vector<std::size_t>{0, 4, 8, 10, 14, 18, 22, 23}));
  BOOST_TEST((norm_chunk_bounds({}, 4) == std::vector<std::size_t>{0}));
}

// Two optimiser shards over the same tensors, cut on a norm chunk inside a tensor, each given the other's chunk sums
// as the ranks would gather them: the norms and, after three steps with clipping active, every value equal those of
// one AdamW over everything, bit for bit; the moments each shard holds are its own entries'.
BOOST_AUTO_TEST_CASE(shards_of_the_optimiser_take_the_whole_optimisers_steps) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::vector<std::size_t> lengths{9000, 5, 4100};
    constexpr std::size_t chunk = AdamW<float, Space>::norm_chunk;
    std::vector<Vec<float, Space>> values[2], grads[2];
    std::vector<NamedTensor<float, Space>> tensors[2];
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<std::vector<float>> initial;
    for (const std::size_t n : lengths) {
      initial.emplace_back(n);
      for (float& x : initial.back()) x = u(gen);
    }
    for (int copy = 0; copy < 2; ++copy)
      for (std::size_t i = 0; i < lengths.size(); ++i) {
        values[copy].emplace_back("w", lengths[i]);
        grads[copy].emplace_back("g", lengths[i]);
        auto host = Kokkos::create_mirror_view(values[copy][i]);
        for (std::size_t k = 0; k < lengths[i]; ++k) host(k) = initial[i][k];
        Kokkos::deep_copy(values[copy][i], host);
        tensors[copy].push_back({camex::concat("t", i), {lengths[i]},
                                 Parameter<float, Space>::of("t", values[copy][i], grads[copy][i]), i != 1});
      }
    const AdamWOptions o{.learning_rate = 0.01, .clip = 1.0, .warmup = 1, .total = 3};
    const std::size_t cut = 2 * chunk, total = 9000 + 5 + 4100;
    AdamW<float, Space> whole(tensors[0], o), first(tensors[1], o, FlatRange{0, cut}), second(tensors[1], o, FlatRange{cut, total});
    BOOST_TEST(first.owned_chunks() == (FlatRange{0, 2}));
    BOOST_TEST(second.owned_chunks() == (FlatRange{2, 6}));  // 9000: 3 chunks, 5: 1, 4100: 2
    BOOST_TEST(second.owned_first_moments().extent(0) == total - cut);
    const auto chunk_sums = [&](std::span<double> parts, FlatRange chunks) {
      // What the other rank computes for its chunks: each chunk's squares summed in order, in double.
      std::size_t c = 0;
      for (std::size_t i = 0; i < lengths.size(); ++i) {
        auto g = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, grads[1][i]);
        for (std::size_t start = 0; start < lengths[i]; start += chunk, ++c) {
          if (c < chunks.first || c >= chunks.last) continue;
          double acc = 0;
          for (std::size_t k = start; k < std::min(start + chunk, lengths[i]); ++k) acc += static_cast<double>(g(k)) * g(k);
          parts[c] = acc;
        }
      }
    };
    for (int step = 0; step < 3; ++step) {
      for (int copy = 0; copy < 2; ++copy)
        for (std::size_t i = 0; i < lengths.size(); ++i) {
          auto g = Kokkos::create_mirror_view(grads[copy][i]);
          std::mt19937_64 draw(1000 * static_cast<std::uint64_t>(step) + i);
          for (std::size_t k = 0; k < lengths[i]; ++k) g(k) = 3 * std::uniform_real_distribution<float>(-1, 1)(draw);
          Kokkos::deep_copy(grads[copy][i], g);
        }
      const double norm = whole.gradient_norm(Space{});
      const double first_norm = first.gradient_norm(Space{}, [&](std::span<double> parts) { chunk_sums(parts, FlatRange{2, 6}); });
      const double second_norm = second.gradient_norm(Space{}, [&](std::span<double> parts) { chunk_sums(parts, FlatRange{0, 2}); });
      BOOST_TEST(first_norm == norm);
      BOOST_TEST(second_norm == norm);
      whole.step(Space{}, norm);
      first.step(Space{}, norm);
      second.step(Space{}, norm);
    }
    std::size_t differing = 0;
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      auto a = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values[0][i]);
      auto b = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values[1][i]);
      for (std::size_t k = 0; k < lengths[i]; ++k) differing += a(k) != b(k) ? 1 : 0;
    }
    BOOST_TEST(differing == 0u);
    // Tensor 0's entries past the cut belong to the second shard: their moments are there.
    BOOST_TEST(first.owned_part(0).end == cut);
    BOOST_TEST(second.owned_part(0).begin == cut);
    BOOST_TEST(first.owned_part(2).begin == first.owned_part(2).end);
    auto whole_m = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, whole.owned_part(0).m);
    auto second_m = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, second.owned_part(0).m);
    BOOST_TEST(second_m.extent(0) == 9000 - cut);
    BOOST_TEST(second_m(0) == whole_m(cut));
  }
}

BOOST_AUTO_TEST_CASE(an_optimiser_shard_must_start_and_end_on_norm_chunks) {
  CAMEX_TEST_CONTEXT() {
    Vec<float, Space> w("w", 5000), g("g", 5000);
    const std::vector<NamedTensor<float, Space>> tensors{{"w", {5000}, Parameter<float, Space>::of("w", w, g), false}};
    require_argument_error([&] { AdamW<float, Space>(tensors, {}, FlatRange{0, 100}); }, "owned",
                           {"starts and ends where a norm chunk does", "every 4096 entries", "given [0, 100)"});
    require_argument_error([&] { AdamW<float, Space>(tensors, {}, FlatRange{5000, 4096}); }, "owned", {"given [5000, 4096)"});
    AdamW<float, Space> shard(tensors, {}, FlatRange{4096, 5000});
    BOOST_CHECK_THROW(shard.gradient_norm(Space{}), std::logic_error);  // it needs the other shard's chunk sums
  }
}
