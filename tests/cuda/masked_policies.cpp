// Compiled by nvcc only (scripts/check-cuda-build): every built-in policy with a mask (TIES in both variants,
// DARE, DARE-TIES, and their curvature-aware forms), in a MergedLinear under the noisy top-k gate, in float.
#include "layers.hpp"

namespace camex::cuda_check {

void masked_policies() {
  using T = float;
  const std::size_t n = 3;
  auto router = noisy_top_k<T>(n);
  merged_linear<Ties<T, Space>>(router, [&](TensorShape s) { return Ties<T, Space>(problem(n, s), {.options = {.density = 0.5}}); });
  merged_linear<TiesCA<T, Space>>(router, [&](TensorShape s) {
    return TiesCA<T, Space>(problem(n, s), {.variant = TiesVariant::sign_agreement});
  });
  merged_linear<Dare<T, Space>>(router, [&](TensorShape s) { return Dare<T, Space>(problem(n, s), {.drop = 0.3}); });
  merged_linear<DareCA<T, Space>>(router, [&](TensorShape s) {
    return DareCA<T, Space>(problem(n, s), {.drop = 0.3, .granularity = DareGranularity::expert});
  });
  merged_linear<DareTies<T, Space>>(router, [&](TensorShape s) { return DareTies<T, Space>(problem(n, s)); });
}


}  // namespace camex::cuda_check
