#pragma once
// Dynamic merging, EP-CAMEx (docs/algorithms.md §4.6): the base expert travels through a chain of L layers of equal shape.
// Only layer 0 owns a base E_m; layer l's base P_l is computed:
//   P_0 = E_m,   P_{l+1} = P_l + c sum_i M_i^(l)(E_i^(l) - P_l),   c = gamma / n,
//   merged_b^(l) = P_l + alpha sum_i s_{b,i}^(l) M_i^(l)(E_i^(l) - P_l)
// (sums over the n non-base experts). Each layer is a CurvatureAware policy whose base is P_l; the chain hands
// out layer(l), which satisfies MergePolicy, so a model calls it like any other policy: prepare in layer order
// (layer l needs P_l from layer l - 1), backward in reverse layer order (layer l needs dL/dP_{l+1} from layer
// l + 1). The backward adds c dL/dP_{l+1} to the adjoint of every transformed delta of layer l and dL/dP_{l+1} to
// its base adjoint; layer 0's d_base is dL/dE_m. Out-of-order calls throw argument_error.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/merge/curvature_aware.hpp"

namespace camex {

struct DynamicOptions {
  double gamma = 0.5;  ///< propagation step; c = gamma / n
  double alpha = 1.0;  ///< merge step (eta in NAMEx's notation)
  CurvatureOptions curvature{};
};

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class DynamicChain {
  using Inner = CurvatureAware<Scalar, ExecSpace>;

 public:
  /// Layer l of the chain, a MergePolicy. Layer 0 takes the base parameter and returns its gradient; later
  /// layers take empty base and d_base views.
  class Layer {
   public:
    using scalar_type = Scalar;
    using execution_space = ExecSpace;
    static constexpr std::uint32_t random_streams = Inner::random_streams;

    const MergeProblem& problem() const { return inner_.problem(); }
    BaseSource base_source() const { return index_ == 0 ? BaseSource::parameter : BaseSource::propagated; }
    std::size_t workspace_bytes() const { return inner_.workspace_bytes(); }
    std::vector<Parameter<Scalar, ExecSpace>> parameters() { return inner_.parameters(); }
    Inner& policy() { return inner_; }

    void prepare(const ExecSpace& space, const StepContext& step, const ConstMatrix<Scalar, ExecSpace>& experts,
                 const ConstMatrix<Scalar, ExecSpace>& base, const Workspace<ExecSpace>& workspace) {
      auto& chain = *chain_;
      constexpr const char* fn = "camex::DynamicChain::Layer::prepare";
      if (index_ == 0) {
        ++chain.generation_;
        inner_.prepare(space, step, experts, base, workspace);
      } else {
        if (chain.generation_ == 0 || chain.layers_[index_ - 1]->prepared_ != chain.generation_)
          throw argument_error(fn, "this", concat("layer ", index_ - 1, " prepared before layer ", index_, " in this step"),
                               concat("layer ", index_, " prepared first"));
        if (base.size() != 0)
          throw argument_error(fn, "base", "an empty view (the base of a later layer is propagated)", shape_of(base));
        inner_.prepare(space, step, experts, chain.base_row(index_), workspace);
      }
      if (index_ + 1 < chain.layers_.size()) chain.propagate(space, index_, inner_.prepared_rows(space, workspace));
      prepared_ = chain.generation_;
    }

    void merge(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores, const Matrix<Scalar, ExecSpace>& merged,
               const Workspace<ExecSpace>& workspace) const {
      inner_.merge(space, scores, merged, workspace);
    }

    void backward(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                  const ConstMatrix<Scalar, ExecSpace>& d_merged, const Matrix<Scalar, ExecSpace>& d_scores,
                  const Matrix<Scalar, ExecSpace>& d_experts, const Matrix<Scalar, ExecSpace>& d_base,
                  const Workspace<ExecSpace>& workspace) {
      const auto upstream = begin_backward("camex::DynamicChain::Layer::backward", d_base);
      inner_.backward(space, scores, d_merged, d_scores, d_experts, own_d_base(d_base), workspace, upstream);
      backward_done_ = chain_->generation_;
    }

    /// The rows [D_1 .. D_n, P_l] and the score-to-coefficient map, for callers that apply the rows themselves
    /// (merge/row_combination_policy.hpp); backward_from_rows keeps the chain's order rules.
    std::size_t row_count() const { return inner_.row_count(); }
    ConstMatrix<Scalar, ExecSpace> prepared_rows(const ExecSpace& space, const Workspace<ExecSpace>& workspace) {
      return inner_.prepared_rows(space, workspace);
    }
    ConstMatrix<Scalar, ExecSpace> coefficients(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                                                const Workspace<ExecSpace>& workspace) const {
      return inner_.coefficients(space, scores, workspace);
    }
    void backward_from_rows(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                            const ConstMatrix<Scalar, ExecSpace>& d_coef, const Matrix<Scalar, ExecSpace>& d_rows,
                            const Matrix<Scalar, ExecSpace>& d_scores, const Matrix<Scalar, ExecSpace>& d_experts,
                            const Matrix<Scalar, ExecSpace>& d_base, const Workspace<ExecSpace>& workspace) {
      const auto upstream = begin_backward("camex::DynamicChain::Layer::backward_from_rows", d_base);
      inner_.backward_from_rows(space, scores, d_coef, d_rows, d_scores, d_experts, own_d_base(d_base), workspace, upstream);
      backward_done_ = chain_->generation_;
    }

   private:
    friend class DynamicChain;
    Layer(DynamicChain* chain, std::size_t index, const MergeProblem& problem, const DynamicOptions& options)
        : chain_(chain), index_(index),
          inner_(problem, options.curvature, {.alpha = options.alpha, .on_degenerate = DegenerateBase::accept}) {}

    /// Checks the chain's order rules and d_base; returns the adjoint from layer l + 1's base.
    UpstreamAdjoint<Scalar, ExecSpace> begin_backward(const char* fn, const Matrix<Scalar, ExecSpace>& d_base) const {
      const auto& chain = *chain_;
      const bool last = index_ + 1 == chain.layers_.size();
      if (prepared_ == 0 || prepared_ != chain.generation_)
        throw argument_error(fn, "this", concat("layer ", index_, " prepared in this step before its backward"),
                             concat("layer ", index_, " last prepared in an earlier step, or never"));
      if (!last && chain.layers_[index_ + 1]->backward_done_ != chain.generation_)
        throw argument_error(fn, "this", concat("layer ", index_ + 1, "'s backward before layer ", index_, "'s"),
                             concat("layer ", index_, " first"));
      if (index_ > 0 && d_base.size() != 0)
        throw argument_error(fn, "d_base", "an empty view (the base of a later layer is propagated)", shape_of(d_base));
      return {last ? ConstMatrix<Scalar, ExecSpace>() : chain.d_base_row(index_ + 1), chain.propagation_coefficient()};
    }

    /// Layer 0's base gradient is the caller's; a later layer's goes to the chain, for layer l - 1's upstream.
    Matrix<Scalar, ExecSpace> own_d_base(const Matrix<Scalar, ExecSpace>& d_base) const {
      return index_ == 0 ? d_base : chain_->d_base_row(index_);
    }

    DynamicChain* chain_;
    std::size_t index_;
    Inner inner_;
    std::uint64_t prepared_ = 0, backward_done_ = 0;  // the generation of the last call; generations start at 1
  };

  DynamicChain(std::size_t layers, const MergeProblem& problem, const DynamicOptions& options = {})
      : options_(options), params_(problem.shape.params()) {
    constexpr const char* fn = "camex::DynamicChain";
    if (layers == 0) throw argument_error(fn, "layers", "a chain of at least one layer", "0");
    if (!std::isfinite(options.gamma)) throw argument_error(fn, "options.gamma", "a finite step", concat(options.gamma));
    for (std::size_t l = 0; l < layers; ++l) layers_.push_back(std::unique_ptr<Layer>(new Layer(this, l, problem, options)));
    bases_ = Matrix<Scalar, ExecSpace>("camex::DynamicChain::bases", layers, params_);
    d_bases_ = Matrix<Scalar, ExecSpace>("camex::DynamicChain::d_bases", layers, params_);
    weights_ = Kokkos::View<Scalar*, typename ExecSpace::memory_space>("camex::DynamicChain::weights", problem.experts + 1);
    auto host = Kokkos::create_mirror_view(weights_);
    for (std::size_t i = 0; i < problem.experts; ++i) host(i) = static_cast<Scalar>(propagation_coefficient());
    host(problem.experts) = 1;
    Kokkos::deep_copy(weights_, host);
  }

  DynamicChain(const DynamicChain&) = delete;
  DynamicChain& operator=(const DynamicChain&) = delete;

  std::size_t size() const { return layers_.size(); }
  Layer& layer(std::size_t l) {
    if (l >= layers_.size())
      throw argument_error("camex::DynamicChain::layer", "l", concat("a layer index below ", layers_.size()),
                           concat(l));
    return *layers_[l];
  }
  double propagation_coefficient() const { return options_.gamma / static_cast<double>(layers_.empty() ? 1 : layers_[0]->problem().experts); }

  /// P_l as [1, P] for a layer l >= 1, valid once layer l - 1 is prepared (layer 0's base is the caller's own).
  ConstMatrix<Scalar, ExecSpace> base_row(std::size_t l) const {
    if (l == 0 || l >= layers_.size())
      throw argument_error("camex::DynamicChain::base_row", "l",
                           concat("a propagated layer's index, 1 to ", layers_.size() - 1), concat(l));
    return row(bases_, l);
  }

 private:
  static Matrix<Scalar, ExecSpace> row(const Matrix<Scalar, ExecSpace>& m, std::size_t l) {
    return Kokkos::subview(m, std::pair<std::size_t, std::size_t>(l, l + 1), Kokkos::ALL);
  }
  Matrix<Scalar, ExecSpace> d_base_row(std::size_t l) const { return row(d_bases_, l); }

  /// P_{l+1} = base row + c sum_i D_i over layer l's prepared rows [D_1 .. D_n, P_l].
  void propagate(const ExecSpace& space, std::size_t l, const ConstMatrix<Scalar, ExecSpace>& rows) {
    const auto out = row(bases_, l + 1);
    detail::row_combination(space, Schedule::automatic,
                            detail::RowCombination<Scalar>{.coef = {weights_.data(), 0, 1},
                                                           .rows = rows.data(),
                                                           .row_stride = row_stride(rows),
                                                           .in_rows = static_cast<int>(rows.extent(0)),
                                                           .out = out.data(),
                                                           .out_stride = row_stride(out),
                                                           .out_rows = 1,
                                                           .length = params_});
  }

  DynamicOptions options_;
  std::size_t params_;
  std::vector<std::unique_ptr<Layer>> layers_;
  Matrix<Scalar, ExecSpace> bases_, d_bases_;
  Kokkos::View<Scalar*, typename ExecSpace::memory_space> weights_;
  std::uint64_t generation_ = 0;
};

}  // namespace camex
