#pragma once
// AdamW (Loshchilov & Hutter; PyTorch's torch.optim.AdamW) over every trainable tensor of a model, with the
// learning rate warmed up linearly from 0 and then decayed linearly to a floor, and the gradients clipped by
// their global norm. The two moments live in one arena each, one slice per tensor in the order given (or per part of
// a tensor an optimiser shard owns).
//
//   g <- g min(1, clip / ||g||)                     ||g|| over all tensors, summed in double in fixed chunks
//   m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
//   w <- w - lr (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd w)     wd only where the tensor decays

#include <camex/core/error.hpp>

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
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

/// Entries [first, last) of the flat sequence of every tensor's entries, tensor after tensor in the order given.
struct FlatRange {
  std::size_t first = 0, last = 0;
  std::size_t size() const { return last - first; }
  bool operator==(const FlatRange&) const = default;
  friend std::ostream& operator<<(std::ostream& out, const FlatRange& r) { return out << '[' << r.first << ", " << r.last << ')'; }
};

/// The entries AdamW sums its norm over in one piece: each tensor is cut every `chunk` entries from its start.
/// Returns the flat positions of the cuts, the end included (0 first): where a shard of the optimiser may begin and
/// end and still give the norm the bits of an unsharded one.
inline std::vector<std::size_t> norm_chunk_bounds(const std::vector<std::size_t>& lengths, std::size_t chunk) {
  std::vector<std::size_t> bounds{0};
  std::size_t at = 0;
  for (const std::size_t length : lengths) {
    for (std::size_t k = chunk; k < length; k += chunk) bounds.push_back(at + k);
    at += length;
    if (length > 0) bounds.push_back(at);
  }
  return bounds;
}

/// AdamW over `tensors`; with an owned range, over those entries only (ZeRO stage 1, parallel/gradient_reduction.hpp
/// and the training loop): moments for them alone, the update of them alone, and the norm from every rank's chunk
/// sums, which share_parts gathers, so every shard's update has the bits of the unsharded one.
template <class T, class Space>
class AdamW {
 public:
  static constexpr std::size_t norm_chunk = 4096;

  AdamW(std::vector<NamedTensor<T, Space>> tensors, const AdamWOptions& options, std::optional<FlatRange> owned = {})
      : tensors_(std::move(tensors)), options_(options) {
    constexpr const char* fn = "AdamW";
    if (!(options.learning_rate > 0)) throw argument_error(fn, "learning_rate", "a positive rate", concat(options.learning_rate));
    if (!(options.beta1 >= 0 && options.beta1 < 1)) throw argument_error(fn, "beta1", "a value in [0, 1)", concat(options.beta1));
    if (!(options.beta2 >= 0 && options.beta2 < 1)) throw argument_error(fn, "beta2", "a value in [0, 1)", concat(options.beta2));
    if (!(options.clip >= 0)) throw argument_error(fn, "clip", "a norm bound >= 0 (0: no clipping)", concat(options.clip));
    std::vector<std::size_t> lengths;
    std::size_t total = 0, chunks = 0;
    for (const auto& t : tensors_) {
      offsets_.push_back(total);
      chunk_offsets_.push_back(chunks);
      lengths.push_back(t.flat.value.extent(0));
      total += t.flat.value.extent(0);
      chunks += (t.flat.value.extent(0) + norm_chunk - 1) / norm_chunk;
    }
    total_ = total;
    owned_ = owned.value_or(FlatRange{0, total});
    const auto bounds = norm_chunk_bounds(lengths, norm_chunk);
    const auto first = std::find(bounds.begin(), bounds.end(), owned_.first), last = std::find(bounds.begin(), bounds.end(), owned_.last);
    if (owned_.first > owned_.last || first == bounds.end() || last == bounds.end())
      throw argument_error(fn, "owned",
                           "a range of the " + std::to_string(total) + " entries that starts and ends where a norm chunk does "
                           "(a tensor's start, every " + std::to_string(norm_chunk) + " entries after it, or the end)",
                           concat(owned_));
    owned_chunks_ = {static_cast<std::size_t>(first - bounds.begin()), static_cast<std::size_t>(last - bounds.begin())};
    m_ = Vec<T, Space>("adamw.m", owned_.size());
    v_ = Vec<T, Space>("adamw.v", owned_.size());
    norm_parts_ = Kokkos::View<double*, typename Space::memory_space>("adamw.norm_parts", chunks + 1);
    norm_parts_host_ = Kokkos::create_mirror_view(norm_parts_);  // the same view where Space's memory is the host's
    overflowed_ = Kokkos::View<unsigned, typename Space::memory_space>("adamw.overflowed");
  }

  const std::vector<NamedTensor<T, Space>>& tensors() const { return tensors_; }
  /// The entries whose moments this optimiser holds and which it updates; the chunks of the norm they span.
  FlatRange owned() const { return owned_; }
  FlatRange owned_chunks() const { return owned_chunks_; }
  bool owns_everything() const { return owned_ == FlatRange{0, total_}; }
  /// Where tensor i starts in the flat sequence.
  std::size_t flat_offset(std::size_t i) const { return offsets_.at(i); }

  /// The moments of the owned entries, in flat order.
  const Vec<T, Space>& owned_first_moments() const { return m_; }
  const Vec<T, Space>& owned_second_moments() const { return v_; }

  /// The part of tensor i this optimiser owns: its entries [begin, end) and their two moments.
  struct OwnedPart {
    std::size_t begin = 0, end = 0;
    typename Parameter<T, Space>::Flat m, v;
  };
  OwnedPart owned_part(std::size_t i) const {
    const std::size_t start = offsets_.at(i), length = tensors_.at(i).flat.value.extent(0);
    const std::size_t lo = std::clamp(owned_.first, start, start + length), hi = std::clamp(owned_.last, start, start + length);
    const std::size_t at = lo < hi ? lo - owned_.first : 0;  // an empty part points at the start, not past the end
    return {lo - start, hi - start, typename Parameter<T, Space>::Flat(m_.data() + at, hi - lo),
            typename Parameter<T, Space>::Flat(v_.data() + at, hi - lo)};
  }

  std::uint64_t steps_taken() const { return steps_; }
  /// The learning rate the next step() uses.
  double next_rate() const { return scheduled_rate(options_, steps_); }
  void set_steps_taken(std::uint64_t steps) { steps_ = steps; }

  /// Fills in the chunk sums of the chunks other shards own (every shard's, in chunk order), given this one's. Every
  /// shard of a sharded optimiser passes one, the shard that happens to own every entry too (the others are empty
  /// and wait for its sums).
  using ShareParts = std::function<void(std::span<double> parts)>;

  /// The global gradient norm before clipping. Each tensor is cut into chunks of norm_chunk entries whose sums of
  /// squares are added in one fixed order, so the norm has the same bits on any number of threads (the trainers
  /// change their thread count while they run: AdaptiveThreads) and of shards. One number read back.
  double gradient_norm(const Space& space, const ShareParts& share_parts = {}) const {
    if (!owns_everything() && !share_parts)
      throw std::logic_error("AdamW::gradient_norm: an optimiser shard needs the other shards' chunk sums (share_parts)");
    const auto parts = norm_parts_;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      const auto g = tensors_[i].flat.gradient;
      const std::size_t length = g.extent(0), first = chunk_offsets_[i], count = (length + norm_chunk - 1) / norm_chunk;
      const std::size_t lo = std::clamp(owned_chunks_.first, first, first + count) - first;
      const std::size_t hi = std::clamp(owned_chunks_.last, first, first + count) - first;
      if (lo == hi) continue;
      Kokkos::parallel_for("AdamW[norm]", Kokkos::RangePolicy<Space>(space, lo, hi), KOKKOS_LAMBDA(std::size_t c) {
        double acc = 0;
        const std::size_t end = (c + 1) * norm_chunk < length ? (c + 1) * norm_chunk : length;
        for (std::size_t k = c * norm_chunk; k < end; ++k) acc += static_cast<double>(g(k)) * g(k);
        parts(first + c) = acc;
      });
    }
    const std::size_t chunks = parts.extent(0) - 1;
    if (share_parts) {
      Kokkos::deep_copy(space, norm_parts_host_, parts);
      space.fence();
      share_parts(std::span<double>(norm_parts_host_.data(), chunks));
      Kokkos::deep_copy(space, parts, norm_parts_host_);
    }
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

  /// The update of the owned entries, for a caller that has taken gradient_norm() itself (to check it first).
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
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      const OwnedPart part = owned_part(i);
      if (part.begin == part.end) continue;
      const auto range = std::make_pair(part.begin, part.end);
      adamw_update<T>(space, Kokkos::subview(tensors_[i].flat.value, range), Kokkos::subview(tensors_[i].flat.gradient, range),
                      part.m, part.v, 0, overflowed_,
                      AdamWUpdate{options_.beta1, options_.beta2, options_.eps,
                                  tensors_[i].decay ? options_.weight_decay : 0.0, clip_scale, lr, c1, c2});
    }
    Kokkos::deep_copy(space, last_overflowed_, overflowed_);
    space.fence();
    return norm;
  }

  /// How many entries the last step left non-finite in the owned parameters or the moments (a finite gradient whose
  /// square, or whose update, is beyond the range of T): 0 unless the run diverged. One number read back per step.
  unsigned last_step_overflows() const { return last_overflowed_(); }

 private:
  std::vector<NamedTensor<T, Space>> tensors_;
  AdamWOptions options_;
  std::vector<std::size_t> offsets_, chunk_offsets_;
  std::size_t total_ = 0;
  FlatRange owned_, owned_chunks_;
  Vec<T, Space> m_, v_;
  Kokkos::View<double*, typename Space::memory_space> norm_parts_;  ///< each chunk's sum of squares, then the total
  typename Kokkos::View<double*, typename Space::memory_space>::HostMirror norm_parts_host_;
  Kokkos::View<double, Kokkos::HostSpace> norm_sum_{"adamw.norm_sum"};
  Kokkos::View<unsigned, typename Space::memory_space> overflowed_;
  Kokkos::View<unsigned, Kokkos::HostSpace> last_overflowed_{"adamw.last_overflowed"};
  std::uint64_t steps_ = 0;
};

}  // namespace camex::examples
