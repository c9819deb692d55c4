// The MergePolicy contract at compile time: every built-in satisfies it, and types that miss one requirement each
// are rejected (so a user's policy that forgets, say, the backward fails at the MergeDriver with the name of the
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

static_assert(MaskAxis<NoMask, Space, float> && MaskAxis<TiesMask, Space, float> && MaskAxis<DareMask, Space, float>);
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
