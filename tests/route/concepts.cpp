// Compile-time contract of the Router concept: every built-in router satisfies it, and types missing one piece
// of it are rejected. The runtime case only exists so the file is a test program.
#include "camex/route/concepts.hpp"

#include "camex/route/noisy_top_k.hpp"
#include "camex/route/smear_router.hpp"
#include "testing.hpp"

#include <vector>

using namespace camex;
using namespace camex::testing;

static_assert(Router<NoisyTopKGate<float, Space>>);
static_assert(Router<NoisyTopKGate<double, Space>>);
static_assert(Router<SmearRouter<float, Space>>);
static_assert(Router<SmearRouter<double, Space>>);

namespace router_contract {

using In = Kokkos::View<const float**, Kokkos::LayoutRight, Space::memory_space>;
using Out = Kokkos::View<float**, Kokkos::LayoutRight, Space::memory_space>;

/// Everything a router needs; the broken variants below each lose one piece.
struct Complete {
  using scalar_type = float;
  using execution_space = Space;
  std::size_t experts() const { return 1; }
  std::size_t workspace_bytes() const { return 0; }
  double forward(const Space&, const StepContext&, const In&, const Out&, const Workspace<Space>&) { return 0; }
  void backward(const Space&, const In&, double, const Out&, const Workspace<Space>&) {}
  std::vector<Parameter<float, Space>> parameters() const { return {}; }
};
static_assert(Router<Complete>);

struct NoScalarType {
  using execution_space = Space;
  std::size_t experts() const { return 1; }
  std::size_t workspace_bytes() const { return 0; }
  double forward(const Space&, const StepContext&, const In&, const Out&, const Workspace<Space>&) { return 0; }
  void backward(const Space&, const In&, double, const Out&, const Workspace<Space>&) {}
  std::vector<Parameter<float, Space>> parameters() const { return {}; }
};
struct NoWorkspaceQuery : Complete {
  std::size_t workspace_bytes() const = delete;
};
struct NoBackward : Complete {
  void backward(const Space&, const In&, double, const Out&, const Workspace<Space>&) = delete;
};
struct ForwardWithoutLoss {
  using scalar_type = float;
  using execution_space = Space;
  std::size_t experts() const { return 1; }
  std::size_t workspace_bytes() const { return 0; }
  void forward(const Space&, const StepContext&, const In&, const Out&, const Workspace<Space>&) {}
  void backward(const Space&, const In&, double, const Out&, const Workspace<Space>&) {}
  std::vector<Parameter<float, Space>> parameters() const { return {}; }
};
struct WrongParameterType : Complete {
  std::vector<Parameter<double, Space>> parameters() const { return {}; }
};
static_assert(!Router<NoScalarType>);
static_assert(!Router<NoWorkspaceQuery>);
static_assert(!Router<NoBackward>);
static_assert(!Router<ForwardWithoutLoss>);
static_assert(!Router<WrongParameterType>);

}  // namespace router_contract

BOOST_AUTO_TEST_CASE(router_contract_holds_at_compile_time) { BOOST_TEST((Router<SmearRouter<float, Space>>)); }
