#pragma once
// What a training step is, and what a trainable array of a library component looks like: shared by merge
// policies, routers and layers.

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <string>
#include <utility>

#include "camex/core/read_backs.hpp"

namespace camex {

/// What a step is: random draws (DARE masks, router noise, expert dropout) are keyed by (seed, step, stream,
/// expert, element), where `stream`, the draw-stream id, tells apart the components of a model that draw: each
/// component declares how many consecutive streams it uses from `stream` on (`random_streams`) and derives its
/// parts' with substream; a model hands out the ranges with DrawStreams. `training` switches train-only behaviour.
/// `read_backs`, where set, is the batch the step's components queue the values the host must learn on, instead of
/// reading each at once (core/read_backs.hpp); whoever sets it reads it before the step's backward.
/// `first_group`: where a process trains on a share of the step's batch (data parallelism), the index in the whole
/// batch of its first routing group; per-group draws are keyed by that global index, so the shares together draw
/// what one process training the whole batch draws.
struct StepContext {
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
  std::uint32_t stream = 0;
  bool training = true;
  StepReadBacks* read_backs = nullptr;
  std::uint64_t first_group = 0;

  /// This step as seen by the part of a component that draws from the component's k-th stream.
  StepContext substream(std::uint32_t k) const {
    StepContext s = *this;
    s.stream += k;
    return s;
  }
};

/// Runs `work(step)` so that the step's reads are read once: where `step` carries no batch, with `batch` set on it,
/// reading `batch` after `work` and adding its loss to what `work` returned; where it carries one, as it is (its
/// owner reads it). An exception discards what `work` queued on `batch`.
template <class ExecSpace, class Work>
double with_step_read_backs(const ExecSpace& space, const StepContext& step, ReadBackBatch<ExecSpace>& batch, Work&& work) {
  if (step.read_backs != nullptr) return work(step);
  StepContext batched = step;
  batched.read_backs = &batch;
  double value;
  try {
    value = work(static_cast<const StepContext&>(batched));
    batch.read(space);
  } catch (...) {
    batch.discard();
    throw;
  }
  return value + batch.loss();
}

/// Consecutive draw-stream ranges handed out in order: a model takes each component's declared count once, at
/// construction, and gives the component its first stream in every step (step.substream(first)).
class DrawStreams {
 public:
  explicit DrawStreams(std::uint32_t first = 0) : next_(first) {}
  /// The first of `count` streams no earlier take() handed out.
  std::uint32_t take(std::uint32_t count) {
    const std::uint32_t first = next_;
    next_ += count;
    return first;
  }
  /// How many streams have been handed out from the first.
  std::uint32_t end() const { return next_; }

 private:
  std::uint32_t next_;
};

/// How many draw streams a component uses: its `random_streams`, or 1 for a component that declares none.
template <class Component>
inline constexpr std::uint32_t random_streams_of = [] {
  if constexpr (requires { Component::random_streams; })
    return static_cast<std::uint32_t>(Component::random_streams);
  else
    return std::uint32_t{1};
}();

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
