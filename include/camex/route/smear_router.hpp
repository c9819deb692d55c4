#pragma once
// The SMEAR router (docs/algorithms.md §2.2), forward and backward. For each routing group g with router input z_g (the mean of
// its tokens, route/groups.hpp) over C channels and N experts:
//
//   u_g = LayerNorm(z_g)                                    learned gain and bias [C]
//   v_j = LayerNorm_j(w_j)  (normalize_weights), else w_j   router weights one row per expert [N, C]; each row
//                                                           has its own LayerNorm over C, gain initialised to 0.01
//   p_g = softmax_j(u_g . v_j)                              dense: every expert gets a score
//   training, expert_dropout > 0: p_gj *= m_gj with m_gj ~ Bernoulli(1 - expert_dropout) drawn at (seed, step,
//   stream, expert j, element g); then p_g <- (p_g + 1e-10) / sum_j (p_gj + 1e-10)
//
// LayerNorms use the biased variance and eps = 1e-5, as torch.nn.LayerNorm. The router has no balancing loss:
// forward returns 0, and backward ignores d_loss.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/random.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/platform/kokkos_compat.hpp"
#include "camex/route/groups.hpp"
#include "camex/route/operands.hpp"

namespace camex {

namespace detail {

/// What a SMEAR router's forward leaves for its backward, in double.
template <class ExecSpace>
struct SmearRouterState {
  WorkspaceMatrix<double, ExecSpace> u_hat, u, d_u, scratch;   // [G, C]
  WorkspaceMatrix<double, ExecSpace> w_hat, v, d_w_hat;        // [N, C]
  WorkspaceMatrix<double, ExecSpace> p, keep, score, d_logit;  // [G, N]
  WorkspaceArray<double, ExecSpace> u_rstd, normaliser;        // [G]
  WorkspaceArray<double, ExecSpace> w_rstd;                    // [N]
};

/// x_hat = (x - mean) / sqrt(var + eps) over `width` entries (biased variance); returns 1 / sqrt(var + eps).
template <class In>
KOKKOS_INLINE_FUNCTION double normalise(const In* x, std::size_t width, double eps, double* x_hat) {
  double mean = 0, var = 0;
  for (std::size_t c = 0; c < width; ++c) mean += static_cast<double>(x[c]);
  mean /= static_cast<double>(width);
  for (std::size_t c = 0; c < width; ++c) var += (static_cast<double>(x[c]) - mean) * (static_cast<double>(x[c]) - mean);
  var /= static_cast<double>(width);
  const double rstd = 1.0 / math::sqrt(var + eps);
  for (std::size_t c = 0; c < width; ++c) x_hat[c] = (static_cast<double>(x[c]) - mean) * rstd;
  return rstd;
}

/// dx = rstd (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat)): the adjoint of normalise.
template <class Out>
KOKKOS_INLINE_FUNCTION void normalise_backward(const double* dx_hat, const double* x_hat, double rstd, std::size_t width,
                                               Out* dx) {
  double mean_d = 0, mean_dx = 0;
  for (std::size_t c = 0; c < width; ++c) {
    mean_d += dx_hat[c];
    mean_dx += dx_hat[c] * x_hat[c];
  }
  mean_d /= static_cast<double>(width);
  mean_dx /= static_cast<double>(width);
  for (std::size_t c = 0; c < width; ++c) dx[c] = static_cast<Out>(rstd * (dx_hat[c] - mean_d - x_hat[c] * mean_dx));
}

}  // namespace detail

struct SmearRouterOptions {
  bool normalize_weights = true;  ///< pass each expert's weight row through its own LayerNorm (SMEAR's default)
  double expert_dropout = 0.0;    ///< probability of zeroing a score in training (0.1 in the SMEAR commands)
  double init_std = 0.01;         ///< router weights start as N(0, init_std²)
  double column_gain = 0.01;      ///< initial gain of the per-expert LayerNorms
};

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class SmearRouter {
 public:
  using scalar_type = Scalar;
  using execution_space = ExecSpace;
  static constexpr std::uint32_t random_streams = 1;  ///< the expert dropout

  static constexpr double layer_norm_eps = 1e-5;
  static constexpr std::size_t max_experts = 64;

  /// The router of a layer routed as `layout`: at most layout.groups() groups per call, so the layout states the
  /// number once.
  SmearRouter(std::size_t channels, std::size_t experts, const RoutingLayout& layout, SmearRouterOptions options = {}, std::uint64_t init_seed = 0)
      : SmearRouter(channels, experts, layout.groups(), options, init_seed) {}

  /// A router for inputs of `channels` entries over `experts` experts, at most `max_groups` groups per call;
  /// router weights drawn from CounterRng(init_seed, 0) at sites (2, expert, channel).
  SmearRouter(std::size_t channels, std::size_t experts, std::size_t max_groups, SmearRouterOptions options = {},
              std::uint64_t init_seed = 0)
      : channels_(channels), experts_(experts), max_groups_(max_groups), options_(options) {
    constexpr const char* fn = "camex::SmearRouter";
    if (channels == 0) throw argument_error(fn, "channels", "at least one input channel", "0");
    if (experts == 0 || experts > max_experts)
      throw argument_error(fn, "experts", concat("between 1 and ", max_experts), concat(experts));
    if (max_groups == 0) throw argument_error(fn, "max_groups", "at least one routing group", "0");
    if (!(options.expert_dropout >= 0 && options.expert_dropout < 1))
      throw argument_error(fn, "options.expert_dropout", "a probability in [0, 1)", concat(options.expert_dropout));
    if (!(options.init_std >= 0) || !std::isfinite(options.init_std))
      throw argument_error(fn, "options.init_std", "a finite standard deviation >= 0", concat(options.init_std));
    if (!std::isfinite(options.column_gain))
      throw argument_error(fn, "options.column_gain", "a finite gain", concat(options.column_gain));
    const auto label = [](const char* name) { return std::string("camex::SmearRouter::") + name; };
    const auto vec = [&](const char* name) { return Vector<Scalar, ExecSpace>(label(name), channels); };
    const auto mat = [&](const char* name) { return Matrix<Scalar, ExecSpace>(label(name), experts, channels); };
    ln_gain_ = vec("ln_gain");
    ln_bias_ = vec("ln_bias");
    d_ln_gain_ = vec("d_ln_gain");
    d_ln_bias_ = vec("d_ln_bias");
    weights_ = mat("w_router");
    d_weights_ = mat("d_w_router");
    column_gain_ = mat("column_gain");
    column_bias_ = mat("column_bias");
    d_column_gain_ = mat("d_column_gain");
    d_column_bias_ = mat("d_column_bias");
    reset(init_seed);
  }

  const SmearRouterOptions& options() const { return options_; }
  std::size_t channels() const { return channels_; }
  std::size_t experts() const { return experts_; }

  /// Sets every parameter afresh, as the constructor does: LayerNorm gains 1 (column gains options().column_gain),
  /// biases 0, router weights N(0, init_std²) from CounterRng(init_seed, 0) at sites (2, expert, channel).
  void reset(std::uint64_t init_seed) {
    Kokkos::deep_copy(ln_gain_, Scalar(1));
    Kokkos::deep_copy(ln_bias_, Scalar(0));
    Kokkos::deep_copy(column_gain_, static_cast<Scalar>(options_.column_gain));
    Kokkos::deep_copy(column_bias_, Scalar(0));
    const CounterRng rng(init_seed, 0);
    const double scale = options_.init_std;
    const std::size_t channels = channels_;
    const auto w = weights_;
    Kokkos::parallel_for("camex::SmearRouter[init]", Kokkos::RangePolicy<ExecSpace>(0, experts_ * channels),
                         KOKKOS_LAMBDA(std::size_t k) {
                           w(k / channels, k % channels) =
                               static_cast<Scalar>(scale * rng.normal({2, static_cast<std::uint32_t>(k / channels), k % channels}));
                         });
    ExecSpace().fence();
  }

  /// Every trainable array with its gradient: the input LayerNorm's gain and bias, the router weights [N, C], and
  /// with normalize_weights the per-expert LayerNorms' gains and biases [N, C].
  std::vector<Parameter<Scalar, ExecSpace>> parameters() const {
    using P = Parameter<Scalar, ExecSpace>;
    std::vector<P> out{P::of("ln_gain", ln_gain_, d_ln_gain_), P::of("ln_bias", ln_bias_, d_ln_bias_),
                       P::of("w_router", weights_, d_weights_)};
    if (options_.normalize_weights) {
      out.push_back(P::of("column_gain", column_gain_, d_column_gain_));
      out.push_back(P::of("column_bias", column_bias_, d_column_bias_));
    }
    return out;
  }

  std::size_t workspace_bytes() const {
    WorkspaceCarver<ExecSpace> carver;
    layout(carver);
    return carver.bytes();
  }

  /// scores [G, N] for router inputs `routed` [G, C], G <= max_groups. Returns 0 (no balancing loss).
  double forward(const ExecSpace& space, const StepContext& step, const ConstMatrix<Scalar, ExecSpace>& routed,
                 const Matrix<Scalar, ExecSpace>& scores, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::SmearRouter::forward";
    detail::require_router_operands(fn, routed, scores, max_groups_, channels_, experts_);
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const State st = layout(carver);
    groups_ = routed.extent(0);
    forwarded_ = true;
    const std::size_t n = experts_, width = channels_, groups = groups_;
    const bool normalize = options_.normalize_weights;
    const auto w = weights_, cg = column_gain_, cb = column_bias_;
    Kokkos::parallel_for("camex::SmearRouter[weights]", Kokkos::RangePolicy<ExecSpace>(space, 0, n),
                         KOKKOS_LAMBDA(std::size_t j) {
                           if (!normalize) {
                             for (std::size_t c = 0; c < width; ++c) st.v(j, c) = w(j, c);
                             return;
                           }
                           const double rstd = detail::normalise(&w(j, 0), width, layer_norm_eps, &st.w_hat(j, 0));
                           st.w_rstd(j) = rstd;
                           for (std::size_t c = 0; c < width; ++c) st.v(j, c) = cg(j, c) * st.w_hat(j, c) + cb(j, c);
                         });
    const auto gain = ln_gain_, bias = ln_bias_;
    const CounterRng rng(step.seed, step.step);
    const std::uint32_t stream = step.stream;
    const std::uint64_t first_group = step.first_group;
    const double drop = step.training ? options_.expert_dropout : 0.0;
    Kokkos::parallel_for("camex::SmearRouter[scores]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups),
                         KOKKOS_LAMBDA(std::size_t g) {
                           st.u_rstd(g) = detail::normalise(&routed(g, 0), width, layer_norm_eps, &st.u_hat(g, 0));
                           for (std::size_t c = 0; c < width; ++c) st.u(g, c) = gain(c) * st.u_hat(g, c) + bias(c);
                           double logit[max_experts], top = -1e300;
                           for (std::size_t j = 0; j < n; ++j) {
                             double dot = 0;
                             for (std::size_t c = 0; c < width; ++c) dot += st.u(g, c) * st.v(j, c);
                             logit[j] = dot;
                             top = dot > top ? dot : top;
                           }
                           double total = 0;
                           for (std::size_t j = 0; j < n; ++j) total += (logit[j] = math::exp(logit[j] - top));
                           double kept = 0;
                           for (std::size_t j = 0; j < n; ++j) {
                             st.p(g, j) = logit[j] / total;
                             const bool keep = drop == 0 || rng.uniform({stream, static_cast<std::uint32_t>(j), first_group + g}) >= drop;
                             st.keep(g, j) = keep ? 1.0 : 0.0;
                             kept += (keep ? st.p(g, j) : 0.0) + (drop > 0 ? 1e-10 : 0.0);
                           }
                           st.normaliser(g) = kept;
                           for (std::size_t j = 0; j < n; ++j) {
                             const double q = st.keep(g, j) * st.p(g, j) + (drop > 0 ? 1e-10 : 0.0);
                             st.score(g, j) = drop > 0 ? q / kept : st.p(g, j);
                             scores(g, j) = static_cast<Scalar>(st.score(g, j));
                           }
                         });
    dropout_ = drop > 0;
    return 0;
  }

  /// d_routed [G, C] and every parameter's gradient (both overwritten) from d_scores [G, N]; d_loss is ignored.
  void backward(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& d_scores, double /*d_loss*/,
                const Matrix<Scalar, ExecSpace>& d_routed, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::SmearRouter::backward";
    detail::require_router_gradients(fn, forwarded_, d_scores, d_routed, groups_, channels_, experts_);
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const State st = layout(carver);
    const std::size_t n = experts_, width = channels_, groups = groups_;
    const bool dropout = dropout_, normalize = options_.normalize_weights;
    const auto gain = ln_gain_;
    // Per group: through the renormalised dropout and the softmax to the logits, then to u and through the input
    // LayerNorm to the router input.
    Kokkos::parallel_for("camex::SmearRouter[d_input]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups),
                         KOKKOS_LAMBDA(std::size_t g) {
                           double dp[max_experts];
                           if (dropout) {
                             double dot = 0;
                             for (std::size_t j = 0; j < n; ++j) dot += st.score(g, j) * d_scores(g, j);
                             for (std::size_t j = 0; j < n; ++j)
                               dp[j] = st.keep(g, j) * (d_scores(g, j) - dot) / st.normaliser(g);
                           } else {
                             for (std::size_t j = 0; j < n; ++j) dp[j] = d_scores(g, j);
                           }
                           double dot = 0;
                           for (std::size_t j = 0; j < n; ++j) dot += st.p(g, j) * dp[j];
                           for (std::size_t j = 0; j < n; ++j) st.d_logit(g, j) = st.p(g, j) * (dp[j] - dot);
                           for (std::size_t c = 0; c < width; ++c) {
                             double du = 0;
                             for (std::size_t j = 0; j < n; ++j) du += st.d_logit(g, j) * st.v(j, c);
                             st.d_u(g, c) = du;
                             st.scratch(g, c) = du * gain(c);  // d u_hat
                           }
                           detail::normalise_backward(&st.scratch(g, 0), &st.u_hat(g, 0), st.u_rstd(g), width, &d_routed(g, 0));
                         });
    const auto d_gain = d_ln_gain_, d_bias = d_ln_bias_;
    Kokkos::parallel_for("camex::SmearRouter[d_layer_norm]", Kokkos::RangePolicy<ExecSpace>(space, 0, width),
                         KOKKOS_LAMBDA(std::size_t c) {
                           double dg = 0, db = 0;
                           for (std::size_t g = 0; g < groups; ++g) {
                             dg += st.d_u(g, c) * st.u_hat(g, c);
                             db += st.d_u(g, c);
                           }
                           d_gain(c) = static_cast<Scalar>(dg);
                           d_bias(c) = static_cast<Scalar>(db);
                         });
    // Per expert: d v_j = sum_g d_logit[g, j] u_g, then through the expert's LayerNorm to its weights.
    const auto cg = column_gain_, d_w = d_weights_, d_cg = d_column_gain_, d_cb = d_column_bias_;
    Kokkos::parallel_for("camex::SmearRouter[d_weights]", Kokkos::RangePolicy<ExecSpace>(space, 0, n),
                         KOKKOS_LAMBDA(std::size_t j) {
                           for (std::size_t c = 0; c < width; ++c) {
                             double dv = 0;
                             for (std::size_t g = 0; g < groups; ++g) dv += st.d_logit(g, j) * st.u(g, c);
                             if (!normalize) {
                               d_w(j, c) = static_cast<Scalar>(dv);
                               continue;
                             }
                             d_cg(j, c) = static_cast<Scalar>(dv * st.w_hat(j, c));
                             d_cb(j, c) = static_cast<Scalar>(dv);
                             st.d_w_hat(j, c) = dv * cg(j, c);
                           }
                           if (normalize) detail::normalise_backward(&st.d_w_hat(j, 0), &st.w_hat(j, 0), st.w_rstd(j), width, &d_w(j, 0));
                         });
  }

 private:
  using State = detail::SmearRouterState<ExecSpace>;

  State layout(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = max_groups_, n = experts_, c = channels_;
    State st;
    for (auto* m : {&st.u_hat, &st.u, &st.d_u, &st.scratch}) *m = carver.template take_matrix<double>(g, c);
    for (auto* m : {&st.w_hat, &st.v, &st.d_w_hat}) *m = carver.template take_matrix<double>(n, c);
    for (auto* m : {&st.p, &st.keep, &st.score, &st.d_logit}) *m = carver.template take_matrix<double>(g, n);
    st.u_rstd = carver.template take<double>(g);
    st.normaliser = carver.template take<double>(g);
    st.w_rstd = carver.template take<double>(n);
    return st;
  }

  std::size_t channels_, experts_, max_groups_;
  SmearRouterOptions options_;
  Vector<Scalar, ExecSpace> ln_gain_, ln_bias_, d_ln_gain_, d_ln_bias_;
  Matrix<Scalar, ExecSpace> weights_, d_weights_, column_gain_, column_bias_, d_column_gain_, d_column_bias_;
  std::size_t groups_ = 0;
  bool dropout_ = false, forwarded_ = false;
};

}  // namespace camex
