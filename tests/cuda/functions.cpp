// Compiled by nvcc only (scripts/check-cuda-build): camex's free functions a user calls directly (soft merge and
// its backward, top-k by magnitude, the TIES mask, mergekit's methods, the counter-based fill), the TIES policy's
// inspection calls and the merge driver, in float and double.
#include <camex/camex.hpp>

#include <array>

namespace camex::cuda_check {

using Space = Kokkos::DefaultExecutionSpace;

template <class T>
void functions() {
  const std::size_t n = 3, groups = 2, params = 64;
  Matrix<T, Space> experts("experts", n, params), base("base", 1, params), merged("merged", 1, params);
  Matrix<T, Space> scores("scores", groups, n), d_scores("d_scores", groups, n), d_experts("d_experts", n, params);
  Matrix<T, Space> batch("batch", groups, params);
  Matrix<std::uint8_t, Space> keep("keep", n, params);
  Matrix<T, Space> factor("factor", n, params);

  soft_merge(Space{}, scores, experts, batch);
  soft_merge_backward(Space{}, scores, experts, batch, d_scores, d_experts);

  top_k_by_magnitude(Space{}, experts, 5, keep, make_workspace<Space>(top_k_workspace_bytes<T, Space>(n, params)));
  const std::array<double, 3> weights{1, 1, 1};
  ties_mask(Space{}, experts, weights, TiesOptions{.density = 0.5}, factor,
            make_workspace<Space>(ties_mask_workspace_bytes<T, Space>(n, params)));
  fill_uniform(Space{}, experts, CounterRng(1, 2), 3, T(-1), T(1));

  const std::array<mergekit::Model, 3> models{{{.weight = 1, .density = 0.5}, {.weight = 1, .density = 0.5}, {.weight = 1, .density = 0.5}}};
  mergekit::task_arithmetic(Space{}, base, experts, models, {}, merged);
  mergekit::ties(Space{}, base, experts, models, {}, merged);
  mergekit::dare_linear(Space{}, base, experts, models, {.seed = 4}, merged);
  mergekit::dare_ties(Space{}, base, experts, models, {.seed = 4}, merged);

  Ties<T, Space> ties({n, groups, {8, 8}}, {.options = {.density = 0.5}});
  MergeDriver driver(ties);
  driver.prepare(Space{}, {.seed = 1, .step = 1, .stream = 0, .training = true}, experts, base);
  driver.merge(Space{}, scores, batch);
  driver.backward(Space{}, scores, batch, d_scores, d_experts, d_experts);
  const auto kept = ties.kept(Space{}, driver.workspace());
  const auto signs = ties.elected_signs(Space{}, driver.workspace());
  static_cast<void>(kept);
  static_cast<void>(signs);
}

void functions() {
  functions<float>();
  functions<double>();
}

}  // namespace camex::cuda_check
