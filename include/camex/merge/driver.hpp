#pragma once
// The driver every policy runs through, built-in or a user's own: it asks the policy for its workspace once,
// allocates it, and checks each call's operands against the policy's problem() and base_source() before handing
// them on, so a policy written against merge/concepts.hpp gets camex's argument errors without repeating them.

#include <Kokkos_Core.hpp>

#include "camex/core/error.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/merge/concepts.hpp"

namespace camex {

template <MergePolicy Policy>
class MergeDriver {
 public:
  using scalar_type = typename Policy::scalar_type;
  using execution_space = typename Policy::execution_space;
  using In = ConstMatrix<scalar_type, execution_space>;
  using Out = Matrix<scalar_type, execution_space>;

  explicit MergeDriver(Policy& policy)
      : policy_(policy), workspace_(make_workspace<execution_space>(policy.workspace_bytes(), "camex::MergeDriver::workspace")) {}

  Policy& policy() { return policy_; }
  const Workspace<execution_space>& workspace() const { return workspace_; }

  void prepare(const execution_space& space, const StepContext& step, const In& experts, const In& base) {
    constexpr const char* fn = "camex::MergeDriver::prepare";
    const MergeProblem p = policy_.problem();
    require_shape(fn, "experts", experts, p.experts, p.shape.params(), "[n, P] from the policy's problem()");
    detail::require_base_operand(fn, "base", base, policy_.base_source(), p.shape.params());
    policy_.prepare(space, step, experts, base, workspace_);
  }

  void merge(const execution_space& space, const In& scores, const Out& merged) {
    constexpr const char* fn = "camex::MergeDriver::merge";
    detail::require_scores_shape(fn, scores, policy_.problem());
    require_shape(fn, "merged", merged, scores.extent(0), policy_.problem().shape.params(),
                          "[B, P] with B = scores.extent(0)");
    require_disjoint(fn, "merged", merged, "scores", scores);
    policy_.merge(space, scores, merged, workspace_);
  }

  void backward(const execution_space& space, const In& scores, const In& d_merged, const Out& d_scores,
                const Out& d_experts, const Out& d_base) {
    constexpr const char* fn = "camex::MergeDriver::backward";
    const MergeProblem p = policy_.problem();
    detail::require_scores_shape(fn, scores, p);
    require_shape(fn, "d_merged", d_merged, scores.extent(0), p.shape.params(), "[B, P] with B = scores.extent(0)");
    require_shape(fn, "d_scores", d_scores, scores.extent(0), p.experts, "[B, n], the shape of scores");
    require_shape(fn, "d_experts", d_experts, p.experts, p.shape.params(), "[n, P], the shape of experts");
    detail::require_base_operand(fn, "d_base", d_base, policy_.base_source(), p.shape.params());
    require_disjoint(fn, "d_experts", d_experts, "d_merged", d_merged);
    require_disjoint(fn, "d_scores", d_scores, "d_merged", d_merged);
    policy_.backward(space, scores, d_merged, d_scores, d_experts, d_base, workspace_);
  }

 private:
  Policy& policy_;
  Workspace<execution_space> workspace_;
};

}  // namespace camex
