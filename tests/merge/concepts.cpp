// The extension contracts at compile time (MergePolicy, RowCombinationPolicy, MaskAxis, TransformAxis; Router is
// in route/concepts.cpp): every built-in satisfies them, and types that miss one requirement each are rejected (so a user's policy that forgets, say, the backward fails at the MergeDriver with the name of the
// missing expression rather than deep inside a kernel).
#include "camex/camex.hpp"

#include "testing.hpp"

#include <vector>

using namespace camex;
using namespace camex::testing;

// A named namespace, not an anonymous one: these types exist only to be rejected, and nvcc warns about members of
// internal-linkage types that nothing calls.
namespace contract {

using In = ConstMatrix<float, Space>;
using Out = Matrix<float, Space>;

/// Everything a policy needs; each Broken* below removes or breaks one piece of it.
struct Complete {
  using scalar_type = float;
  using execution_space = Space;
  MergeProblem problem() const { return {}; }
  std::size_t workspace_bytes() const { return 0; }
  BaseSource base_source() const { return BaseSource::none; }
  void prepare(const Space&, const StepContext&, const In&, const In&, const Workspace<Space>&) {}
  void merge(const Space&, const In&, const Out&, const Workspace<Space>&) {}
  void backward(const Space&, const In&, const In&, const Out&, const Out&, const Out&, const Workspace<Space>&) {}
  std::vector<Parameter<float, Space>> parameters() { return {}; }
};

struct NoScalarType : Complete {
  using scalar_type = int;  // not a floating-point type
};
struct NoWorkspaceQuery : Complete {
  std::size_t workspace_bytes() const = delete;
};
struct PrepareWithoutStep : Complete {
  void prepare(const Space&, const In&, const In&, const Workspace<Space>&) {}
  void prepare(const Space&, const StepContext&, const In&, const In&, const Workspace<Space>&) = delete;
};
struct NoBackward : Complete {
  void backward(const Space&, const In&, const In&, const Out&, const Out&, const Out&, const Workspace<Space>&) = delete;
};
struct ParametersOfWrongType : Complete {
  std::vector<float> parameters() { return {}; }
};
struct BaseSourceAsBool : Complete {
  bool base_source() const { return false; }
};
struct NotAnExecutionSpace : Complete {
  using execution_space = int;
};

static_assert(MergePolicy<Complete>);
static_assert(!MergePolicy<NoScalarType>);
static_assert(!MergePolicy<NoWorkspaceQuery>);
static_assert(!MergePolicy<PrepareWithoutStep>);
static_assert(!MergePolicy<NoBackward>);
static_assert(!MergePolicy<ParametersOfWrongType>);
static_assert(!MergePolicy<BaseSourceAsBool>);
static_assert(!MergePolicy<NotAnExecutionSpace>);

static_assert(MergePolicy<Euclidean<float, Space>> && MergePolicy<Euclidean<double, Space>>);
static_assert(MergePolicy<Domain<float, Space>>);
static_assert(MergePolicy<Ties<float, Space>>);
static_assert(MergePolicy<TiesCA<float, Space>>);
static_assert(MergePolicy<Dare<float, Space>>);
static_assert(MergePolicy<DareCA<float, Space>>);
static_assert(MergePolicy<CurvatureAware<float, Space>>);
static_assert(MergePolicy<DynamicChain<float, Space>::Layer>);

// The refinement for policies that expose their rows and coefficients (merge/row_combination_policy.hpp).
struct CompleteRows : Complete {
  std::size_t row_count() const { return 0; }
  In prepared_rows(const Space&, const Workspace<Space>&) { return {}; }
  In coefficients(const Space&, const In&, const Workspace<Space>&) const { return {}; }
  void backward_from_rows(const Space&, const In&, const In&, const Out&, const Out&, const Out&, const Out&,
                          const Workspace<Space>&) {}
};
struct NoRowCount : CompleteRows {
  std::size_t row_count() const = delete;
};
struct RowsAsPointer : CompleteRows {
  const float* prepared_rows(const Space&, const Workspace<Space>&) { return nullptr; }
};
struct MutatingCoefficients : CompleteRows {  // must be callable on a const policy
  In coefficients(const Space&, const In&, const Workspace<Space>&) const = delete;
  In coefficients(const Space&, const In&, const Workspace<Space>&) { return {}; }
};
struct NoBackwardFromRows : CompleteRows {
  void backward_from_rows(const Space&, const In&, const In&, const Out&, const Out&, const Out&, const Out&,
                          const Workspace<Space>&) = delete;
};
struct RowsWithoutPolicy : NoBackward {  // the refinement needs the whole MergePolicy too
  std::size_t row_count() const { return 0; }
  In prepared_rows(const Space&, const Workspace<Space>&) { return {}; }
  In coefficients(const Space&, const In&, const Workspace<Space>&) const { return {}; }
  void backward_from_rows(const Space&, const In&, const In&, const Out&, const Out&, const Out&, const Out&,
                          const Workspace<Space>&) {}
};

static_assert(RowCombinationPolicy<CompleteRows>);
static_assert(!RowCombinationPolicy<Complete>);
static_assert(!RowCombinationPolicy<NoRowCount>);
static_assert(!RowCombinationPolicy<RowsAsPointer>);
static_assert(!RowCombinationPolicy<MutatingCoefficients>);
static_assert(!RowCombinationPolicy<NoBackwardFromRows>);
static_assert(!RowCombinationPolicy<RowsWithoutPolicy>);

static_assert(RowCombinationPolicy<Euclidean<float, Space>> && RowCombinationPolicy<Domain<double, Space>>);
static_assert(RowCombinationPolicy<Ties<float, Space>> && RowCombinationPolicy<TiesCA<float, Space>>);
static_assert(RowCombinationPolicy<Dare<float, Space>> && RowCombinationPolicy<DareCA<float, Space>>);
static_assert(RowCombinationPolicy<CurvatureAware<float, Space>>);
static_assert(RowCombinationPolicy<DynamicChain<float, Space>::Layer>);

/// Everything a mask needs (merge/axis/mask.hpp); each one below removes or breaks one piece of it.
struct CompleteMask {
  struct State {};
  struct Factor {
    template <bool Multiply, class T>
    KOKKOS_INLINE_FUNCTION void apply(std::size_t, int, const T*, std::ptrdiff_t, T*, std::ptrdiff_t) const {}
  };
  bool factor_active(const StepContext&) const { return true; }
  bool score_factor_active(const StepContext&) const { return false; }
  bool needs_deltas(const StepContext&) const { return false; }
  MaskPlacement placement() const { return MaskPlacement::on_delta; }
  template <class T, class Carver>
  State layout(Carver&, const MergeProblem&) const { return {}; }
  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace&, const StepContext&, const Tau&, const State&) const {}
  Factor element_factor(const StepContext&, const State&) const { return {}; }
  template <class ExecSpace, class Tau, class F, class In, class Out>
  void adjoint(const ExecSpace&, const StepContext&, const Tau&, const F&, const In&, const Out&, const State&) const {}
  UnitScoreFactor score_factor(const StepContext&) const { return {}; }
};

struct MaskWithoutPlacement : CompleteMask {
  MaskPlacement placement() const = delete;
};
struct ActivityAsInt : CompleteMask {
  int factor_active(const StepContext&) const { return 1; }
};
struct FactorWithoutApply : CompleteMask {
  struct Factor {};
  Factor element_factor(const StepContext&, const State&) const { return {}; }
};
struct FactorOnlyMultiplying : CompleteMask {  // apply<false>, the factor alone, is what a backward materialises
  struct Factor {
    template <bool Multiply, class T>
      requires Multiply
    KOKKOS_INLINE_FUNCTION void apply(std::size_t, int, const T*, std::ptrdiff_t, T*, std::ptrdiff_t) const {}
  };
  Factor element_factor(const StepContext&, const State&) const { return {}; }
};
struct MutatingPrepare : CompleteMask {  // the policy holds its mask const
  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace&, const StepContext&, const Tau&, const State&) = delete;
  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace&, const StepContext&, const Tau&, const State&) const = delete;
};
struct NoAdjoint : CompleteMask {
  template <class ExecSpace, class Tau, class F, class In, class Out>
  void adjoint(const ExecSpace&, const StepContext&, const Tau&, const F&, const In&, const Out&, const State&) const = delete;
};
struct ScoreFactorNotCallable : CompleteMask {
  int score_factor(const StepContext&) const { return 1; }
};

static_assert(MaskAxis<CompleteMask, Space, float>);
static_assert(!MaskAxis<MaskWithoutPlacement, Space, float>);
static_assert(!MaskAxis<ActivityAsInt, Space, float>);
static_assert(!MaskAxis<FactorWithoutApply, Space, float>);
static_assert(!MaskAxis<FactorOnlyMultiplying, Space, float>);
static_assert(!MaskAxis<MutatingPrepare, Space, float>);
static_assert(!MaskAxis<NoAdjoint, Space, float>);
static_assert(!MaskAxis<ScoreFactorNotCallable, Space, float>);
static_assert(MaskAxis<NoMask, Space, float> && MaskAxis<TiesMask, Space, float> && MaskAxis<DareMask, Space, float>);
static_assert(MaskAxis<DareTiesMask, Space, double>);

/// Everything a transform with parameters needs (merge/axis/transform.hpp).
struct CompleteTransform {
  static constexpr bool is_identity = false;
  template <class T>
  int layout(WorkspaceCarver<Space>&) const { return 0; }
  void apply(const Space&, const In&, const WorkspaceCarver<Space>::Matrix<float>&, WorkspaceCarver<Space>&) const {}
  void backward(const Space&, const In&, const In&, const WorkspaceCarver<Space>::Matrix<float>&, WorkspaceCarver<Space>&) {}
  std::vector<Parameter<float, Space>> parameters() { return {}; }
};

struct NoIdentityFlag {
  template <class T>
  int layout(WorkspaceCarver<Space>&) const { return 0; }
};
struct ApplyNeedsMutableTransform : CompleteTransform {  // the forward runs on a const transform
  void apply(const Space&, const In&, const WorkspaceCarver<Space>::Matrix<float>&, WorkspaceCarver<Space>&) = delete;
  void apply(const Space&, const In&, const WorkspaceCarver<Space>::Matrix<float>&, WorkspaceCarver<Space>&) const = delete;
};
struct TransformWithoutBackward : CompleteTransform {
  void backward(const Space&, const In&, const In&, const WorkspaceCarver<Space>::Matrix<float>&, WorkspaceCarver<Space>&) = delete;
};
struct TransformParametersOfWrongType : CompleteTransform {
  std::vector<float> parameters() { return {}; }
};
struct IdentityClaimingParameters {  // an identity needs nothing else: the policy skips every buffer and call
  static constexpr bool is_identity = true;
};

static_assert(TransformAxis<CompleteTransform, float, Space>);
static_assert(!TransformAxis<NoIdentityFlag, float, Space>);
static_assert(!TransformAxis<ApplyNeedsMutableTransform, float, Space>);
static_assert(!TransformAxis<TransformWithoutBackward, float, Space>);
static_assert(!TransformAxis<TransformParametersOfWrongType, float, Space>);
static_assert(!TransformAxis<CompleteTransform, double, Space>);  // a transform is for one scalar type
static_assert(TransformAxis<IdentityClaimingParameters, float, Space>);
static_assert(TransformAxis<IdentityTransform, float, Space> && TransformAxis<CurvatureTransform<float, Space>, float, Space>);

}  // namespace contract

using namespace contract;

BOOST_AUTO_TEST_SUITE(concepts)

// The contract is checked by the static_asserts above when this file compiles; at run time, the driver accepts a
// minimal conforming type.
BOOST_AUTO_TEST_CASE(driver_accepts_a_conforming_type) {
  Complete policy;
  MergeDriver<Complete> driver(policy);
  BOOST_TEST(driver.workspace().extent(0) == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
