#pragma once
// What a router is. A router turns the router input of each routing group (route/groups.hpp) into one score per
// expert, and differentiates that. The built-in routers (noisy top-k, SMEAR) and a user's own go through the same
// layers, so this header is the contract:
//
//   bytes = r.workspace_bytes()                              once; allocate that much
//   loss  = r.forward(space, step, routed, scores, ws)       routed [G, I] -> scores [G, n], and the router's
//                                                            auxiliary (balancing) loss, 0 if it has none; a
//                                                            router may instead queue a loss it would have to read
//                                                            back on step.read_backs (core/read_backs.hpp) and
//                                                            return 0: callers add the batch's loss()
//   r.backward(space, d_scores, d_loss, d_routed, ws)        overwrites d_routed [G, I] and the gradients of
//                                                            parameters(), for the last forward with that ws
//
// Random draws (noise, expert dropout) are keyed by (step.seed, step.step, step.stream, expert, step.first_group + group); a router
// that draws from more than one stream declares `random_streams` (core/step.hpp), else it is taken to use one.

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <ranges>

#include "camex/core/step.hpp"
#include "camex/core/workspace.hpp"

namespace camex {

template <class R>
concept Router =
    requires {
      typename R::scalar_type;
      typename R::execution_space;
    } &&
    requires(R& router, const R& crouter, const typename R::execution_space& space, const StepContext& step,
             const Workspace<typename R::execution_space>& workspace, double d_loss,
             const Kokkos::View<const typename R::scalar_type**, Kokkos::LayoutRight,
                                typename R::execution_space::memory_space>& in,
             const Kokkos::View<typename R::scalar_type**, Kokkos::LayoutRight,
                                typename R::execution_space::memory_space>& out) {
      { crouter.experts() } -> std::convertible_to<std::size_t>;
      { crouter.workspace_bytes() } -> std::convertible_to<std::size_t>;
      { router.forward(space, step, in, out, workspace) } -> std::convertible_to<double>;
      router.backward(space, in, d_loss, out, workspace);
      { crouter.parameters() } -> std::ranges::range;
      requires std::same_as<std::ranges::range_value_t<decltype(crouter.parameters())>,
                            Parameter<typename R::scalar_type, typename R::execution_space>>;
    };

/// A router whose scores a merge policy of type Policy can take: same scalar type, same execution space.
template <class R, class Policy>
concept RouterFor = Router<R> && std::same_as<typename R::scalar_type, typename Policy::scalar_type> &&
                    std::same_as<typename R::execution_space, typename Policy::execution_space>;

}  // namespace camex
