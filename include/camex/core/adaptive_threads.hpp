#pragma once
// Runs a repeated piece of work, a training step, on every thread of Kokkos' OpenMP space or on all of them but one,
// whichever is faster at the time. When another process holds one of the cores, a host space's threads are no
// longer equal: the one sharing its core runs a fraction of the time, in slices of milliseconds, and every kernel
// of a step (most take well under a millisecond) ends by waiting for it. The other threads, each with a whole
// core, are then faster without it (docs/reliability.md, "Fair under load", has the figures).
//
// The choice is measured, not guessed: while the process's threads wait for a core (Linux's per-thread run delay,
// /proc/self/task/*/schedstat), a few steps run on one thread fewer and the faster width stays; the other width is
// tried again at intervals that double while the choice holds. A step's results must not depend
// on the thread count (camex's kernels and its trainers keep that: fixed work splits, sums in fixed chunks), so the
// switches change the speed only.
//
// Narrow steps run in a partition of all the threads but one: Kokkos 3.4's OpenMP::partition_master (nested
// OpenMP, enabled for the call), Kokkos 4's OpenMP instance with a smaller pool. Other spaces, and an OpenMP space
// of one thread, run every step as given.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>

#if defined(KOKKOS_ENABLE_OPENMP)
#include <omp.h>
#endif

#include "camex/core/error.hpp"

namespace camex {

/// How many of a host space's threads a step uses: all, all but one, or whichever is faster (automatic).
enum class HostThreads { automatic, all, all_but_one };

struct AdaptiveThreadsOptions {
  HostThreads choice = HostThreads::automatic;
  std::uint64_t settle = 3;              ///< first steps left untimed (first-touch, caches)
  std::uint64_t probe_steps = 2;         ///< steps a trial of the other width runs; the fastest counts
  std::uint64_t window = 4;              ///< steps of the current width a comparison takes the median of
  std::uint64_t first_interval = 16;     ///< steps after a switch before the other width is tried again
  std::uint64_t longest_interval = 512;  ///< the interval doubles up to this while the choice holds
  double gain = 0.1;                     ///< the other width must be this fraction faster to be taken
  double waiting = 0.05;                 ///< run delay per wall second over the window that calls a narrow trial
};

/// The decisions of AdaptiveThreads, apart from running anything: fed each step's wall time and its threads'
/// run delay, it says which width the next step takes.
class ThreadWidthChooser {
 public:
  explicit ThreadWidthChooser(const AdaptiveThreadsOptions& options = {})
      : options_(checked(options)), narrow_(options.choice == HostThreads::all_but_one) {}

  /// Whether the next step runs on all threads but one.
  bool narrow_next() const { return probe_left_ > 0 ? !narrow_ : narrow_; }
  /// The width chosen, trials aside.
  bool narrow() const { return narrow_; }
  std::uint64_t switches() const { return switches_; }
  std::uint64_t trials() const { return trials_; }
  /// The last trial's fastest step at the width tried, and the median step of the width it was compared with.
  double tried_seconds() const { return tried_seconds_; }
  double compared_seconds() const { return compared_seconds_; }

  /// The step just run, at the width narrow_next() gave: its wall seconds and the seconds its process's threads
  /// spent waiting for a core (0 where that is unknown).
  void record(double seconds, double waited) {
    ++steps_;
    if (options_.choice != HostThreads::automatic || steps_ <= options_.settle) return;
    if (probe_left_ > 0) {
      probe_best_ = std::min(probe_best_, seconds);
      if (--probe_left_ == 0) decide();
      return;
    }
    recent_[filled_ % recent_.size()] = {seconds, waited};
    ++filled_;
    if (filled_ < options_.window) return;
    double waited_sum = 0, seconds_sum = 0;
    for (std::uint64_t i = filled_ - options_.window; i < filled_; ++i) {
      seconds_sum += recent_[i % recent_.size()].seconds;
      waited_sum += recent_[i % recent_.size()].waited;
    }
    // Narrow, the threads left out say nothing about the contention: all of them are simply tried again when due.
    const bool contended = waited_sum > options_.waiting * seconds_sum;
    if (steps_ >= next_trial_ && (narrow_ || contended)) start_trial();
  }

 private:
  struct Sample {
    double seconds = 0, waited = 0;
  };
  static constexpr std::uint64_t most_window = 16;

  static const AdaptiveThreadsOptions& checked(const AdaptiveThreadsOptions& o) {
    constexpr const char* fn = "camex::ThreadWidthChooser";
    if (o.probe_steps < 1) throw argument_error(fn, "options.probe_steps", "at least 1 step", concat(o.probe_steps));
    if (o.window < 1 || o.window > most_window)
      throw argument_error(fn, "options.window", concat("1 to ", most_window, " steps"), concat(o.window));
    if (o.first_interval < 1) throw argument_error(fn, "options.first_interval", "at least 1 step", concat(o.first_interval));
    if (o.longest_interval < o.first_interval)
      throw argument_error(fn, "options.longest_interval", concat("at least first_interval = ", o.first_interval),
                           concat(o.longest_interval));
    if (!(o.gain >= 0 && o.gain < 1)) throw argument_error(fn, "options.gain", "a fraction in [0, 1)", concat(o.gain));
    if (!(o.waiting >= 0 && o.waiting < 1e300))
      throw argument_error(fn, "options.waiting", "a finite fraction >= 0", concat(o.waiting));
    return o;
  }

  void start_trial() {
    probe_left_ = options_.probe_steps;
    probe_best_ = 1e300;
    ++trials_;
  }

  double median_recent() const {
    std::array<double, most_window> last{};
    const std::uint64_t n = std::min(options_.window, filled_);
    for (std::uint64_t i = 0; i < n; ++i) last[i] = recent_[(filled_ - 1 - i) % recent_.size()].seconds;
    std::sort(last.begin(), last.begin() + n);
    return n % 2 ? last[n / 2] : (last[n / 2 - 1] + last[n / 2]) / 2;
  }

  void decide() {
    tried_seconds_ = probe_best_;
    compared_seconds_ = median_recent();
    const bool better = tried_seconds_ < (1 - options_.gain) * compared_seconds_;
    if (better) {
      narrow_ = !narrow_;
      ++switches_;
      interval_ = options_.first_interval;
    } else {
      interval_ = std::min(2 * interval_, options_.longest_interval);
    }
    filled_ = 0;
    next_trial_ = steps_ + interval_;
  }

  AdaptiveThreadsOptions options_;
  bool narrow_;
  std::uint64_t steps_ = 0, switches_ = 0, trials_ = 0;
  std::uint64_t probe_left_ = 0;
  double probe_best_ = 0, tried_seconds_ = 0, compared_seconds_ = 0;
  std::array<Sample, most_window> recent_{};
  std::uint64_t filled_ = 0;
  std::uint64_t interval_ = options_.first_interval, next_trial_ = 0;
};

/// Seconds this process's threads have spent runnable but waiting for a core, from Linux's schedstat; nothing
/// where the kernel does not report it.
inline std::optional<double> process_run_delay_seconds() {
  std::error_code error;
  std::filesystem::directory_iterator tasks("/proc/self/task", error);
  if (error) return std::nullopt;
  double total = 0;
  bool any = false;
  for (const auto& task : tasks) {
    std::ifstream stat(task.path() / "schedstat");
    unsigned long long on_cpu = 0, waiting = 0;
    if (stat >> on_cpu >> waiting) {
      total += static_cast<double>(waiting) * 1e-9;
      any = true;
    }
  }
  return any ? std::optional<double>(total) : std::nullopt;
}

/// Runs steps at the width a ThreadWidthChooser picks (see the top of this file).
template <class ExecSpace>
class AdaptiveThreads {
 public:
  explicit AdaptiveThreads(const AdaptiveThreadsOptions& options = {}) : chooser_(options) {
#if defined(KOKKOS_ENABLE_OPENMP)
    if constexpr (std::is_same_v<ExecSpace, Kokkos::OpenMP>) {
      threads_ = static_cast<int>(ExecSpace().concurrency());
      adapts_ = threads_ > 1;
#if KOKKOS_VERSION >= 40000
      if (adapts_) fewer_threads_.emplace(threads_ - 1);
#endif
    }
#endif
  }

  /// Calls step(space) once, `space` being the whole space or a partition of all its threads but one.
  template <class Step>
  void run(const ExecSpace& space, Step&& step) {
    if (!adapts_) {
      step(space);
      return;
    }
    const bool narrow = chooser_.narrow_next();
    const auto waited_before = process_run_delay_seconds();
    const auto began = std::chrono::steady_clock::now();
    if (narrow)
      run_on_fewer_threads(step);
    else
      step(space);
    space.fence();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    const auto waited_after = process_run_delay_seconds();
    chooser_.record(seconds, waited_before && waited_after ? *waited_after - *waited_before : 0.0);
  }

  /// Whether the width can change at all (an OpenMP space of more than one thread).
  bool adapts() const { return adapts_; }
  const ThreadWidthChooser& chooser() const { return chooser_; }

 private:
  template <class Step>
  void run_on_fewer_threads(Step& step) {
#if defined(KOKKOS_ENABLE_OPENMP)
    if constexpr (std::is_same_v<ExecSpace, Kokkos::OpenMP>) {
#if KOKKOS_VERSION >= 40000
      step(*fewer_threads_);
#else
      // partition_master runs on the whole pool unless nested parallelism is on; it is on for this call only.
      const int levels = omp_get_max_active_levels();
      if (levels < 2) omp_set_max_active_levels(2);
      std::exception_ptr failure;
      Kokkos::OpenMP::partition_master(
          [&](int, int) {
            try {
              step(ExecSpace());
            } catch (...) {
              failure = std::current_exception();
            }
          },
          1, threads_ - 1);
      if (levels < 2) omp_set_max_active_levels(levels);
      if (failure) std::rethrow_exception(failure);
#endif
      return;
    }
#endif
    step(ExecSpace());
  }

  ThreadWidthChooser chooser_;
  bool adapts_ = false;
  int threads_ = 1;
#if defined(KOKKOS_ENABLE_OPENMP) && KOKKOS_VERSION >= 40000
  std::optional<Kokkos::OpenMP> fewer_threads_;
#endif
};

}  // namespace camex
