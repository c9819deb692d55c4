#pragma once
// The CAMEx code's router (docs/algorithms.md §2.1): noisy top-k gating in the style of Shazeer et al. 2017, with its cv²
// balancing loss, forward and backward. For each routing group g with router input x_g (route/groups.hpp):
//
//   h = x_g W_gate                                           clean logits, one per expert
//   sigma = softplus(x_g W_noise) + noise_floor              training only (and only with `noisy`)
//   h~ = h + eps .* sigma,  eps ~ N(0, 1) drawn at (seed, step, stream, expert j, element g)
//   S = the k largest h~ (ties: the lower expert index first), s_j = softmax over S of h~, 0 outside S
//   loss = coefficient * (cv²(importance) + cv²(load)),  importance_j = sum_g s_gj,
//   load_j = sum_g P(j in top k) by the Normal CDF when noisy, training and k < n, else the count of s_gj > 0
//   cv²(v) = var(v) / (mean(v)² + 1e-10), var with the n - 1 denominator, 0 when n = 1
//
// P(j in top k): with theta_in the (k+1)-th and theta_out the k-th largest h~ of the group, Phi((h_j - theta)/sigma_j)
// with theta = theta_in where h~_j > theta_in, else theta_out. As in the CAMEx code (and PyTorch's autograd of it),
// the gradient flows through h, sigma and the two thresholds, which are noisy logits of other experts.
//
// Weights are stored one row per expert, [n, I] (the transpose of the code's [I, n] w_gate and w_noise), so each
// logit is a contiguous dot product. `trainable = false` is the paper's "fixed random initialised router": the
// weights keep their N(0, init_std²) draw and parameters() lists nothing; the backward still gives d_routed.

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
#include "camex/core/transfer.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/platform/kokkos_compat.hpp"
#include "camex/route/groups.hpp"
#include "camex/route/operands.hpp"

namespace camex {

namespace detail {

/// What a noisy top-k gate's forward leaves for its backward, in double ([G, n] unless said).
template <class ExecSpace>
struct NoisyTopKState {
  WorkspaceMatrix<double, ExecSpace> clean, raw, sigma, eps, noisy, score, in_top_k, d_clean, d_raw;
  // [G]: the experts whose noisy logits are theta_in and theta_out
  WorkspaceArray<int, ExecSpace> threshold_in, threshold_out;
  WorkspaceArray<double, ExecSpace> d_importance, d_load;  // [n]: coefficient * d cv² / d v_j
  WorkspaceArray<double, ExecSpace> loss;                  // [1]
};

KOKKOS_INLINE_FUNCTION double softplus(double x) { return (x > 0 ? x : 0.0) + math::log1p(math::exp(-(x > 0 ? x : -x))); }
KOKKOS_INLINE_FUNCTION double sigmoid(double x) { return 1.0 / (1.0 + math::exp(-x)); }
KOKKOS_INLINE_FUNCTION double normal_cdf(double z) { return 0.5 * math::erfc(-z * 0.70710678118654752440); }
KOKKOS_INLINE_FUNCTION double normal_pdf(double z) { return 0.39894228040143267794 * math::exp(-0.5 * z * z); }

/// cv²(v) for v_j = sum_g values(g, j), n <= max_experts; writes d cv² / d v_j to grad.
template <std::size_t max_experts, class Values, class Gradient>
KOKKOS_INLINE_FUNCTION double cv_squared(const Values& values, std::size_t groups, std::size_t n, const Gradient& grad) {
  for (std::size_t j = 0; j < n; ++j) grad(j) = 0;
  if (n < 2) return 0;
  double v[max_experts], mean = 0;
  for (std::size_t j = 0; j < n; ++j) {
    v[j] = 0;
    for (std::size_t g = 0; g < groups; ++g) v[j] += values(g, j);
    mean += v[j];
  }
  mean /= static_cast<double>(n);
  double var = 0;
  for (std::size_t j = 0; j < n; ++j) var += (v[j] - mean) * (v[j] - mean);
  var /= static_cast<double>(n - 1);
  const double denom = mean * mean + 1e-10;
  for (std::size_t j = 0; j < n; ++j)
    grad(j) = 2 * (v[j] - mean) / (static_cast<double>(n - 1) * denom) -
              var * 2 * mean / (static_cast<double>(n) * denom * denom);
  return var / denom;
}

}  // namespace detail

struct NoisyTopKOptions {
  std::size_t k = 0;                 ///< experts selected per group; 0 selects all n (every CAMEx script: k = n)
  bool noisy = true;                 ///< add the learned Gaussian noise in training
  double noise_floor = 0.01;         ///< added to softplus(x W_noise): the smallest noise scale
  double balance_coefficient = 1e-2; ///< the loss's coefficient (the code's T5 layer; its GPT-2 layer uses 1e-5)
  bool trainable = true;             ///< false: a fixed random router (weights frozen at their initial draw)
  double init_std = 0.02;            ///< weights start as N(0, init_std²), as in the CAMEx code
};

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class NoisyTopKGate {
 public:
  using scalar_type = Scalar;
  using execution_space = ExecSpace;
  static constexpr std::uint32_t random_streams = 1;  ///< the logits' noise

  /// Largest expert count: a group's logits are sorted in registers of one work item.
  static constexpr std::size_t max_experts = 64;

  /// The router of a layer routed as `layout`: at most layout.groups() groups per call, so the layout states the
  /// number once.
  NoisyTopKGate(std::size_t inputs, std::size_t experts, const RoutingLayout& layout, NoisyTopKOptions options = {}, std::uint64_t init_seed = 0)
      : NoisyTopKGate(inputs, experts, layout.groups(), options, init_seed) {}

  /// A gate for router inputs of `inputs` entries over `experts` experts, for at most `max_groups` groups per
  /// call; weights drawn from CounterRng(init_seed, 0) at sites (0 for W_gate or 1 for W_noise, expert, input).
  NoisyTopKGate(std::size_t inputs, std::size_t experts, std::size_t max_groups, NoisyTopKOptions options = {},
                std::uint64_t init_seed = 0)
      : inputs_(inputs), experts_(experts), max_groups_(max_groups), options_(options) {
    constexpr const char* fn = "camex::NoisyTopKGate";
    if (inputs == 0) throw argument_error(fn, "inputs", "at least one router input", "0");
    if (experts == 0 || experts > max_experts)
      throw argument_error(fn, "experts", concat("between 1 and ", max_experts), concat(experts));
    if (max_groups == 0) throw argument_error(fn, "max_groups", "at least one routing group", "0");
    if (options_.k == 0) options_.k = experts;
    if (options_.k > experts)
      throw argument_error(fn, "options.k", concat("at most the expert count ", experts), concat(options.k));
    if (!(options_.noise_floor > 0) || !std::isfinite(options_.noise_floor))
      throw argument_error(fn, "options.noise_floor", "a positive finite noise scale", concat(options.noise_floor));
    if (!(options_.balance_coefficient >= 0) || !std::isfinite(options_.balance_coefficient))
      throw argument_error(fn, "options.balance_coefficient", "a finite coefficient >= 0",
                           concat(options.balance_coefficient));
    if (!(options_.init_std >= 0) || !std::isfinite(options_.init_std))
      throw argument_error(fn, "options.init_std", "a finite standard deviation >= 0", concat(options.init_std));
    gate_ = Matrix<Scalar, ExecSpace>("camex::NoisyTopKGate::w_gate", experts, inputs);
    noise_ = Matrix<Scalar, ExecSpace>("camex::NoisyTopKGate::w_noise", experts, inputs);
    gate_grad_ = Matrix<Scalar, ExecSpace>("camex::NoisyTopKGate::d_w_gate", experts, inputs);
    noise_grad_ = Matrix<Scalar, ExecSpace>("camex::NoisyTopKGate::d_w_noise", experts, inputs);
    reset(init_seed);
  }

  const NoisyTopKOptions& options() const { return options_; }
  std::size_t inputs() const { return inputs_; }
  std::size_t experts() const { return experts_; }

  /// The weights themselves, [n, I] each, trainable or not (to load or inspect them).
  const Matrix<Scalar, ExecSpace>& gate_weights() const { return gate_; }
  const Matrix<Scalar, ExecSpace>& noise_weights() const { return noise_; }

  /// Draws the weights afresh, as the constructor does: N(0, init_std²) from CounterRng(init_seed, 0) at sites
  /// (0 for W_gate or 1 for W_noise, expert, input).
  void reset(std::uint64_t init_seed) {
    const CounterRng rng(init_seed, 0);
    const double scale = options_.init_std;
    const std::size_t inputs = inputs_;
    const auto gate = gate_, noise = noise_;
    Kokkos::parallel_for("camex::NoisyTopKGate[init]", Kokkos::RangePolicy<ExecSpace>(0, experts_ * inputs),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const auto j = static_cast<std::uint32_t>(w / inputs);
                           const std::size_t i = w % inputs;
                           gate(j, i) = static_cast<Scalar>(scale * rng.normal({0, j, i}));
                           noise(j, i) = static_cast<Scalar>(scale * rng.normal({1, j, i}));
                         });
    ExecSpace().fence();
  }

  /// The trainable arrays with their gradients (none for a fixed router).
  std::vector<Parameter<Scalar, ExecSpace>> parameters() const {
    if (!options_.trainable) return {};
    using P = Parameter<Scalar, ExecSpace>;
    return {P::of("w_gate", gate_, gate_grad_), P::of("w_noise", noise_, noise_grad_)};
  }

  std::size_t workspace_bytes() const {
    WorkspaceCarver<ExecSpace> carver;
    layout(carver);
    return carver.bytes();
  }

  /// scores [G, n] for the router inputs `routed` [G, I], G <= max_groups; returns the balancing loss, or, where
  /// the step carries a read-back batch, queues it there (the batch's loss()) and returns 0. `routed` must keep its
  /// values until backward has run.
  double forward(const ExecSpace& space, const StepContext& step, const ConstMatrix<Scalar, ExecSpace>& routed,
                 const Matrix<Scalar, ExecSpace>& scores, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::NoisyTopKGate::forward";
    detail::require_router_operands(fn, routed, scores, max_groups_, inputs_, experts_);
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const State st = layout(carver);
    routed_ = routed;
    groups_ = routed.extent(0);
    noisy_now_ = step.training && options_.noisy;
    forwarded_ = true;

    const std::size_t n = experts_, width = inputs_, groups = groups_, k = options_.k;
    const auto gate = gate_, noise = noise_;
    const bool noisy = noisy_now_;
    Kokkos::parallel_for("camex::NoisyTopKGate[logits]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * n),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const std::size_t g = w / n, j = w % n;
                           double clean = 0, raw = 0;
                           for (std::size_t i = 0; i < width; ++i) {
                             clean += static_cast<double>(routed(g, i)) * static_cast<double>(gate(j, i));
                             if (noisy) raw += static_cast<double>(routed(g, i)) * static_cast<double>(noise(j, i));
                           }
                           st.clean(g, j) = clean;
                           st.raw(g, j) = raw;
                         });
    const CounterRng rng(step.seed, step.step);
    const std::uint32_t stream = step.stream;
    const std::uint64_t first_group = step.first_group;
    const double floor = options_.noise_floor;
    const bool load_by_cdf = noisy && k < n;
    Kokkos::parallel_for("camex::NoisyTopKGate[select]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups),
                         KOKKOS_LAMBDA(std::size_t g) {
                           double noisy_logit[max_experts];
                           int order[max_experts];
                           for (std::size_t j = 0; j < n; ++j) {
                             const double sigma = noisy ? detail::softplus(st.raw(g, j)) + floor : 0.0;
                             const double eps = noisy ? rng.normal({stream, static_cast<std::uint32_t>(j), first_group + g}) : 0.0;
                             st.sigma(g, j) = sigma;
                             st.eps(g, j) = eps;
                             noisy_logit[j] = st.clean(g, j) + eps * sigma;
                             st.noisy(g, j) = noisy_logit[j];
                           }
                           // Insertion sort, descending; equal logits keep index order (the lower index ranks first).
                           for (std::size_t j = 0; j < n; ++j) {
                             std::size_t at = j;
                             while (at > 0 && noisy_logit[order[at - 1]] < noisy_logit[j]) {
                               order[at] = order[at - 1];
                               --at;
                             }
                             order[at] = static_cast<int>(j);
                           }
                           const double top = noisy_logit[order[0]];
                           double total = 0;
                           for (std::size_t r = 0; r < k; ++r) total += math::exp(noisy_logit[order[r]] - top);
                           for (std::size_t j = 0; j < n; ++j) st.score(g, j) = 0;
                           for (std::size_t r = 0; r < k; ++r)
                             st.score(g, order[r]) = math::exp(noisy_logit[order[r]] - top) / total;
                           st.threshold_in(g) = load_by_cdf ? order[k] : -1;
                           st.threshold_out(g) = load_by_cdf ? order[k - 1] : -1;
                           for (std::size_t j = 0; j < n; ++j) {
                             if (!load_by_cdf) {
                               st.in_top_k(g, j) = st.score(g, j) > 0 ? 1.0 : 0.0;
                               continue;
                             }
                             const int m = noisy_logit[j] > noisy_logit[order[k]] ? order[k] : order[k - 1];
                             st.in_top_k(g, j) = detail::normal_cdf((st.clean(g, j) - noisy_logit[m]) / st.sigma(g, j));
                           }
                           for (std::size_t j = 0; j < n; ++j) scores(g, j) = static_cast<Scalar>(st.score(g, j));
                         });
    const double coefficient = options_.balance_coefficient;
    Kokkos::parallel_for("camex::NoisyTopKGate[balance]", Kokkos::RangePolicy<ExecSpace>(space, 0, 1),
                         KOKKOS_LAMBDA(std::size_t) {
                           st.loss(0) = coefficient * (detail::cv_squared<max_experts>(st.score, groups, n, st.d_importance) +
                                                       detail::cv_squared<max_experts>(st.in_top_k, groups, n, st.d_load));
                           for (std::size_t j = 0; j < n; ++j) {
                             st.d_importance(j) *= coefficient;
                             st.d_load(j) *= coefficient;
                           }
                         });
    if (step.read_backs == nullptr) return read_back(space, st.loss.data());
    step.read_backs->defer_loss(st.loss.data());
    return 0;
  }

  /// d_routed [G, I] (overwritten) and the weights' gradients (overwritten) from d_scores [G, n] and the
  /// loss's cotangent d_loss, for the last forward with the same workspace.
  void backward(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& d_scores, double d_loss,
                const Matrix<Scalar, ExecSpace>& d_routed, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::NoisyTopKGate::backward";
    detail::require_router_gradients(fn, forwarded_, d_scores, d_routed, groups_, inputs_, experts_);
    if (!std::isfinite(d_loss)) throw argument_error(fn, "d_loss", "a finite cotangent", concat(d_loss));
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const State st = layout(carver);
    const std::size_t n = experts_, width = inputs_, groups = groups_, k = options_.k;
    const bool noisy = noisy_now_, load_by_cdf = noisy && k < n;
    Kokkos::parallel_for("camex::NoisyTopKGate[d_logits]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups),
                         KOKKOS_LAMBDA(std::size_t g) {
                           double d_noisy[max_experts], d_sigma[max_experts], d_clean[max_experts];
                           double dot = 0;
                           for (std::size_t j = 0; j < n; ++j) {
                             const double ds = d_scores(g, j) + d_loss * st.d_importance(j);
                             d_noisy[j] = ds;  // holds d_s until the softmax below
                             dot += st.score(g, j) * ds;
                             d_sigma[j] = d_clean[j] = 0;
                           }
                           // Softmax over the selected experts; unselected scores are constant 0.
                           for (std::size_t j = 0; j < n; ++j)
                             d_noisy[j] = st.score(g, j) > 0 ? st.score(g, j) * (d_noisy[j] - dot) : 0.0;
                           if (load_by_cdf)
                             for (std::size_t j = 0; j < n; ++j) {
                               const int in = st.threshold_in(g), out = st.threshold_out(g);
                               const int m = st.noisy(g, j) > st.noisy(g, in) ? in : out;
                               const double sigma = st.sigma(g, j), z = (st.clean(g, j) - st.noisy(g, m)) / sigma;
                               const double a = d_loss * st.d_load(j) * detail::normal_pdf(z) / sigma;
                               d_clean[j] += a;
                               d_noisy[m] -= a;
                               d_sigma[j] -= a * z;
                             }
                           for (std::size_t j = 0; j < n; ++j) {
                             st.d_clean(g, j) = d_clean[j] + d_noisy[j];
                             const double dsig = d_sigma[j] + st.eps(g, j) * d_noisy[j];
                             st.d_raw(g, j) = noisy ? dsig * detail::sigmoid(st.raw(g, j)) : 0.0;
                           }
                         });
    const auto gate = gate_, noise = noise_;
    const ConstMatrix<Scalar, ExecSpace> routed = routed_;
    Kokkos::parallel_for("camex::NoisyTopKGate[d_routed]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * width),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const std::size_t g = w / width, i = w % width;
                           double sum = 0;
                           for (std::size_t j = 0; j < n; ++j)
                             sum += st.d_clean(g, j) * static_cast<double>(gate(j, i)) +
                                    st.d_raw(g, j) * static_cast<double>(noise(j, i));
                           d_routed(g, i) = static_cast<Scalar>(sum);
                         });
    if (!options_.trainable) return;
    const auto gate_grad = gate_grad_, noise_grad = noise_grad_;
    Kokkos::parallel_for("camex::NoisyTopKGate[d_weights]", Kokkos::RangePolicy<ExecSpace>(space, 0, n * width),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const std::size_t j = w / width, i = w % width;
                           double d_gate = 0, d_noise = 0;
                           for (std::size_t g = 0; g < groups; ++g) {
                             d_gate += st.d_clean(g, j) * static_cast<double>(routed(g, i));
                             d_noise += st.d_raw(g, j) * static_cast<double>(routed(g, i));
                           }
                           gate_grad(j, i) = static_cast<Scalar>(d_gate);
                           noise_grad(j, i) = static_cast<Scalar>(d_noise);
                         });
  }

 private:
  using State = detail::NoisyTopKState<ExecSpace>;

  State layout(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = max_groups_, n = experts_;
    State st;
    for (auto* m : {&st.clean, &st.raw, &st.sigma, &st.eps, &st.noisy, &st.score, &st.in_top_k, &st.d_clean, &st.d_raw})
      *m = carver.template take_matrix<double>(g, n);
    st.threshold_in = carver.template take<int>(g);
    st.threshold_out = carver.template take<int>(g);
    st.d_importance = carver.template take<double>(n);
    st.d_load = carver.template take<double>(n);
    st.loss = carver.template take<double>(1);
    return st;
  }

  std::size_t inputs_, experts_, max_groups_;
  NoisyTopKOptions options_;
  Matrix<Scalar, ExecSpace> gate_, noise_, gate_grad_, noise_grad_;
  ConstMatrix<Scalar, ExecSpace> routed_;
  std::size_t groups_ = 0;
  bool noisy_now_ = false, forwarded_ = false;
};

}  // namespace camex
