#pragma once
// Where a training step's time goes, by kernel category: Kokkos' tool callbacks (Kokkos::Tools::Experimental, in
// Kokkos 3.4 and 4.x alike) time every parallel_for, parallel_reduce, parallel_scan and deep_copy by its label while
// the profile is on, and the labels are sorted into categories (GEMM, attention, normalisation, merge policies,
// routers, elementwise, optimiser, copies and zeroing). Host backends run each kernel before returning, so a
// kernel's begin-to-end time is its run time; on a device the profile fences the space at each end so that it is
// too (which costs the overlap a real step would have). Time a step spends outside every kernel (host code,
// batches, read-backs) is the step's time less the kernels'.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace camex::examples {

class KernelProfile {
 public:
  /// Installs the callbacks (one profile per process).
  static void start() {
    namespace tools = Kokkos::Tools::Experimental;
    state().on = true;
    tools::set_begin_parallel_for_callback(&begin);
    tools::set_end_parallel_for_callback(&end);
    tools::set_begin_parallel_reduce_callback(&begin);
    tools::set_end_parallel_reduce_callback(&end);
    tools::set_begin_parallel_scan_callback(&begin);
    tools::set_end_parallel_scan_callback(&end);
    tools::set_begin_deep_copy_callback(&begin_copy);
    tools::set_end_deep_copy_callback(&end_copy);
  }
  /// Counting stops (the callbacks stay, idle) until resume(); clear() forgets what was counted.
  static void pause() { state().on = false; }
  static void resume() { state().on = true; }
  static void clear() { state().seconds.clear(); }

  /// The category a kernel label belongs to.
  static std::string category(const std::string& label) {
    const auto has = [&](const char* s) { return label.find(s) != std::string::npos; };
    if (has("gemm")) return "GEMM";
    if (has("attention")) return "attention (split, softmax, merge heads)";
    if (has("layer_norm")) return "layer norm";
    if (has("softmax_cross_entropy")) return "softmax cross-entropy";
    if (has("AdamW")) return "optimiser";
    if (label == "deep_copy") return "copies and zeroing";
    if (has("Gate") || has("Router") || has("routing") || has("merge_scores")) return "routers";
    if (label.rfind("camex::", 0) == 0 && !has("activation")) return "merge policies and merged layers";
    return "elementwise (bias, activation, residual, embedding, pooling)";
  }

  /// Seconds per category, most first.
  static std::vector<std::pair<std::string, double>> by_category() {
    std::map<std::string, double> sums;
    for (const auto& entry : state().seconds) sums[category(entry.first)] += entry.second;
    std::vector<std::pair<std::string, double>> out(sums.begin(), sums.end());
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    return out;
  }
  /// Seconds per label, most first (the first `count`).
  static std::vector<std::pair<std::string, double>> by_label(std::size_t count) {
    std::vector<std::pair<std::string, double>> out(state().seconds.begin(), state().seconds.end());
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    if (out.size() > count) out.resize(count);
    return out;
  }

  /// The report of `steps` steps that took `step_seconds` in all: each category's share of the step time, the
  /// time outside kernels, and the labels that took most.
  static std::string report(double step_seconds, std::uint64_t steps) {
    std::string out = "where the step's time goes (" + std::to_string(steps) + " steps, Kokkos kernel timers):\n";
    double kernels = 0;
    char line[256];
    for (const auto& entry : by_category()) {
      kernels += entry.second;
      std::snprintf(line, sizeof line, "  %-62s %8.2f ms/step %5.1f %%\n", entry.first.c_str(), 1e3 * entry.second / steps,
                    100 * entry.second / step_seconds);
      out += line;
    }
    std::snprintf(line, sizeof line, "  %-62s %8.2f ms/step %5.1f %%\n", "outside kernels (host code, batches, read-backs)",
                  1e3 * (step_seconds - kernels) / steps, 100 * (step_seconds - kernels) / step_seconds);
    out += line;
    out += "  the labels that took most:\n";
    for (const auto& entry : by_label(8)) {
      std::snprintf(line, sizeof line, "    %-60s %8.2f ms/step\n", entry.first.c_str(), 1e3 * entry.second / steps);
      out += line;
    }
    return out;
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct State {
    bool on = false;
    std::map<std::string, double> seconds;
    std::map<std::uint64_t, std::pair<std::string, Clock::time_point>> open;
    std::uint64_t next = 0;
    bool copying = false;  // deep copies do not nest: one open at a time
    Clock::time_point copy_started;
  };
  static State& state() {
    static State s;
    return s;
  }
  static void begin(const char* name, std::uint32_t, std::uint64_t* id) {
    State& s = state();
    *id = s.next++;
    if (s.on) s.open[*id] = {name, Clock::now()};
  }
  static void end(std::uint64_t id) {
    State& s = state();
    const auto found = s.open.find(id);
    if (found == s.open.end()) return;
    Kokkos::fence();
    s.seconds[found->second.first] += std::chrono::duration<double>(Clock::now() - found->second.second).count();
    s.open.erase(found);
  }
  static void begin_copy(Kokkos_Profiling_SpaceHandle, const char*, const void*, Kokkos_Profiling_SpaceHandle, const char*,
                         const void*, std::uint64_t) {
    State& s = state();
    if (!s.on) return;
    s.copy_started = Clock::now();
    s.copying = true;
  }
  static void end_copy() {
    State& s = state();
    if (!s.copying) return;
    s.copying = false;
    s.seconds["deep_copy"] += std::chrono::duration<double>(Clock::now() - s.copy_started).count();
  }
};

}  // namespace camex::examples
