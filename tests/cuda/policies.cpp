// Compiled by nvcc only (scripts/check-cuda-build): every built-in policy without a mask, in a MergedLinear under
// the noisy top-k gate, in float (functions.cpp has the double paths of the kernels).
#include "layers.hpp"

namespace camex::cuda_check {

void policies() {
  using T = float;
  const std::size_t n = 3;
  auto router = noisy_top_k<T>(n);
  merged_linear<Euclidean<T, Space>>(router, [&](TensorShape s) { return Euclidean<T, Space>(problem(n, s)); });
  merged_linear<Domain<T, Space>>(router, [&](TensorShape s) { return Domain<T, Space>(problem(n, s)); });
  merged_linear<CurvatureAware<T, Space>>(router, [&](TensorShape s) { return CurvatureAware<T, Space>(problem(n, s)); });
}


}  // namespace camex::cuda_check
