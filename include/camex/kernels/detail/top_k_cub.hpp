#pragma once
// The exact per-row top-k of kernels/top_k.hpp on Kokkos' Cuda space, from CCCL's device-wide primitives; the same
// selection as every other space, bit for bit: the k-th largest magnitude key is the threshold, and among the
// entries equal to it the lowest indices are kept.
//
// The host spaces' radix select works in 16 fixed chunks a row, each a work item with a 4096-bin histogram in its
// own memory: right for a few CPU threads, hopeless for a GPU's thousands of lanes. Here instead, per digit of the
// key (8 bits at a time from the top, so each histogram is 256 bins that CUB keeps in shared memory):
//   1. cub::DeviceHistogram::HistogramEven over each row, the entries that do not match the digits found so far
//      mapped outside every bin (on the first digit NaNs go to an extra bin, read back once for the NaN check);
//   2. one team per row scans its histogram from the top (a Kokkos team scan) to the bin holding the remaining rank,
//      which joins the prefix.
// After the last digit the prefix is the threshold and `remaining` the number of ties to keep. The ties are
// counted in chunks of 4096 entries by cub::DeviceSegmentedReduce::Sum over all rows at once, and one team per row
// finds the chunk, then the entry, holding its last kept tie (tie_end = that index + 1). A mask, where one is asked
// for, is then written in one coalesced pass. Counts are integers, so the atomics inside CUB's histogram leave no
// trace of their order: the result is the same run to run.

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cub/device/device_histogram.cuh>
#include <cub/device/device_segmented_reduce.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "camex/core/transfer.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/detail/top_k_keys.hpp"

namespace camex::detail {

inline constexpr int cub_digit_bits = 8;
inline constexpr int cub_digit_bins = 1 << cub_digit_bits;
inline constexpr int cub_bins_per_row = cub_digit_bins + 1;  // the digit's bins, then the row's NaN count
inline constexpr std::int64_t cub_tie_chunk = 4096;

inline void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("camex::top_k_by_magnitude: ") + call + " failed: " + cudaGetErrorString(status));
}

/// Bin of entry p of one row for one digit: the digit's value where the key matches the row's prefix above it,
/// -1 (outside every bin: not counted) elsewhere; with `nan_bin`, a NaN's key goes to that bin instead.
template <class T>
struct DigitBin {
  const T* row;
  const magnitude_key<T>* prefix;
  magnitude_key<T> above, digit, nan_above;  // bits of the digits found, of this digit; keys above nan_above: NaN
  int shift, nan_bin;                        // nan_bin < 0: NaNs are not singled out (not the first digit)
  KOKKOS_INLINE_FUNCTION int operator()(std::int64_t p) const {
    const magnitude_key<T> key = key_of(row[p]);
    if (nan_bin >= 0 && key > nan_above) return nan_bin;
    if ((key & above) != *prefix) return -1;
    return static_cast<int>((key >> shift) & digit);
  }
};

/// 1 where entry i of the flattened [rows, params] values equals its row's threshold key.
template <class T>
struct IsTie {
  const T* data;
  std::ptrdiff_t stride;
  std::int64_t params;
  const magnitude_key<T>* threshold;
  KOKKOS_INLINE_FUNCTION std::uint32_t operator()(std::int64_t i) const {
    const std::int64_t r = i / params;
    return key_of(data[r * stride + (i - r * params)]) == threshold[r];
  }
};

/// First (Begin) or one-past-last (End) flattened index of tie chunk s: chunk s % chunks of row s / chunks.
template <bool End>
struct TieChunkOffset {
  std::int64_t params, chunks;
  KOKKOS_INLINE_FUNCTION std::int64_t operator()(std::int64_t s) const {
    const std::int64_t r = s / chunks, c = s % chunks + (End ? 1 : 0);
    const std::int64_t at = c * cub_tie_chunk;
    return r * params + (at < params ? at : params);
  }
};

template <class T>
auto digit_samples(const DigitBin<T>& bin) {
  return thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0), bin);
}

template <class T>
auto tie_flags(const IsTie<T>& tie) {
  return thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0), tie);
}

template <bool End>
auto tie_chunk_offsets(std::int64_t params, std::int64_t chunks) {
  return thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0),
                                         TieChunkOffset<End>{params, chunks});
}

/// Bytes of CUB's temporary storage for one row's histogram and for the segmented tie count (the larger).
template <class T>
std::size_t cub_select_temp_bytes(std::size_t rows, std::size_t params) {
  const auto chunks = static_cast<std::int64_t>((params + cub_tie_chunk - 1) / cub_tie_chunk);
  std::size_t histogram_bytes = 0, reduce_bytes = 0;
  check_cuda(cub::DeviceHistogram::HistogramEven(nullptr, histogram_bytes, digit_samples(DigitBin<T>{}),
                                                 static_cast<unsigned*>(nullptr), cub_digit_bins + 2, 0,
                                                 cub_digit_bins + 1, static_cast<std::int64_t>(params)),
             "cub::DeviceHistogram::HistogramEven (size query)");
  check_cuda(cub::DeviceSegmentedReduce::Sum(nullptr, reduce_bytes, tie_flags(IsTie<T>{}),
                                             static_cast<std::uint32_t*>(nullptr),
                                             static_cast<std::int64_t>(rows) * chunks,
                                             tie_chunk_offsets<false>(static_cast<std::int64_t>(params), chunks),
                                             tie_chunk_offsets<true>(static_cast<std::int64_t>(params), chunks)),
             "cub::DeviceSegmentedReduce::Sum (size query)");
  return std::max(histogram_bytes, reduce_bytes);
}

/// The arrays of one selection, in the order they are carved from the workspace (the size query carves the same).
template <class T>
struct CubSelectState {
  template <class U>
  using Array = typename WorkspaceCarver<Kokkos::Cuda>::template Array<U>;
  Array<std::uint32_t> histogram;     // [rows, cub_bins_per_row]: one digit's histogram per row, then its NaNs
  Array<std::uint32_t> nan_count;     // [1]
  Array<magnitude_key<T>> prefix;     // [rows]: the digits of the threshold found so far
  Array<std::uint64_t> remaining;     // [rows]: ranks still to place among the entries matching the prefix
  Array<std::uint32_t> chunk_ties;    // [rows, chunks]: entries equal to the threshold per chunk of 4096
  Array<std::uint64_t> tie_chunk;     // [rows]: the chunk holding the last kept tie
  Array<std::uint64_t> ties_left;     // [rows]: kept ties in that chunk
  Array<TrimBoundary> boundaries;     // [rows]: where no boundary array is given (a mask is written)
  Array<unsigned char> temporary;     // CUB's

  CubSelectState(WorkspaceCarver<Kokkos::Cuda>& carver, std::size_t rows, std::size_t params)
      : histogram(carver.template take<std::uint32_t>(rows * cub_bins_per_row)),
        nan_count(carver.template take<std::uint32_t>(1)),
        prefix(carver.template take<magnitude_key<T>>(rows)),
        remaining(carver.template take<std::uint64_t>(rows)),
        chunk_ties(carver.template take<std::uint32_t>(rows * ((params + cub_tie_chunk - 1) / cub_tie_chunk))),
        tie_chunk(carver.template take<std::uint64_t>(rows)),
        ties_left(carver.template take<std::uint64_t>(rows)),
        boundaries(carver.template take<TrimBoundary>(rows)),
        temporary(carver.template take<unsigned char>(cub_select_temp_bytes<T>(rows, params))) {}
};

template <class T>
std::size_t cub_select_workspace_bytes(std::size_t rows, std::size_t params) {
  WorkspaceCarver<Kokkos::Cuda> carver;
  CubSelectState<T>(carver, rows, params);
  return carver.bytes();
}

/// select_top_k (kernels/top_k.hpp) on Cuda: the same contract.
template <class Values, class Keep>
void select_top_k_cub(const Kokkos::Cuda& space, const Values& values, std::size_t k, const Keep& keep,
                      TrimBoundary* boundary, const Workspace<Kokkos::Cuda>& workspace, const char* nan_check) {
  using T = typename Values::non_const_value_type;
  using Key = magnitude_key<T>;
  using Team = Kokkos::TeamPolicy<Kokkos::Cuda>;
  const std::size_t rows = values.extent(0), params = values.extent(1);
  WorkspaceCarver<Kokkos::Cuda> carver("camex::top_k_by_magnitude", workspace);
  const CubSelectState<T> st(carver, rows, params);
  const T* data = values.data();
  const std::ptrdiff_t stride = row_stride(values);
  const cudaStream_t stream = space.cuda_stream();
  std::size_t temporary_bytes = st.temporary.extent(0);
  Key* prefix = st.prefix.data();
  std::uint64_t* remaining = st.remaining.data();
  std::uint32_t* histogram = st.histogram.data();
  Kokkos::parallel_for("camex::top_k[cub start]", Kokkos::RangePolicy<Kokkos::Cuda>(space, 0, rows),
                       KOKKOS_LAMBDA(std::size_t r) {
                         prefix[r] = 0;
                         remaining[r] = k;
                       });
  constexpr DigitPlan<T, cub_digit_bits, cub_digit_bits> plan;
  for (int digit = 0; digit < plan.count; ++digit) {
    const int shift = plan.shift[digit], bins = 1 << plan.width[digit];
    const bool first = digit == 0;
    for (std::size_t r = 0; r < rows; ++r) {
      const DigitBin<T> bin{data + r * stride, prefix + r, static_cast<Key>(~Key{0} << (shift + plan.width[digit])),
                            static_cast<Key>(bins - 1), infinity_key<T>, shift, first ? cub_digit_bins : -1};
      check_cuda(cub::DeviceHistogram::HistogramEven(st.temporary.data(), temporary_bytes, digit_samples(bin),
                                                     histogram + r * cub_bins_per_row, cub_digit_bins + 2, 0,
                                                     cub_digit_bins + 1, static_cast<std::int64_t>(params), stream),
                 "cub::DeviceHistogram::HistogramEven");
    }
    if (first && nan_check) {
      std::uint32_t* nans = st.nan_count.data();
      Kokkos::parallel_reduce("camex::top_k[cub nan count]", Kokkos::RangePolicy<Kokkos::Cuda>(space, 0, rows),
                              KOKKOS_LAMBDA(std::size_t r, std::uint32_t& sum) { sum += histogram[r * cub_bins_per_row + cub_digit_bins]; },
                              Kokkos::View<std::uint32_t, Kokkos::CudaSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(nans));
      if (read_back(space, nans) != 0) reject_nan_values(nan_check, values);
    }
    Kokkos::parallel_for("camex::top_k[cub pick digit]", Team(space, static_cast<int>(rows), Kokkos::AUTO),
                         KOKKOS_LAMBDA(const typename Team::member_type& team) {
                           const std::size_t r = team.league_rank();
                           const std::uint64_t left = remaining[r];
                           const std::uint32_t* h = histogram + r * cub_bins_per_row;
                           team.team_barrier();  // every lane has read `left` before one lane replaces it
                           // Inclusive sums from the top bin down: the bin where they first reach `left` holds it.
                           Kokkos::parallel_scan(Kokkos::TeamThreadRange(team, bins),
                                                 [&](int j, std::uint64_t& above, const bool final) {
                                                   const std::uint64_t count = h[bins - 1 - j];
                                                   if (final && above < left && above + count >= left) {
                                                     prefix[r] |= static_cast<Key>(bins - 1 - j) << shift;
                                                     remaining[r] = left - above;
                                                   }
                                                   above += count;
                                                 });
                         });
  }

  // prefix is now each row's threshold and remaining how many entries equal to it are kept: the lowest-indexed.
  const auto params64 = static_cast<std::int64_t>(params);
  const std::int64_t chunks = (params64 + cub_tie_chunk - 1) / cub_tie_chunk;
  std::uint32_t* chunk_ties = st.chunk_ties.data();
  check_cuda(cub::DeviceSegmentedReduce::Sum(st.temporary.data(), temporary_bytes,
                                             tie_flags(IsTie<T>{data, stride, params64, prefix}), chunk_ties,
                                             static_cast<std::int64_t>(rows) * chunks,
                                             tie_chunk_offsets<false>(params64, chunks),
                                             tie_chunk_offsets<true>(params64, chunks), stream),
             "cub::DeviceSegmentedReduce::Sum");
  TrimBoundary* trim = boundary ? boundary : st.boundaries.data();
  std::uint64_t* tie_chunk = st.tie_chunk.data();
  std::uint64_t* ties_left = st.ties_left.data();
  Kokkos::parallel_for("camex::top_k[cub tie chunk]", Team(space, static_cast<int>(rows), Kokkos::AUTO),
                       KOKKOS_LAMBDA(const typename Team::member_type& team) {
                         const std::size_t r = team.league_rank();
                         const std::uint64_t left = remaining[r];
                         const std::uint32_t* counts = chunk_ties + r * chunks;
                         Kokkos::parallel_scan(Kokkos::TeamThreadRange(team, static_cast<int>(chunks)),
                                               [&](int c, std::uint64_t& before, const bool final) {
                                                 if (final && before < left && before + counts[c] >= left) {
                                                   tie_chunk[r] = c;
                                                   ties_left[r] = left - before;
                                                 }
                                                 before += counts[c];
                                               });
                         team.team_barrier();
                         // The chunk's entries in order: the one where the ties reach the count is the last kept.
                         const std::int64_t begin = static_cast<std::int64_t>(tie_chunk[r]) * cub_tie_chunk;
                         const std::int64_t end = begin + cub_tie_chunk < params64 ? begin + cub_tie_chunk : params64;
                         const std::uint64_t need = ties_left[r];
                         const T* row = data + r * stride;
                         const Key threshold = prefix[r];
                         Kokkos::parallel_scan(Kokkos::TeamThreadRange(team, static_cast<int>(end - begin)),
                                               [&](int q, std::uint64_t& ties, const bool final) {
                                                 const std::uint64_t tie = key_of(row[begin + q]) == threshold;
                                                 if (final && tie && ties + 1 == need)
                                                   trim[r] = TrimBoundary{threshold, static_cast<std::uint64_t>(begin + q + 1)};
                                                 ties += tie;
                                               });
                       });
  if (keep.size() == 0) return;
  std::uint8_t* out = keep.data();
  const std::ptrdiff_t out_stride = row_stride(keep);
  Kokkos::parallel_for("camex::top_k[cub mark]", Kokkos::RangePolicy<Kokkos::Cuda>(space, 0, rows * params),
                       KOKKOS_LAMBDA(std::size_t i) {
                         const std::size_t r = i / params, p = i % params;
                         out[r * out_stride + p] = trim[r].selects(key_of(data[r * stride + p]), p);
                       });
}

}  // namespace camex::detail
#endif
