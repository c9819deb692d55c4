// The gradient reduction of data-parallel training, on as many processes as the test is launched with (ctest runs
// it alone and under mpirun -np 3): every rank ends with the sum over ranks, in rank order, of each rank's weighted
// gradients, taken in double (each step a fused multiply-add, as the reduction spells it) and rounded once, bit for
// bit as a plain loop computes it, on uneven shares and on tensors shorter than the rank count, whichever buckets
// the gradients are sent in and whenever the backward says they are ready; the losses' weighted sums and the stop
// decision likewise, and every rank's bytes gathered in rank order; a sharded AdamW (ZeRO stage 1: reduce-scatter,
// each rank's update of its shard, all-gather of the values) ends every rank with the values and, gathered on rank
// 0, the moments of the unsharded update, bit for bit; bad weights, bounds, groups and readiness orders are errors
// naming them.
#include <boost/test/unit_test.hpp>

#include "common/parallel/gradient_reduction.hpp"
#include "common/parallel/optimiser_shards.hpp"

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace camex::examples;

namespace {

// MPI is joined once per process, after Kokkos (tests/support/main.cpp), and left before it.
std::unique_ptr<Ranks> ranks;
struct MpiSession {
  MpiSession() {
    auto& suite = boost::unit_test::framework::master_test_suite();
    int argc = suite.argc;
    char** argv = suite.argv;
    ranks = std::make_unique<Ranks>(argc, argv);
  }
  ~MpiSession() { ranks.reset(); }
};

using Space = Kokkos::DefaultHostExecutionSpace;

/// Rank r's gradient entries: fresh draws keyed by (rank, entry), so every rank can recompute every rank's.
float entry(int rank, std::size_t k) {
  std::mt19937_64 gen(1000003u * static_cast<std::uint64_t>(rank) + k);
  return std::uniform_real_distribution<float>(-3.0f, 3.0f)(gen);
}

}  // namespace

BOOST_TEST_GLOBAL_FIXTURE(MpiSession);

namespace {

/// Each tensor its own group, the last tensor's first (as a backward finishes them).
BackwardGroups reverse_groups(std::size_t tensors) {
  BackwardGroups groups;
  for (std::size_t i = tensors; i-- > 0;) groups.push_back({i});
  return groups;
}

/// One step of `reduction` whose groups are told ready one by one, as a backward does, then completed.
template <class Reduction>
void reduce_step(Reduction& reduction, std::size_t groups) {
  for (std::size_t g = 0; g < groups; ++g) reduction.gradients_ready(Space(), g);
  reduction.complete(Space());
}

/// The gradients of `lengths`-long tensors reduced in the buckets `plan` makes (groups ready one by one, where it
/// has groups), against the ordered sum recomputed here.
void check_ordered_sum(const std::vector<std::size_t>& lengths, const ReductionPlan& plan, std::size_t expected_buckets) {
  const int p = ranks->size(), me = ranks->rank();
  std::vector<Kokkos::View<float*, Space::memory_space>> values, gradients;
  std::vector<NamedTensor<float, Space>> tensors;
  std::size_t offset = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    values.emplace_back("value", lengths[i]);
    gradients.emplace_back("gradient", lengths[i]);
    for (std::size_t k = 0; k < lengths[i]; ++k) gradients[i](k) = entry(me, offset + k);
    tensors.push_back({std::string(1, static_cast<char>('a' + i)), {lengths[i]}, camex::Parameter<float, Space>::of("t", values[i], gradients[i])});
    offset += lengths[i];
  }
  const std::vector<double> weights = share_weights(*ranks, 7);  // shares of 7 items: uneven for 2 or 3 ranks
  std::vector<std::size_t> every_entry(offset + 1);
  std::iota(every_entry.begin(), every_entry.end(), std::size_t{0});
  const auto bounds = shard_bounds(every_entry, p);
  GradientReduction<float, Space> reduction(*ranks, tensors, weights, bounds, plan);
  BOOST_TEST(reduction.buckets() == expected_buckets);
  reduce_step(reduction, plan.groups.size());
  offset = 0;
  std::size_t differing = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    for (std::size_t k = 0; k < lengths[i]; ++k) {
      double sum = 0;
      for (int r = 0; r < p; ++r) sum = std::fma(weights[static_cast<std::size_t>(r)], static_cast<double>(entry(r, offset + k)), sum);
      const float expected = p == 1 ? entry(0, offset + k) : static_cast<float>(sum);  // alone: left as it was
      differing += gradients[i](k) != expected ? 1 : 0;
    }
    offset += lengths[i];
  }
  BOOST_TEST(differing == 0u, differing << " of " << offset << " entries differ from the ordered sum on rank " << me);
  const std::size_t total = offset, mine = bounds[static_cast<std::size_t>(me) + 1] - bounds[static_cast<std::size_t>(me)];
  BOOST_TEST(reduction.values_sent_per_step() == total - mine + mine * static_cast<std::size_t>(p - 1));
}

}  // namespace

// Three tensors, one shorter than the rank count, so the shards cut through and across tensors and buckets: one
// bucket; each tensor its own, the last first; buckets of at least 30 entries (the 2-entry tensor joins the first).
BOOST_AUTO_TEST_CASE(every_rank_ends_with_the_ordered_weighted_sum) {
  const std::vector<std::size_t> lengths{1000, 2, 37};
  BOOST_TEST_CONTEXT("one bucket") { check_ordered_sum(lengths, {}, 1); }
  BOOST_TEST_CONTEXT("a bucket per tensor") { check_ordered_sum(lengths, {.groups = reverse_groups(3), .bucket_entries = 0}, 3); }
  BOOST_TEST_CONTEXT("buckets of 30 entries") {
    check_ordered_sum(lengths, {.groups = reverse_groups(3), .bucket_entries = 30}, 2);
  }
}

BOOST_AUTO_TEST_CASE(losses_are_weighted_sums_and_every_rank_takes_the_same_decision) {
  const int p = ranks->size(), me = ranks->rank();
  double losses[2] = {1.0 + me, 0.5 * me};
  const double weight = 1.0 / (me + 1);
  ranks->weighted_sum(losses, weight);
  double first = 0, second = 0;
  for (int r = 0; r < p; ++r) {
    first += (1.0 / (r + 1)) * (1.0 + r);
    second += (1.0 / (r + 1)) * (0.5 * r);
  }
  BOOST_TEST(losses[0] == first);
  BOOST_TEST(losses[1] == second);
  BOOST_TEST(ranks->max(me == p - 1 ? 15u : 0u) == 15u);  // a signal only the last rank saw stops every rank
  const std::byte mine[2] = {static_cast<std::byte>(me), static_cast<std::byte>(100 + me)};
  const std::vector<std::byte> all = ranks->all_gather_bytes(mine);
  BOOST_TEST_REQUIRE(all.size() == 2u * static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r)
    BOOST_TEST((all[2 * static_cast<std::size_t>(r)] == static_cast<std::byte>(r) &&
                all[2 * static_cast<std::size_t>(r) + 1] == static_cast<std::byte>(100 + r)));
}

namespace {

/// Tensors of `lengths` entries with values and gradients drawn from (rank, tensor, entry); every other tensor decays.
struct Model {
  std::vector<Kokkos::View<float*, Space::memory_space>> values, gradients;
  std::vector<NamedTensor<float, Space>> tensors;
  Model(const std::vector<std::size_t>& lengths, int rank) {
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      values.emplace_back("value", lengths[i]);
      gradients.emplace_back("gradient", lengths[i]);
      for (std::size_t k = 0; k < lengths[i]; ++k) {
        values[i](k) = 0.1f * entry(-1, 7919 * i + k);  // alike on every rank
        gradients[i](k) = entry(rank, 7919 * i + k);
      }
      tensors.push_back({camex::concat("t", i), {lengths[i]}, camex::Parameter<float, Space>::of("t", values[i], gradients[i]), i % 2 == 0});
    }
  }
  void draw_gradients(int rank, int step) {
    for (std::size_t i = 0; i < gradients.size(); ++i)
      for (std::size_t k = 0; k < gradients[i].extent(0); ++k) gradients[i](k) = entry(rank + 100 * step, 7919 * i + k);
  }
};

/// Three steps of a whole and of a sharded optimiser over tensors of `lengths` entries, compared.
void sharded_steps(const std::vector<std::size_t>& lengths) {
  const int p = ranks->size(), me = ranks->rank();
  const std::size_t total = std::accumulate(lengths.begin(), lengths.end(), std::size_t{0});
  const auto cuts = norm_chunk_bounds(lengths, AdamW<float, Space>::norm_chunk);
  const auto bounds = shard_bounds(cuts, p);
  const std::vector<double> weights = share_weights(*ranks, 5);
  const AdamWOptions options{.learning_rate = 0.01, .weight_decay = 0.1, .clip = 0.5, .warmup = 1, .total = 3};
  Model whole(lengths, me), sharded(lengths, me);
  GradientReduction<float, Space> whole_reduction(*ranks, whole.tensors, weights, bounds);
  // The sharded run's gradients in a bucket per tensor, ready one by one.
  const ReductionPlan own_shard{.result = ReducedGradients::own_shard, .groups = reverse_groups(lengths.size()), .bucket_entries = 0};
  GradientReduction<float, Space> shard_reduction(*ranks, sharded.tensors, weights, bounds, own_shard);
  AdamW<float, Space> whole_adam(whole.tensors, options);
  AdamW<float, Space> shard_adam(sharded.tensors, options, shard_reduction.shard());
  OptimiserShards<float, Space> whole_shards(*ranks, whole_reduction, whole_adam, cuts, bounds, false);
  OptimiserShards<float, Space> shards(*ranks, shard_reduction, shard_adam, cuts, bounds, true);
  BOOST_TEST(shard_adam.owned_first_moments().extent(0) == shard_reduction.shard().size());
  for (int step = 0; step < 3; ++step) {
    whole.draw_gradients(me, step);
    sharded.draw_gradients(me, step);
    whole_reduction.complete(Space());
    const double whole_norm = whole_shards.gradient_norm(Space());
    whole_adam.step(Space(), whole_norm);
    reduce_step(shard_reduction, lengths.size());
    const double norm = shards.gradient_norm(Space());
    BOOST_TEST(norm == whole_norm, "step " << step << " on rank " << me);
    shard_adam.step(Space(), norm);
    BOOST_TEST(shards.last_step_overflows() == 0u);
    shard_reduction.all_gather_values(Space());
  }
  std::size_t differing = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i)
    for (std::size_t k = 0; k < lengths[i]; ++k) differing += whole.values[i](k) != sharded.values[i](k) ? 1 : 0;
  BOOST_TEST(differing == 0u, differing << " of " << total << " values differ on rank " << me);
  const HostMoments<float> gathered = shards.gather_moments();
  if (ranks->leader()) {
    std::size_t moments_differing = 0;
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      const auto part = whole_adam.owned_part(i);
      const std::size_t at = whole_adam.flat_offset(i);
      for (std::size_t k = 0; k < lengths[i]; ++k)
        moments_differing += (gathered.m(at + k) != part.m(k) ? 1 : 0) + (gathered.v(at + k) != part.v(k) ? 1 : 0);
    }
    BOOST_TEST(moments_differing == 0u);
  }
}

}  // namespace

// Three steps of AdamW on tensors of several norm chunks (and one shorter than a chunk), clipping active: every
// rank's values after sharded steps (each rank updating its shard, then the all-gather) equal the unsharded run's,
// and so do the moments rank 0 gathers, bit for bit. Also for a model of one chunk, where one rank's shard is
// everything and the others' are empty: every rank still calls the same collectives.
BOOST_AUTO_TEST_CASE(a_sharded_optimiser_takes_the_unsharded_steps) {
  for (const std::vector<std::size_t>& lengths : {std::vector<std::size_t>{9000, 3, 4096, 5000, 37}, std::vector<std::size_t>{37}})
    sharded_steps(lengths);
}

BOOST_AUTO_TEST_CASE(weights_and_bounds_that_do_not_fit_are_refused) {
  std::vector<NamedTensor<float, Space>> none;
  const std::vector<std::size_t> no_entries(static_cast<std::size_t>(ranks->size()) + 1, 0);
  const auto reduction_over = [&](const std::vector<std::size_t>& bounds) {
    GradientReduction<float, Space> reduction(*ranks, none, share_weights(*ranks, 4), bounds);
  };
  BOOST_CHECK_EXCEPTION(reduction_over(std::vector<std::size_t>(6, 0)), camex::argument_error, [](const camex::argument_error& e) {
    return e.argument() == "bounds" && std::string(e.what()).find("ordered positions from 0 to the 0 entries") != std::string::npos;
  });
  try {
    GradientReduction<float, Space>(*ranks, none, std::vector<double>(static_cast<std::size_t>(ranks->size()) + 1, 0.5), no_entries);
    BOOST_FAIL("no error");
  } catch (const camex::argument_error& e) {
    const std::string message = e.what();
    BOOST_TEST(message.find("weights") != std::string::npos, message);
    BOOST_TEST(message.find(std::to_string(ranks->size()).insert(0, "one weight for each of the ") + " ranks") != std::string::npos,
               message);
  }
}

BOOST_AUTO_TEST_CASE(groups_that_do_not_fit_and_readiness_out_of_order_are_refused) {
  std::vector<Kokkos::View<float*, Space::memory_space>> views{Kokkos::View<float*, Space::memory_space>("a", 3),
                                                               Kokkos::View<float*, Space::memory_space>("b", 4)};
  std::vector<NamedTensor<float, Space>> two;
  for (const auto& v : views) two.push_back({v.label(), {3}, camex::Parameter<float, Space>::of("t", v, v)});
  std::vector<std::size_t> every_entry(8);
  std::iota(every_entry.begin(), every_entry.end(), std::size_t{0});
  const auto bounds = shard_bounds(every_entry, ranks->size());
  const auto weights = share_weights(*ranks, 4);
  const auto refused = [&](const BackwardGroups& groups, const std::string& expected) {
    try {
      GradientReduction<float, Space>(*ranks, two, weights, bounds, {.groups = groups});
      BOOST_FAIL("no error for groups " << expected);
    } catch (const camex::argument_error& e) {
      BOOST_TEST(e.argument() == "plan.groups");
      BOOST_TEST(std::string(e.what()).find(expected) != std::string::npos, e.what());
    }
  };
  refused({{0}, {2}}, "indices of the 2 tensors");
  refused({{0, 1}, {1}}, "tensor 1 (b) in 2");
  refused({{1}}, "tensor 0 (a) in 0");
  GradientReduction<float, Space> reduction(*ranks, two, weights, bounds, {.groups = {{1}, {0}}, .bucket_entries = 0});
  const auto out_of_order = [&](std::size_t group, const std::string& expected) {
    BOOST_CHECK_EXCEPTION(reduction.gradients_ready(Space(), group), camex::argument_error, [&](const camex::argument_error& e) {
      return e.argument() == "group" && std::string(e.what()).find(expected) != std::string::npos;
    });
  };
  out_of_order(1, "group 0 of 2");
  reduction.gradients_ready(Space(), 0);
  out_of_order(0, "group 1 of 2");
  reduction.gradients_ready(Space(), 1);
  out_of_order(2, "group 2 of 2");
  reduction.complete(Space());
  reduction.gradients_ready(Space(), 0);  // a new step
  reduction.complete(Space());
}
