#pragma once
// Counts what Kokkos reports through its Tools callbacks while a MemoryEventRecorder is alive: allocations and
// deep copies. A copy is a transfer when source and destination are different memory spaces (host <-> device);
// a fill (deep_copy of a value, which Kokkos reports with the source "Scalar", or "(none)" when given an
// execution space) moves no data and is counted apart. Each event
// keeps a description, so a failing check says which view was allocated or copied.
//
// The callbacks are process-wide; one recorder at a time, and it restores the callbacks it found.

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace camex::testing {

struct MemoryEvents {
  std::vector<std::string> allocations;
  std::vector<std::string> transfers;         // between two memory spaces
  std::vector<std::uint64_t> transfer_bytes;  // one entry per transfer
  std::vector<bool> transfer_to_host;         // one entry per transfer: whether the destination is host memory
  std::vector<std::string> copies;            // within one memory space
  std::vector<std::string> fills;
};

namespace detail {

inline MemoryEvents*& recording() {
  static MemoryEvents* events = nullptr;
  return events;
}

inline void on_allocate(Kokkos_Profiling_SpaceHandle space, const char* label, const void*, std::uint64_t bytes) {
  if (auto* e = recording()) e->allocations.push_back(std::string(label) + " (" + space.name + ", " + std::to_string(bytes) + " bytes)");
}

inline void on_deep_copy(Kokkos_Profiling_SpaceHandle dst_space, const char* dst_label, const void*,
                         Kokkos_Profiling_SpaceHandle src_space, const char* src_label, const void*, std::uint64_t bytes) {
  auto* e = recording();
  if (e == nullptr) return;
  const std::string what = std::string(src_label) + " (" + src_space.name + ") -> " + dst_label + " (" + dst_space.name +
                           "), " + std::to_string(bytes) + " bytes";
  if (std::strcmp(src_label, "Scalar") == 0 || std::strcmp(src_label, "(none)") == 0)
    e->fills.push_back(what);
  else if (std::strcmp(src_space.name, dst_space.name) != 0) {
    e->transfers.push_back(what);
    e->transfer_bytes.push_back(bytes);
    e->transfer_to_host.push_back(std::strcmp(dst_space.name, Kokkos::HostSpace::name()) == 0);
  } else
    e->copies.push_back(what);
}

}  // namespace detail

/// Records into `events` from construction to destruction.
class MemoryEventRecorder {
 public:
  explicit MemoryEventRecorder(MemoryEvents& events) : previous_(Kokkos::Tools::Experimental::get_callbacks()) {
    Kokkos::fence();
    detail::recording() = &events;
    Kokkos::Tools::Experimental::set_allocate_data_callback(&detail::on_allocate);
    Kokkos::Tools::Experimental::set_begin_deep_copy_callback(&detail::on_deep_copy);
  }
  ~MemoryEventRecorder() {
    Kokkos::fence();
    detail::recording() = nullptr;
    Kokkos::Tools::Experimental::set_callbacks(previous_);
  }
  MemoryEventRecorder(const MemoryEventRecorder&) = delete;
  MemoryEventRecorder& operator=(const MemoryEventRecorder&) = delete;

 private:
  Kokkos::Tools::Experimental::EventSet previous_;
};

/// The events as lines, for a failure message.
inline std::string describe(const std::vector<std::string>& events, std::size_t at_most = 12) {
  std::string out;
  for (std::size_t i = 0; i < events.size() && i < at_most; ++i) out += "\n    " + events[i];
  if (events.size() > at_most) out += "\n    ... and " + std::to_string(events.size() - at_most) + " more";
  return out;
}

}  // namespace camex::testing
