#pragma once
// LayerNorm over the channels of each token: y = (x - mean) rstd * weight + bias, rstd = 1 / sqrt(var + eps),
// var the biased variance (PyTorch's). Statistics are summed in double. The forward keeps mean and rstd per token
// for the backward, which accumulates into d_x, d_weight and d_bias (parameter sums over tokens run in token
// order, one channel per work item: independent of the thread count).

#include <camex/core/schedule.hpp>
#include <camex/platform/vectorize.hpp>

#include <cmath>

#include "linear.hpp"
#include "tensor.hpp"

namespace camex::examples {

inline constexpr double layer_norm_eps = 1e-5;

template <class Space, class T>
void layer_norm_forward(const Space& space, const InMat<T, Space>& x, const InVec<T, Space>& weight,
                        const InVec<T, Space>& bias, const Mat<T, Space>& y, const Vec<T, Space>& mean,
                        const Vec<T, Space>& rstd) {
  constexpr const char* fn = "layer_norm_forward";
  const std::size_t n = x.extent(0), channels = x.extent(1);
  require_length(fn, "weight", weight, channels, "x's columns");
  require_length(fn, "bias", bias, channels, "x's columns");
  require_shape(fn, "y", y, n, channels, "the shape of x");
  require_length(fn, "mean", mean, n, "x's rows");
  require_length(fn, "rstd", rstd, n, "x's rows");
  Kokkos::parallel_for("layer_norm_forward", Kokkos::RangePolicy<Space>(space, 0, n), KOKKOS_LAMBDA(std::size_t t) {
    double sum = 0;
    for (std::size_t c = 0; c < channels; ++c) sum += x(t, c);
    const double m = sum / channels;
    double squares = 0;
    for (std::size_t c = 0; c < channels; ++c) squares += (x(t, c) - m) * (x(t, c) - m);
    const double r = 1 / math::sqrt(squares / channels + layer_norm_eps);
    for (std::size_t c = 0; c < channels; ++c)
      y(t, c) = static_cast<T>((x(t, c) - m) * r * weight(c) + bias(c));
    mean(t) = static_cast<T>(m);
    rstd(t) = static_cast<T>(r);
  });
}

template <class Space, class T>
void layer_norm_backward(const Space& space, const InMat<T, Space>& x, const InVec<T, Space>& weight,
                         const InVec<T, Space>& mean, const InVec<T, Space>& rstd,
                         const InMat<T, Space>& d_y, const Mat<T, Space>& d_x, const Vec<T, Space>& d_weight,
                         const Vec<T, Space>& d_bias) {
  constexpr const char* fn = "layer_norm_backward";
  const std::size_t n = x.extent(0), channels = x.extent(1);
  require_shape(fn, "d_y", d_y, n, channels, "the shape of x");
  require_shape(fn, "d_x", d_x, n, channels, "the shape of x");
  require_length(fn, "d_weight", d_weight, channels, "x's columns");
  require_length(fn, "d_bias", d_bias, channels, "x's columns");
  // d_x = rstd (g - mean(g) - xhat mean(g xhat)), g = d_y weight.
  Kokkos::parallel_for("layer_norm_backward[x]", Kokkos::RangePolicy<Space>(space, 0, n), KOKKOS_LAMBDA(std::size_t t) {
    const double m = mean(t), r = rstd(t);
    double g_sum = 0, gx_sum = 0;
    for (std::size_t c = 0; c < channels; ++c) {
      const double g = static_cast<double>(d_y(t, c)) * weight(c);
      g_sum += g;
      gx_sum += g * (x(t, c) - m) * r;
    }
    const double g_mean = g_sum / channels, gx_mean = gx_sum / channels;
    for (std::size_t c = 0; c < channels; ++c) {
      const double g = static_cast<double>(d_y(t, c)) * weight(c), xhat = (x(t, c) - m) * r;
      d_x(t, c) += static_cast<T>(r * (g - g_mean - xhat * gx_mean));
    }
  });
  // Per channel, in token order. The host takes a cache line of channels a work item and adds each token's in
  // SIMD registers; elsewhere a lane is one channel.
  const auto add_parameter_sums = KOKKOS_LAMBDA(std::size_t first, std::size_t width) {
    double dw[column_block] = {}, db[column_block] = {};
    for (std::size_t t = 0; t < n; ++t) {
      const T m = mean(t), r = rstd(t);
      CAMEX_IVDEP
      for (std::size_t j = 0; j < width; ++j) {
        dw[j] += static_cast<double>(d_y(t, first + j)) * (x(t, first + j) - m) * r;
        db[j] += d_y(t, first + j);
      }
    }
    for (std::size_t j = 0; j < width; ++j) {
      d_weight(first + j) += static_cast<T>(dw[j]);
      d_bias(first + j) += static_cast<T>(db[j]);
    }
  };
  const bool on_host = detail::resolve<Space>(Schedule::automatic) == Schedule::tiled;
  const std::size_t block = on_host ? column_block : 1;
  Kokkos::parallel_for("layer_norm_backward[parameters]", Kokkos::RangePolicy<Space>(space, 0, (channels + block - 1) / block),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t first = w * block;
                         add_parameter_sums(first, channels - first < block ? channels - first : block);
                       });
}

}  // namespace camex::examples
