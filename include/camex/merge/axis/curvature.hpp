#pragma once
// The curvature transform of CAMEx (docs/algorithms.md §4.5): for expert i,
//   M_i(x) = sum_{rho < r} x x_1 A[rho, i] x_2 B[rho, i] x_3 C[rho, i] x_4 D[rho, i]
// with x seen row-major as [o1, o2, i1, i2] (O = o1 o2 rows, I = i1 i2 columns), i.e. (A (x) B) x (C (x) D)^T:
// a rank-r sum of four-factor Kronecker products, applied by mode products and never formed. A bias (a tensor
// with one column) has only the output modes, (P (x) Q) beta. A dimension D splits as (f, D / f), f the largest
// divisor of D not above sqrt(D) (the CAMEx code's rule); extents of 1 carry no factor.
//
// Cost per call: 2 r n P (o1 + o2 + i1 + i2) flops forward (about 44 GFLOP for 3072 x 768, n = 7, r = 8); the
// backward recomputes the forward's partial products and adds a contraction and a transposed product per mode,
// about 2.75 times the forward.

#include <Kokkos_Core.hpp>

#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/mode_product.hpp"
#include "camex/merge/concepts.hpp"

namespace camex {

namespace detail {

/// out = scale * in: the transform of a 1 x 1 tensor, whose single entry has no factor to hold its scale.
template <class ExecSpace, class In, class Out>
void scale_copy(const ExecSpace& space, const In& in, const Out& out, typename Out::value_type scale) {
  const std::size_t cols = out.extent(1);
  Kokkos::parallel_for("camex::CurvatureTransform[scale]", Kokkos::RangePolicy<ExecSpace>(space, 0, out.extent(0) * cols),
                       KOKKOS_LAMBDA(std::size_t k) { out(k / cols, k % cols) = scale * in(k / cols, k % cols); });
}

}  // namespace detail

/// How the factors start.
enum class CurvatureInit {
  unit,              ///< every factor r^(-1/K) I over the K factored modes, so M_i = I: CA starts as its Euclidean twin
  identity_factors,  ///< every factor I, so M_i = r I (the CAMEx code)
};

struct CurvatureOptions {
  std::size_t rank = 8;
  CurvatureInit init = CurvatureInit::unit;
  std::size_t max_factor_extent = 1024;  ///< reject dimensions whose factor pair has a larger member
};

/// (f, D / f) with f the largest divisor of D not above floor(sqrt(D)).
inline std::pair<std::size_t, std::size_t> nearest_factors(std::size_t dimension) {
  std::size_t f = static_cast<std::size_t>(std::sqrt(static_cast<double>(dimension)));
  while (f * f > dimension) --f;
  while ((f + 1) * (f + 1) <= dimension) ++f;
  while (f > 1 && dimension % f != 0) --f;
  return {f, dimension / f};
}

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class CurvatureTransform {
 public:
  static constexpr bool is_identity = false;
  using Storage = Kokkos::View<Scalar*, typename ExecSpace::memory_space>;

  CurvatureTransform(const MergeProblem& problem, const CurvatureOptions& options = {})
      : experts_(problem.experts), params_(problem.shape.params()), rank_(options.rank),
        unfactored_scale_(options.init == CurvatureInit::unit ? 1.0 : static_cast<double>(options.rank)) {
    constexpr const char* fn = "camex::CurvatureTransform";
    if (options.rank == 0) throw argument_error(fn, "options.rank", "a rank of at least 1", "0");
    const auto [o1, o2] = split(fn, "problem.shape.rows", problem.shape.rows, options.max_factor_extent);
    const auto [i1, i2] = problem.shape.cols == 1 ? std::pair<std::size_t, std::size_t>{1, 1}
                                                  : split(fn, "problem.shape.cols", problem.shape.cols, options.max_factor_extent);
    extents_ = {o1, o2, i1, i2};
    static constexpr const char* names[4] = {"curvature.out1", "curvature.out2", "curvature.in1", "curvature.in2"};
    for (int k = 0; k < 4; ++k) {
      if (extents_[k] == 1) continue;
      std::size_t outer = 1, inner = 1;
      for (int j = 0; j < k; ++j) outer *= extents_[j];
      for (int j = k + 1; j < 4; ++j) inner *= extents_[j];
      const std::size_t d = extents_[k], count = rank_ * experts_ * d * d;
      modes_.push_back({k, {outer, d, inner}, Storage(std::string(names[k]), count),
                        Storage(std::string(names[k]) + ".gradient", count), names[k]});
    }
    const double scale = options.init == CurvatureInit::unit && !modes_.empty()
                             ? std::pow(static_cast<double>(rank_), -1.0 / static_cast<double>(modes_.size()))
                             : 1.0;
    for (auto& m : modes_) {
      auto host = Kokkos::create_mirror_view(m.value);
      const std::size_t d = m.geometry.extent;
      for (std::size_t b = 0; b < rank_ * experts_; ++b)
        for (std::size_t a = 0; a < d; ++a)
          for (std::size_t c = 0; c < d; ++c) host(b * d * d + a * d + c) = a == c ? static_cast<Scalar>(scale) : Scalar(0);
      Kokkos::deep_copy(m.value, host);
    }
  }

  /// [o1, o2, i1, i2]; an extent of 1 has no factor.
  const std::array<std::size_t, 4>& extents() const { return extents_; }
  std::size_t rank() const { return rank_; }

  /// The factor stack of tensor mode k (0: out1 .. 3: in2) as [rank, experts, d, d] flattened; empty if unfactored.
  Storage factors(int k) const {
    for (const auto& m : modes_)
      if (m.index == k) return m.value;
    return {};
  }

  std::vector<Parameter<Scalar, ExecSpace>> parameters() {
    std::vector<Parameter<Scalar, ExecSpace>> out;
    for (const auto& m : modes_) out.push_back({m.name, m.value, m.gradient});
    return out;
  }

  /// The scratch apply and backward take: the same carving as scratch(), on a counting carver.
  template <class T, class Carver>
  void layout(Carver& carver) const {
    scratch(carver);
  }

  /// y[i] = M_i(x[i]) for the [n, P] stacks x and y.
  template <class X, class Y>
  void apply(const ExecSpace& space, const X& x, const Y& y, WorkspaceCarver<ExecSpace>& carver) const {
    const auto s = scratch(carver);
    const std::size_t K = modes_.size();
    if (K == 0) {
      detail::scale_copy(space, x, y, static_cast<Scalar>(unfactored_scale_));
      return;
    }
    for (std::size_t rho = 0; rho < rank_; ++rho) {
      // Modes from the last to the first; intermediate results alternate between two stacks.
      const Scalar* in = x.data();
      std::ptrdiff_t in_stride = row_stride(x);
      for (std::size_t j = K; j-- > 0;) {
        const bool last = j == 0;
        Scalar* out = last ? y.data() : s.stack(j % 2);
        const std::ptrdiff_t out_stride = last ? row_stride(y) : static_cast<std::ptrdiff_t>(params_);
        product(space, j, rho, in, in_stride, out, out_stride, false, last && rho > 0, s);
        in = out;
        in_stride = out_stride;
      }
    }
  }

  /// d_x[i] = M_i^T(d_y[i]); overwrites every factor's gradient with d<d_y, M(x)>/dF.
  template <class X, class DY, class DX>
  void backward(const ExecSpace& space, const X& x, const DY& d_y, const DX& d_x, WorkspaceCarver<ExecSpace>& carver) {
    const auto s = scratch(carver);
    const std::size_t K = modes_.size();
    if (K == 0) {
      detail::scale_copy(space, d_y, d_x, static_cast<Scalar>(unfactored_scale_));
      return;
    }
    const std::ptrdiff_t P = static_cast<std::ptrdiff_t>(params_);
    for (std::size_t rho = 0; rho < rank_; ++rho) {
      // z[j] = x x_{K-1} F_{K-1} ... x_j F_j for j = K-1 .. 1: the input of mode j - 1's product.
      const Scalar* in = x.data();
      std::ptrdiff_t in_stride = row_stride(x);
      for (std::size_t j = K - 1; j >= 1; --j) {
        product(space, j, rho, in, in_stride, s.partial(j), P, false, false, s);
        in = s.partial(j);
        in_stride = P;
      }
      // Down the chain: the adjoint v of mode j's output gives F_j's gradient against mode j's input, then
      // v x_j F_j^T is the adjoint of that input.
      const Scalar* v = d_y.data();
      std::ptrdiff_t v_stride = row_stride(d_y);
      for (std::size_t j = 0; j < K; ++j) {
        const Scalar* input = j + 1 < K ? s.partial(j + 1) : x.data();
        const std::ptrdiff_t input_stride = j + 1 < K ? P : row_stride(x);
        const auto& m = modes_[j];
        const std::size_t block = m.geometry.extent * m.geometry.extent;
        detail::mode_contraction<ExecSpace, Scalar>(space, v, v_stride, input, input_stride, experts_, m.geometry,
                                                    m.gradient.data() + rho * experts_ * block, s.contraction);
        const bool last = j + 1 == K;
        Scalar* out = last ? d_x.data() : s.adjoint(j % 2);
        const std::ptrdiff_t out_stride = last ? row_stride(d_x) : P;
        product(space, j, rho, v, v_stride, out, out_stride, true, last && rho > 0, s);
        v = out;
        v_stride = out_stride;
      }
    }
  }

 private:
  struct ModeState {
    int index;
    detail::Mode geometry;
    Storage value, gradient;
    const char* name;
  };

  struct Scratch {
    Scalar* stacks;  // [K + 1, n, P]: partial products z[1 .. K-1] at 1 .. K-1, adjoints at 0 and K
    std::size_t stack_size, modes;
    typename WorkspaceCarver<ExecSpace>::template Array<Scalar> transposed;
    typename WorkspaceCarver<ExecSpace>::template Array<double> contraction;
    Scalar* partial(std::size_t j) const { return stacks + j * stack_size; }
    Scalar* stack(std::size_t parity) const { return stacks + (parity == 0 ? 0 : modes) * stack_size; }
    Scalar* adjoint(std::size_t parity) const { return stack(parity); }
  };

  Scratch scratch(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t stacks = modes_.size() + 1;
    Scratch s{carver.template take<Scalar>(stacks * experts_ * params_).data(), experts_ * params_, modes_.size(), {}, {}};
    std::size_t transposed = 0, partial = 0;
    for (const auto& m : modes_) {
      transposed = std::max(transposed, detail::mode_product_scratch(experts_, m.geometry));
      partial = std::max(partial, detail::mode_contraction_scratch(experts_, m.geometry));
    }
    s.transposed = carver.template take<Scalar>(transposed);
    s.contraction = carver.template take<double>(partial);
    return s;
  }

  void product(const ExecSpace& space, std::size_t j, std::size_t rho, const Scalar* in, std::ptrdiff_t in_stride,
               Scalar* out, std::ptrdiff_t out_stride, bool transpose, bool accumulate, const Scratch& s) const {
    const auto& m = modes_[j];
    const std::size_t block = m.geometry.extent * m.geometry.extent;
    detail::mode_product<ExecSpace, Scalar>(
        space, {in, in_stride, out, out_stride, m.value.data() + rho * experts_ * block, experts_}, m.geometry, transpose,
        accumulate, s.transposed);
  }


  static std::pair<std::size_t, std::size_t> split(const char* fn, const char* argument, std::size_t dimension,
                                                   std::size_t limit) {
    const auto pair = nearest_factors(dimension);
    if (pair.second > limit)
      throw argument_error(fn, argument,
                           concat("a dimension whose factor pair (f, D / f), f the largest divisor not above "
                                          "sqrt(D), stays within max_factor_extent = ",
                                          limit, " (a larger factor costs D^2 parameters per expert and rank)"),
                           concat(dimension, " = ", pair.first, " x ", pair.second));
    return pair;
  }

  std::size_t experts_, params_, rank_;
  double unfactored_scale_;  // M for a 1 x 1 tensor, which has no factor to hold it
  std::array<std::size_t, 4> extents_{};
  std::vector<ModeState> modes_;
};

}  // namespace camex
