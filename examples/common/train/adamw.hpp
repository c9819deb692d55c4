#pragma once
// AdamW (Loshchilov & Hutter; PyTorch's torch.optim.AdamW) over every trainable tensor of a model, with the
// learning rate warmed up linearly from 0 and then decayed linearly to a floor, and the gradients clipped by
// their global norm. The two moments live in one arena each, one slice per tensor in the order given.
//
//   g <- g min(1, clip / ||g||)                     ||g|| over all tensors, summed in double in fixed chunks
//   m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
//   w <- w - lr (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd w)     wd only where the tensor decays

#include <camex/core/error.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parameters.hpp"

namespace camex::examples {

struct AdamWOptions {
  double learning_rate = 1e-3;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;               ///< global gradient-norm bound; 0 turns clipping off
  std::uint64_t warmup = 0;        ///< steps of linear warm-up
  std::uint64_t total = 1;         ///< the step at which the decay reaches the floor
  double final_fraction = 0.1;     ///< the floor, as a fraction of the learning rate
};

/// The learning rate of step `step` (0-based): (step + 1) / warmup of the peak during warm-up, then linear
/// down to final_fraction of it at `total`, and flat after.
inline double scheduled_rate(const AdamWOptions& o, std::uint64_t step) {
  if (step < o.warmup) return o.learning_rate * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  const double span = static_cast<double>(std::max<std::uint64_t>(o.total, o.warmup + 1) - o.warmup);
  const double progress = std::min(1.0, static_cast<double>(step - o.warmup) / span);
  return o.learning_rate * (1 - progress * (1 - o.final_fraction));
}

/// The scalars of one AdamW update of one tensor.
struct AdamWUpdate {
  double beta1, beta2, eps, weight_decay;  ///< weight_decay 0 for a tensor without decay
  double clip_scale, lr;
  double c1, c2;  ///< the bias corrections 1 - beta^t
};

/// w, and its moments at m[offset ..] and v[offset ..], updated from the gradient g; counts into `overflowed` the
/// entries left non-finite (a finite gradient whose square, or whose update, is beyond the range of T).
template <class T, class Space, class Flat, class ConstFlat, class Moments, class Counter>
void adamw_update(const Space& space, const Flat& w, const ConstFlat& g, const Moments& m, const Moments& v,
                  std::size_t offset, const Counter& overflowed, const AdamWUpdate& u) {
  const double b1 = u.beta1, b2 = u.beta2, eps = u.eps, decay = u.weight_decay, clip_scale = u.clip_scale, lr = u.lr;
  const double c1 = u.c1, c2 = u.c2;
  Kokkos::parallel_for("AdamW[update]", Kokkos::RangePolicy<Space>(space, 0, w.extent(0)), KOKKOS_LAMBDA(std::size_t k) {
    const double grad = static_cast<double>(g(k)) * clip_scale;
    const double mk = b1 * m(offset + k) + (1 - b1) * grad;
    const double vk = b2 * v(offset + k) + (1 - b2) * grad * grad;
    const T m_new = static_cast<T>(mk), v_new = static_cast<T>(vk);
    m(offset + k) = m_new;
    v(offset + k) = v_new;
    const double wk = w(k);
    const T w_new = static_cast<T>(wk - lr * ((mk / c1) / (math::sqrt(vk / c2) + eps) + decay * wk));
    w(k) = w_new;
    // x - x is 0 exactly for finite x and NaN otherwise; rare, so the atomic costs nothing.
    if (!(m_new - m_new == T(0) && v_new - v_new == T(0) && w_new - w_new == T(0))) Kokkos::atomic_add(&overflowed(), 1u);
  });
}

template <class T, class Space>
class AdamW {
 public:
  AdamW(std::vector<NamedTensor<T, Space>> tensors, const AdamWOptions& options)
      : tensors_(std::move(tensors)), options_(options) {
    constexpr const char* fn = "AdamW";
    if (!(options.learning_rate > 0)) throw argument_error(fn, "learning_rate", "a positive rate", concat(options.learning_rate));
    if (!(options.beta1 >= 0 && options.beta1 < 1)) throw argument_error(fn, "beta1", "a value in [0, 1)", concat(options.beta1));
    if (!(options.beta2 >= 0 && options.beta2 < 1)) throw argument_error(fn, "beta2", "a value in [0, 1)", concat(options.beta2));
    if (!(options.clip >= 0)) throw argument_error(fn, "clip", "a norm bound >= 0 (0: no clipping)", concat(options.clip));
    std::size_t total = 0;
    for (const auto& t : tensors_) {
      offsets_.push_back(total);
      total += t.flat.value.extent(0);
    }
    m_ = Vec<T, Space>("adamw.m", total);
    v_ = Vec<T, Space>("adamw.v", total);
    std::size_t chunks = 0;
    for (const auto& t : tensors_) {
      chunk_offsets_.push_back(chunks);
      chunks += (t.flat.value.extent(0) + norm_chunk - 1) / norm_chunk;
    }
    norm_parts_ = Kokkos::View<double*, typename Space::memory_space>("adamw.norm_parts", chunks + 1);
    overflowed_ = Kokkos::View<unsigned, typename Space::memory_space>("adamw.overflowed");
  }

  const std::vector<NamedTensor<T, Space>>& tensors() const { return tensors_; }
  /// Tensor i's slice of the first (m) or second (v) moment arena, for checkpoints.
  typename Parameter<T, Space>::Flat first_moment(std::size_t i) const { return slice(m_, i); }
  typename Parameter<T, Space>::Flat second_moment(std::size_t i) const { return slice(v_, i); }
  std::uint64_t steps_taken() const { return steps_; }
  /// The learning rate the next step() uses.
  double next_rate() const { return scheduled_rate(options_, steps_); }
  void set_steps_taken(std::uint64_t steps) { steps_ = steps; }

  /// The global gradient norm before clipping. Each tensor is cut into chunks of norm_chunk entries whose sums of
  /// squares are added in one fixed order, so the norm has the same bits on any number of threads (the trainers
  /// change their thread count while they run: AdaptiveThreads). One number read back.
  double gradient_norm(const Space& space) const {
    const auto parts = norm_parts_;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      const auto g = tensors_[i].flat.gradient;
      const std::size_t length = g.extent(0), first = chunk_offsets_[i];
      Kokkos::parallel_for("AdamW[norm]", Kokkos::RangePolicy<Space>(space, 0, (length + norm_chunk - 1) / norm_chunk),
                           KOKKOS_LAMBDA(std::size_t c) {
                             double acc = 0;
                             const std::size_t end = (c + 1) * norm_chunk < length ? (c + 1) * norm_chunk : length;
                             for (std::size_t k = c * norm_chunk; k < end; ++k)
                               acc += static_cast<double>(g(k)) * g(k);
                             parts(first + c) = acc;
                           });
    }
    const std::size_t chunks = parts.extent(0) - 1;
    Kokkos::parallel_for("AdamW[norm sum]", Kokkos::RangePolicy<Space>(space, 0, 1), KOKKOS_LAMBDA(std::size_t) {
      double sum = 0;
      for (std::size_t c = 0; c < chunks; ++c) sum += parts(c);
      parts(chunks) = sum;
    });
    Kokkos::deep_copy(space, norm_sum_, Kokkos::subview(parts, chunks));
    space.fence();
    return std::sqrt(norm_sum_());
  }

  /// One update from the gradients the tensors hold; returns the norm before clipping.
  double step(const Space& space) { return step(space, gradient_norm(space)); }

  /// The update, for a caller that has taken gradient_norm() itself (to check it first).
  double step(const Space& space, double norm) {
    if (!std::isfinite(norm))
      throw std::runtime_error("AdamW::step: the gradient norm is " + std::to_string(norm) +
                               " (a non-finite loss or gradient); lower the learning rate or check the data");
    const double clip_scale = options_.clip > 0 && norm > options_.clip ? options_.clip / norm : 1.0;
    const double lr = next_rate();
    ++steps_;
    const double c1 = 1 - std::pow(options_.beta1, static_cast<double>(steps_));
    const double c2 = 1 - std::pow(options_.beta2, static_cast<double>(steps_));
    Kokkos::deep_copy(space, overflowed_, 0u);
    for (std::size_t i = 0; i < tensors_.size(); ++i)
      adamw_update<T>(space, tensors_[i].flat.value, tensors_[i].flat.gradient, m_, v_, offsets_[i], overflowed_,
                      AdamWUpdate{options_.beta1, options_.beta2, options_.eps,
                                  tensors_[i].decay ? options_.weight_decay : 0.0, clip_scale, lr, c1, c2});
    Kokkos::deep_copy(space, last_overflowed_, overflowed_);
    space.fence();
    return norm;
  }

  /// How many entries the last step left non-finite in the parameters or the moments (a finite gradient whose
  /// square, or whose update, is beyond the range of T): 0 unless the run diverged. One number read back per step.
  unsigned last_step_overflows() const { return last_overflowed_(); }

  typename Parameter<T, Space>::Flat slice(const Vec<T, Space>& arena, std::size_t i) const {
    return typename Parameter<T, Space>::Flat(arena.data() + offsets_.at(i), tensors_.at(i).flat.value.extent(0));
  }

 private:
  std::vector<NamedTensor<T, Space>> tensors_;
  AdamWOptions options_;
  static constexpr std::size_t norm_chunk = 4096;
  std::vector<std::size_t> offsets_, chunk_offsets_;
  Vec<T, Space> m_, v_;
  Kokkos::View<double*, typename Space::memory_space> norm_parts_;  ///< each chunk's sum of squares, then the total
  Kokkos::View<double, Kokkos::HostSpace> norm_sum_{"adamw.norm_sum"};
  Kokkos::View<unsigned, typename Space::memory_space> overflowed_;
  Kokkos::View<unsigned, Kokkos::HostSpace> last_overflowed_{"adamw.last_overflowed"};
  std::uint64_t steps_ = 0;
};

}  // namespace camex::examples
