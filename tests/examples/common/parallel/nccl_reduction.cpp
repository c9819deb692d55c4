// The NCCL transport of the gradient reduction (examples/common/parallel/nccl_gradient_reduction.hpp) on one GPU: a
// communicator of one rank sends every run to itself, through the same packing, NCCL calls, rank-ordered sum kernel
// and unpacking as on many. With the rank's weight 0.75 every gradient entry comes back as 0.75 g taken in double and
// rounded once, bit for bit as the MPI transport's sum (the same sum_in_rank_order) computes it, in one bucket and
// in a bucket per tensor, whole and own-shard, step after step, with the host never waiting inside the reduction;
// values gathered after an update come back unchanged. Built where the build found NCCL on Kokkos' Cuda backend; the
// GPU check (scripts/gpu-check) runs it.
#include <boost/test/unit_test.hpp>

#include "common/parallel/nccl_gradient_reduction.hpp"

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace camex::examples;

namespace {

using Space = Kokkos::Cuda;
using Device = Kokkos::View<float*, Space::memory_space>;

float entry(std::uint64_t step, std::size_t k) {
  std::mt19937_64 gen(7919u * step + k);
  return std::uniform_real_distribution<float>(-3.0f, 3.0f)(gen);
}

struct Tensors {
  std::vector<Device> values, gradients;
  std::vector<NamedTensor<float, Space>> named;
  explicit Tensors(const std::vector<std::size_t>& lengths) {
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      values.emplace_back("value", lengths[i]);
      gradients.emplace_back("gradient", lengths[i]);
      named.push_back({camex::concat("t", i), {lengths[i]}, camex::Parameter<float, Space>::of("t", values[i], gradients[i])});
    }
  }
  /// Fresh gradients for `step`, flat entry k drawn from (step, k); values likewise from (step + 1000, k).
  void draw(std::uint64_t step) {
    std::size_t at = 0;
    for (std::size_t i = 0; i < gradients.size(); ++i) {
      auto g = Kokkos::create_mirror_view(gradients[i]);
      auto v = Kokkos::create_mirror_view(values[i]);
      for (std::size_t k = 0; k < g.extent(0); ++k) {
        g(k) = entry(step, at + k);
        v(k) = entry(step + 1000, at + k);
      }
      Kokkos::deep_copy(gradients[i], g);
      Kokkos::deep_copy(values[i], v);
      at += g.extent(0);
    }
  }
  /// Entries of `field` that differ from `expected(flat index)`.
  template <class Expected>
  std::size_t differing(const std::vector<Device>& field, Expected expected) const {
    std::size_t at = 0, count = 0;
    for (const auto& view : field) {
      const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, view);
      for (std::size_t k = 0; k < host.extent(0); ++k) count += host(k) != expected(at + k) ? 1 : 0;
      at += host.extent(0);
    }
    return count;
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(one_gpu_reduces_as_the_ordered_sum) {
  int argc = 1;
  char name[] = "nccl_reduction";
  char* args[] = {name, nullptr};
  char** argv = args;
  const Ranks ranks(argc, argv);  // not launched by mpirun: one rank, no MPI
  const auto communicator = std::make_shared<const NcclCommunicator>(NcclCommunicator::alone());
  const std::vector<std::size_t> lengths{5000, 3, 70000, 1};
  std::size_t total = 0;
  for (const std::size_t n : lengths) total += n;
  const std::vector<std::size_t> bounds{0, total};
  const double weight = 0.75;
  BackwardGroups each_tensor;  // the last tensor first, as a backward finishes them
  for (std::size_t i = lengths.size(); i-- > 0;) each_tensor.push_back({i});
  for (const auto result : {ReducedGradients::everywhere, ReducedGradients::own_shard})
    for (const std::size_t bucket_entries : {std::size_t{0}, std::numeric_limits<std::size_t>::max()}) {
      BOOST_TEST_CONTEXT((result == ReducedGradients::everywhere ? "everywhere" : "own shard")
                         << ", " << (bucket_entries == 0 ? "a bucket per tensor" : "one bucket")) {
        Tensors tensors(lengths);
        NcclGradientReduction<float> reduction(ranks, tensors.named, {weight}, bounds,
                                               {.result = result, .groups = each_tensor, .bucket_entries = bucket_entries},
                                               communicator);
        BOOST_TEST(reduction.buckets() == (bucket_entries == 0 ? lengths.size() : 1u));
        const Space space;
        for (std::uint64_t step = 0; step < 2; ++step) {
          tensors.draw(step);
          for (std::size_t g = 0; g < each_tensor.size(); ++g) reduction.gradients_ready(space, g);
          reduction.complete(space);
          space.fence();
          const std::size_t wrong = tensors.differing(tensors.gradients, [&](std::size_t k) {
            return static_cast<float>(weight * static_cast<double>(entry(step, k)));
          });
          BOOST_TEST(wrong == 0u, wrong << " of " << total << " gradient entries differ from the ordered sum at step " << step);
          reduction.all_gather_values(space);
          space.fence();
          BOOST_TEST(tensors.differing(tensors.values, [&](std::size_t k) { return entry(step + 1000, k); }) == 0u);
        }
        BOOST_TEST(reduction.calls() == 2u);
      }
    }
}

BOOST_AUTO_TEST_CASE(weights_that_do_not_fit_are_refused) {
  int argc = 1;
  char name[] = "nccl_reduction";
  char* args[] = {name, nullptr};
  char** argv = args;
  const Ranks ranks(argc, argv);
  Tensors tensors({10});
  const std::vector<std::size_t> bounds{0, 10};
  // The shared checks hold on this transport too: a weight for a rank that is not there is refused.
  const auto communicator = std::make_shared<const NcclCommunicator>(NcclCommunicator::alone());
  NcclGradientReduction<float> fits(ranks, tensors.named, {1.0}, bounds, {}, communicator);
  BOOST_TEST(fits.buckets() == 1u);
  BOOST_CHECK_EXCEPTION(NcclGradientReduction<float>(ranks, tensors.named, {1.0, 1.0}, bounds, {}, communicator),
                        camex::argument_error, [](const camex::argument_error& e) { return e.argument() == "weights"; });
}
