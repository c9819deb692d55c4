#pragma once
// What a composed policy's step has materialised in its workspace, and where the check of its operands stands.
// ComposedPolicy asks the cache before it computes anything a later call may already have computed, so every
// call of a step can run in any order the concepts allow and none repeats a pass.

#include <cstddef>
#include <utility>

#include "camex/kernels/non_finite.hpp"

namespace camex::detail {

class StepCache {
 public:
  /// The pieces a step materialises on demand.
  enum class Piece : unsigned {
    deltas = 1u,  ///< tau_i = E_i - base
    factor = 2u,  ///< the mask's elementwise factor f
    rows = 4u,    ///< R = [f .* T(tau), base]
  };

  /// A new step: nothing materialised, nothing checked, and the operands' scan armed for the first pass that
  /// reads them (`scan`'s cell keeps the result until it is read back).
  void begin(NonFiniteScan scan) {
    ready_ = 0;
    prepared_ = false;
    scan_ = scan;
    cell_ = scan;
    operands_unread_ = false;
    checked_scores_ = {};
  }
  void end_prepare() { prepared_ = true; }
  bool prepared() const { return prepared_; }

  bool has(Piece piece) const { return (ready_ & static_cast<unsigned>(piece)) != 0; }
  void mark(Piece piece) { ready_ |= static_cast<unsigned>(piece); }

  /// The operands' scan, for a pass that reads the operands: armed until the scan has ended.
  NonFiniteScan pending_scan() const { return scan_; }
  /// Ends the scan; returns it if it was still armed (the caller scans the operands itself unless a pass just did).
  NonFiniteScan end_scan() {
    const auto scan = std::exchange(scan_, NonFiniteScan{});
    if (scan) operands_unread_ = true;
    return scan;
  }
  /// Whether a scan has ended whose result nobody has read.
  bool operands_unread() const { return operands_unread_; }
  /// The cell that holds the scan's result; reading it settles operands_unread().
  NonFiniteScan read_operands() {
    operands_unread_ = false;
    return cell_;
  }

  /// Whether the step's status last reported on the scores at `data` [rows, cols] (a device skips re-reading it).
  bool checked(const void* data, std::size_t rows, std::size_t cols) const {
    return checked_scores_ == ScoresIdentity{data, rows, cols};
  }
  void remember_checked(const void* data, std::size_t rows, std::size_t cols) { checked_scores_ = {data, rows, cols}; }

 private:
  struct ScoresIdentity {
    const void* data = nullptr;
    std::size_t rows = 0, cols = 0;
    bool operator==(const ScoresIdentity&) const = default;
  };
  unsigned ready_ = 0;
  bool prepared_ = false;
  NonFiniteScan scan_{}, cell_{};
  bool operands_unread_ = false;
  ScoresIdentity checked_scores_{};
};

}  // namespace camex::detail
