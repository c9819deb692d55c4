#pragma once
// The transport of a trainer's gradient reduction: NCCL between GPUs on Kokkos' Cuda backend where the build found
// NCCL (CAMEX_EXAMPLES_WITH_NCCL), MPI through host memory otherwise. Both take the same plan and give the same bits.

#include <Kokkos_Core.hpp>

#include "common/parallel/gradient_reduction.hpp"
#if CAMEX_EXAMPLES_WITH_NCCL
#include "common/parallel/nccl_gradient_reduction.hpp"
#endif

namespace camex::examples {

template <class T, class Space>
struct ReductionTransport {
  using type = GradientReduction<T, Space>;
};
#if CAMEX_EXAMPLES_WITH_NCCL
template <class T>
struct ReductionTransport<T, Kokkos::Cuda> {
  using type = NcclGradientReduction<T>;
};
#endif

template <class T, class Space>
using GradientReductionFor = typename ReductionTransport<T, Space>::type;

}  // namespace camex::examples
