// The Router contract: at compile time every built-in router satisfies it and types missing one piece of it are
// rejected; at run time a router camex does not ship, written against the concept only as docs/extending.md shows
// it (a softmax over a linear map), drives a MergedLinear whose every gradient, the router's weights included,
// matches central finite differences.
#include "camex/route/concepts.hpp"

#include "camex/merge/domain.hpp"
#include "camex/nn/merged_linear.hpp"
#include "camex/route/noisy_top_k.hpp"
#include "camex/route/smear_router.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <random>
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

namespace user {

/// scores[g] = softmax(W routed[g]) over the n experts, W [n, I] trainable; no auxiliary loss.
template <class Scalar, class ExecSpace>
class SoftmaxRouter {
 public:
  using scalar_type = Scalar;
  using execution_space = ExecSpace;

  /// W drawn uniform in [-scale, scale) from `seed` by camex's counter-based generator.
  SoftmaxRouter(std::size_t inputs, std::size_t experts, std::size_t max_groups, std::uint64_t seed, double scale = 0.5)
      : weight_("weight", experts, inputs), d_weight_("d_weight", experts, inputs), max_groups_(max_groups) {
    fill_uniform(ExecSpace{}, weight_, CounterRng(seed, 0), 0, static_cast<Scalar>(-scale), static_cast<Scalar>(scale));
  }

  std::size_t experts() const { return weight_.extent(0); }
  std::size_t workspace_bytes() const {
    WorkspaceCarver<ExecSpace> carver;
    carve(carver);
    return carver.bytes();
  }
  std::vector<Parameter<Scalar, ExecSpace>> parameters() const {
    return {Parameter<Scalar, ExecSpace>::of("weight", weight_, d_weight_)};
  }

  double forward(const ExecSpace& space, const StepContext&, const ConstMatrix<Scalar, ExecSpace>& routed,
                 const Matrix<Scalar, ExecSpace>& scores, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "user::SoftmaxRouter::forward";
    require_nonempty(fn, "routed", routed, "[G, I] matrix of router inputs");
    if (routed.extent(0) > max_groups_)
      throw argument_error(fn, "routed", concat("at most max_groups = ", max_groups_, " rows"), shape_of(routed));
    require_shape(fn, "routed", routed, routed.extent(0), weight_.extent(1), "[G, I] with I the router's inputs");
    require_shape(fn, "scores", scores, routed.extent(0), experts(), "[G, n]");
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    routed_ = routed;
    const auto w = weight_;
    const std::size_t n = experts(), inputs = weight_.extent(1);
    Kokkos::parallel_for("SoftmaxRouter::forward", Kokkos::RangePolicy<ExecSpace>(space, 0, routed.extent(0)),
                         KOKKOS_LAMBDA(std::size_t g) {
                           double top = -1e300;
                           for (std::size_t j = 0; j < n; ++j) {
                             double logit = 0;
                             for (std::size_t c = 0; c < inputs; ++c) logit += double(w(j, c)) * double(routed(g, c));
                             b.probability(g, j) = logit;
                             top = logit > top ? logit : top;
                           }
                           double sum = 0;
                           for (std::size_t j = 0; j < n; ++j) sum += b.probability(g, j) = math::exp(b.probability(g, j) - top);
                           for (std::size_t j = 0; j < n; ++j) scores(g, j) = static_cast<Scalar>(b.probability(g, j) /= sum);
                         });
    return 0.0;
  }

  /// d_logit = s .* (d_s - <s, d_s>); d_routed = d_logit W and d_W = d_logit^T routed, both overwritten.
  void backward(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& d_scores, double,
                const Matrix<Scalar, ExecSpace>& d_routed, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "user::SoftmaxRouter::backward";
    require_shape(fn, "d_scores", d_scores, routed_.extent(0), experts(), "[G, n] of the last forward");
    require_shape(fn, "d_routed", d_routed, routed_.extent(0), weight_.extent(1), "[G, I] of the last forward");
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    const auto w = weight_;
    const auto d_w = d_weight_;
    const auto routed = routed_;
    const std::size_t n = experts(), inputs = weight_.extent(1), groups = routed_.extent(0);
    Kokkos::parallel_for("SoftmaxRouter::d_routed", Kokkos::RangePolicy<ExecSpace>(space, 0, groups),
                         KOKKOS_LAMBDA(std::size_t g) {
                           double t = 0;
                           for (std::size_t j = 0; j < n; ++j) t += b.probability(g, j) * double(d_scores(g, j));
                           for (std::size_t j = 0; j < n; ++j) b.d_logit(g, j) = b.probability(g, j) * (double(d_scores(g, j)) - t);
                           for (std::size_t c = 0; c < inputs; ++c) {
                             double acc = 0;
                             for (std::size_t j = 0; j < n; ++j) acc += b.d_logit(g, j) * double(w(j, c));
                             d_routed(g, c) = static_cast<Scalar>(acc);
                           }
                         });
    Kokkos::parallel_for("SoftmaxRouter::d_weight", Kokkos::RangePolicy<ExecSpace>(space, 0, n * inputs),
                         KOKKOS_LAMBDA(std::size_t k) {
                           const std::size_t j = k / inputs, c = k % inputs;
                           double acc = 0;
                           for (std::size_t g = 0; g < groups; ++g) acc += b.d_logit(g, j) * double(routed(g, c));
                           d_w(j, c) = static_cast<Scalar>(acc);
                         });
  }

  /// The probabilities of the last forward, kept for the backward, and the logits' adjoint; in double.
  struct Buffers {
    typename WorkspaceCarver<ExecSpace>::template Matrix<double> probability, d_logit;
  };
  Buffers carve(WorkspaceCarver<ExecSpace>& carver) const {
    return {carver.template take_matrix<double>(max_groups_, experts()), carver.template take_matrix<double>(max_groups_, experts())};
  }

 private:
  Matrix<Scalar, ExecSpace> weight_, d_weight_;
  std::size_t max_groups_;
  ConstMatrix<Scalar, ExecSpace> routed_;
};

}  // namespace user

static_assert(Router<user::SoftmaxRouter<double, Space>>);

BOOST_AUTO_TEST_CASE(a_users_router_drives_a_merged_linear) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const RoutingLayout layout{.sequences = 3, .length = 4};
    const std::size_t in = 5, out = 4, n = 3, groups = layout.groups(), tokens = layout.tokens();
    Domain<double, Space> weights({n, groups, {out, in}}, {.alpha = 0.8});
    user::SoftmaxRouter<double, Space> router(in, n, groups, 17);
    MergedLinear layer(weights, nullptr, router, layout);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    HostMatrix x = random_matrix(tokens, in, gen), experts = random_matrix(n, out * in, gen), base = random_matrix(1, out * in, gen);
    const HostMatrix d_y = random_matrix(tokens, out, gen);
    const auto objective = [&] {
      Matrix<double, Space> y("y", tokens, out);
      layer.forward(Space{}, {}, to_device<double>(x), {}, {to_device<double>(experts), to_device<double>(base)}, std::nullopt, y, ws);
      return (to_host(y).array() * d_y.array()).sum();
    };
    objective();
    Matrix<double, Space> d_x("d_x", tokens, in), d_experts("d_experts", n, out * in), d_base("d_base", 1, out * in);
    layer.backward(Space{}, to_device<double>(d_y), 0.0, d_x, {d_experts, d_base}, std::nullopt, ws);
    const auto router_weight = router.parameters()[0];
    const std::vector<double> g_router = host_values(router_weight.gradient);
    GradientCheck check(objective);
    check.matrix(x, to_host(d_x));
    check.matrix(experts, to_host(d_experts));
    check.matrix(base, to_host(d_base));
    check.parameter(router_weight.value, g_router);
    // Central differences in double, h = 1e-6: truncation and rounding both near 1e-10 of the gradients' scale.
    BOOST_TEST(check.worst() <= 1e-7 * std::max(1.0, check.scale()), "worst " << check.worst() << " of gradients up to " << check.scale());
    BOOST_TEST(check.scale() > 1e-2);
  }
}
