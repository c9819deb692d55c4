#pragma once
// What a training step is, and what a trainable array of a library component looks like: shared by merge
// policies, routers and layers.

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <string>
#include <utility>

namespace camex {

/// What a step is: random draws (DARE masks, router noise, expert dropout) are keyed by (seed, step, tensor,
/// expert, element), so `tensor` must be distinct for every tensor or router of a model that draws; `training`
/// switches train-only behaviour.
struct StepContext {
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
  std::uint32_t tensor = 0;
  bool training = true;
};

/// One trainable array (a curvature factor stack, a router's weights), flattened, with its gradient.
template <class Scalar, class ExecSpace>
struct Parameter {
  using Flat = Kokkos::View<Scalar*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  std::string name;
  Flat value;
  Flat gradient;

  /// A parameter over contiguous views of any rank, flattened.
  template <class Values, class Gradients>
  static Parameter of(std::string name, const Values& value, const Gradients& gradient) {
    return {std::move(name), Flat(value.data(), value.size()), Flat(gradient.data(), gradient.size())};
  }
};

}  // namespace camex
