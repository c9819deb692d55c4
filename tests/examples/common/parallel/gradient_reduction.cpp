// The gradient reduction of data-parallel training, on as many processes as the test is launched with (ctest runs
// it alone and under mpirun -np 3): every rank ends with the sum over ranks, in rank order, of each rank's weighted
// gradients, taken in double and rounded once, bit for bit as a plain loop computes it, on uneven shares and on
// tensors shorter than the rank count; the losses' weighted sums and the stop decision likewise; bad weights are
// an error naming them.
#include <boost/test/unit_test.hpp>

#include "common/parallel/gradient_reduction.hpp"

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <memory>
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

BOOST_AUTO_TEST_CASE(every_rank_ends_with_the_ordered_weighted_sum) {
  const int p = ranks->size(), me = ranks->rank();
  // Three tensors, one shorter than the rank count, so the shards cut through and across tensors.
  const std::vector<std::size_t> lengths{1000, 2, 37};
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
  GradientReduction<float, Space> reduction(*ranks, tensors, weights);
  reduction.reduce(Space());
  offset = 0;
  std::size_t differing = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    for (std::size_t k = 0; k < lengths[i]; ++k) {
      double sum = 0;
      for (int r = 0; r < p; ++r) sum += weights[static_cast<std::size_t>(r)] * static_cast<double>(entry(r, offset + k));
      const float expected = p == 1 ? entry(0, offset + k) : static_cast<float>(sum);  // alone: left as it was
      differing += gradients[i](k) != expected ? 1 : 0;
    }
    offset += lengths[i];
  }
  BOOST_TEST(differing == 0u, differing << " of " << offset << " entries differ from the ordered sum on rank " << me);
  const std::size_t total = offset, mine = (static_cast<std::size_t>(me) + 1) * total / p - static_cast<std::size_t>(me) * total / p;
  BOOST_TEST(reduction.values_sent_per_step() == total - mine + mine * static_cast<std::size_t>(p - 1));
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
}

BOOST_AUTO_TEST_CASE(weights_for_another_rank_count_are_refused) {
  std::vector<NamedTensor<float, Space>> none;
  try {
    GradientReduction<float, Space>(*ranks, none, std::vector<double>(static_cast<std::size_t>(ranks->size()) + 1, 0.5));
    BOOST_FAIL("no error");
  } catch (const camex::argument_error& e) {
    const std::string message = e.what();
    BOOST_TEST(message.find("weights") != std::string::npos, message);
    BOOST_TEST(message.find(std::to_string(ranks->size()).insert(0, "one weight for each of the ") + " ranks") != std::string::npos,
               message);
  }
}
