#pragma once
// The routing stage of a merged layer: from the layer's tokens to the scores each routing group merges with, and
// back. It runs the three steps route/groups.hpp defines around any Router:
//
//   forward:   routed = routing_inputs(x)      the router rows' inputs, [G, I]
//              gates  = router(routed)         [G, n], and the balancing loss
//              scores = merge_scores(gates)    [G, n], group g's row gate_row(g)
//   backward:  d_gates  = merge_scores_backward(d_scores)   detached merges (causal segment 0) dropped
//              d_routed = router'(d_gates, d_loss)          and the router's parameter gradients
//              d_x     += routing_inputs_backward(d_routed)
//
// so every merged layer (nn/merged_linear.hpp, nn/merged_ffn.hpp, a user's own) routes by the same conventions.
// The stage keeps a reference to the router; its arrays live in the caller's workspace. Non-finite tokens are
// found in the routing means (a bad value in a token a mean counts makes the mean non-finite; padding the means
// leave out is not looked at) and reported as bad x, read at once or queued on the step's read-back batch.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/transfer.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/non_finite.hpp"
#include "camex/route/concepts.hpp"
#include "camex/route/groups.hpp"

namespace camex {

template <Router RouterType>
class RoutingStage {
 public:
  using Scalar = typename RouterType::scalar_type;
  using ExecSpace = typename RouterType::execution_space;
  using In = ConstMatrix<Scalar, ExecSpace>;
  using Out = Matrix<Scalar, ExecSpace>;
  using PaddingFlags = Kokkos::View<const std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space>;
  template <class U>
  using Buffer = typename WorkspaceCarver<ExecSpace>::template Matrix<U>;

  /// Routes tokens of `inputs` features laid out as `layout` (checked by the caller) through `router`.
  RoutingStage(RouterType& router, const RoutingLayout& layout, std::size_t inputs)
      : router_(router), layout_(layout), inputs_(inputs) {}

  std::size_t experts() const { return router_.experts(); }
  const RoutingLayout& layout() const { return layout_; }
  RouterType& router() const { return router_; }

  /// What lives from forward to backward: the router rows' inputs (which the router reads again in backward), its
  /// gates, and the router's own workspace; then the backward's scratch.
  struct Buffers {
    Buffer<Scalar> routed, gates, d_gates, d_routed;
    Workspace<ExecSpace> router;
    typename WorkspaceCarver<ExecSpace>::template Array<std::size_t> bad_routed;  ///< the scan's cell
  };

  Buffers carve(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = layout_.groups(), n = experts();
    Buffers b;
    b.routed = carver.template take_matrix<Scalar>(g, inputs_);
    b.gates = carver.template take_matrix<Scalar>(g, n);
    b.d_gates = carver.template take_matrix<Scalar>(g, n);
    b.d_routed = carver.template take_matrix<Scalar>(g, inputs_);
    const auto raw = carver.template take<unsigned char>(router_.workspace_bytes());
    b.router = Workspace<ExecSpace>(raw.data(), raw.extent(0));
    b.bad_routed = carver.template take<std::size_t>(1);
    return b;
  }

  /// Bytes of the workspace the Workspace overloads of forward and backward take.
  std::size_t workspace_bytes() const {
    WorkspaceCarver<ExecSpace> carver;
    carve(carver);
    return carver.bytes();
  }

  /// forward and backward in a workspace of their own (workspace_bytes()), the same one for both calls of a step.
  double forward(const ExecSpace& space, const StepContext& step, const In& x, const PaddingFlags& padding, const Out& scores,
                 const Workspace<ExecSpace>& workspace) {
    WorkspaceCarver<ExecSpace> carver("camex::RoutingStage::forward", workspace);
    return forward(space, step, x, padding, scores, carve(carver));
  }
  void backward(const ExecSpace& space, const In& d_scores, double d_loss, const Out& d_x,
                const Workspace<ExecSpace>& workspace) {
    WorkspaceCarver<ExecSpace> carver("camex::RoutingStage::backward", workspace);
    backward(space, d_scores, d_loss, d_x, carve(carver));
  }

  /// scores [G, n] of every routing group for tokens x [S·L, I] (padding [S, L] or empty); returns the router's
  /// balancing loss (or 0 where the router queues it on step.read_backs). `padding` must keep its values until
  /// backward has run.
  double forward(const ExecSpace& space, const StepContext& step, const In& x, const PaddingFlags& padding, const Out& scores,
                 const Buffers& b) {
    padding_ = padding;
    routing_inputs(space, layout_, x, padding, b.routed);
    check_routed(space, step, b);
    const double loss = router_.forward(space, step, b.routed, b.gates, b.router);
    merge_scores(space, layout_, b.gates, scores);
    return loss;
  }

  /// Adds the routing path's gradient to d_x [S·L, I] and overwrites the router's parameter gradients, from the
  /// merge path's d_scores [G, n] and the balancing loss's cotangent d_loss.
  void backward(const ExecSpace& space, const In& d_scores, double d_loss, const Out& d_x, const Buffers& b) {
    merge_scores_backward(space, layout_, d_scores, b.d_gates);
    router_.backward(space, b.d_gates, d_loss, b.d_routed, b.router);
    routing_inputs_backward(space, layout_, b.d_routed, padding_, d_x, /*accumulate=*/true);
  }

 private:
  /// Scans the routing means for a non-finite value; reports it at once, or queues the scan's cell on the step's
  /// batch.
  void check_routed(const ExecSpace& space, const StepContext& step, const Buffers& b) {
    if (pending_.queued) {  // the last step's batch was never read
      pending_.queued = false;
      settle(this, read_back(space, pending_.cell));
    }
    const auto scan = detail::arm_scan(space, b.bad_routed.data());
    detail::scan_rows(space, scan, b.routed.data(), row_stride(b.routed), static_cast<int>(b.routed.extent(0)), inputs_);
    if (step.read_backs == nullptr) return settle(this, read_back(space, b.bad_routed.data()));
    pending_ = {this, true, b.bad_routed.data()};
    step.read_backs->defer(b.bad_routed.data(), sizeof(std::size_t), &settle_queued, &pending_);
  }

  /// Throws where the scan found a non-finite mean: names the tokens that mean averages.
  static void settle(const RoutingStage* stage, std::size_t first) {
    if (first == detail::no_position) return;
    const RoutingLayout& layout = stage->layout_;
    const std::size_t row = first / stage->inputs_, group = layout.router_source(row);
    const std::size_t sequence = group / layout.segments(), from = group % layout.segments() * layout.group_length();
    throw argument_error("camex::RoutingStage::forward", "x", "finite tokens",
                         concat("a NaN or infinity among the tokens of sequence ", sequence, ", positions ", from,
                                " to ", from + layout.group_length() - 1, " (rows ", sequence * layout.length + from,
                                " to ", sequence * layout.length + from + layout.group_length() - 1,
                                " of x): router row ", row, "'s mean of them is not finite"));
  }

  struct PendingCheck {
    const RoutingStage* stage = nullptr;
    bool queued = false;
    const std::size_t* cell = nullptr;
  };

  static void settle_queued(void* owner, const unsigned char* value) {
    auto& pending = *static_cast<PendingCheck*>(owner);
    if (!pending.queued) return;
    pending.queued = false;
    if (value == nullptr) return;
    std::size_t first;
    std::memcpy(&first, value, sizeof first);
    settle(pending.stage, first);
  }

  RouterType& router_;
  RoutingLayout layout_;
  std::size_t inputs_;
  PaddingFlags padding_;
  PendingCheck pending_;
};

}  // namespace camex
