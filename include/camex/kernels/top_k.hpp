#pragma once
// Exact top-k by magnitude, per row: the "trim" step of TIES (keep the `density` fraction of each task vector's
// entries with the largest |value|). An O(P) radix select on the bits of |x| (for IEEE floats, |x| read as an
// unsigned integer orders like |x|), not a sort. Digits are taken most significant first: 12 bits, then 11 at a
// time. Each digit is found by a histogram over the entries that match the digits found so far; while those are
// many, that is a pass over the whole row, and as soon as a row's fit a candidate list of P/16 entries they are
// compacted (in index order), every entry outside the list is marked in the same pass, and the row's remaining
// digits only look at the list. On typical data (one 12-bit digit leaves a few percent of the entries) that is two
// passes over the row: a histogram, then compaction with marking. Each row decides on the execution space when it
// is listed, so the host launches the same passes whatever the data and reads back nothing but the count of
// infinities and NaNs. Each pass is a launcher of its own (detail::select_*, one per pass as CUB's agents are), and
// top_k_by_magnitude only checks its operands and sequences them.
//
// On host spaces a long row first tries one pass instead of two (Floyd and Rivest's select): a fixed sample of
// 16384 to 32767 entries brackets the k-th largest magnitude, and a single pass marks every entry above the
// bracket and lists the entries inside it; the list's own digits then finish the row. A bracket that misses (the
// sample misled, or the list would overflow) sends the row through the radix passes instead, so the sample only
// ever decides how fast the row is selected, never what is selected.
//
// Ties: where several entries share the k-th largest magnitude, the ones with the lowest indices are kept, so
// the mask is a function of the values alone (PyTorch's topk and mergekit leave this unspecified).
//
// On Kokkos' Cuda space the same selection is made from CCCL's device-wide histogram and segmented reduction
// instead (kernels/detail/top_k_cub.hpp): a GPU needs every entry on a lane of its own, not 16 chunks a row.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "camex/core/error.hpp"
#include "camex/core/transfer.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/detail/top_k_cub.hpp"
#include "camex/kernels/detail/top_k_keys.hpp"
#include "camex/kernels/row_combination.hpp"
#include "camex/platform/vectorize.hpp"

// Host-only compilations for AVX-512 CPUs compact float rows sixteen entries at a time.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(__CUDACC__) && \
    !defined(__HIPCC__) && !defined(SYCL_LANGUAGE_VERSION)
#define CAMEX_SELECT_AVX512 1
#include "camex/platform/select_avx512.hpp"
#endif

namespace camex {

/// Entries to keep out of `params` at `density`, as mergekit counts them: floor(density * params); a density of
/// 1 or more keeps everything. Throws argument_error when that keeps nothing or density is not a number in (0, inf).
inline std::size_t top_k_count(const char* function, double density, std::size_t params) {
  if (!(density > 0) || !std::isfinite(density))
    throw argument_error(function, "density", "a fraction in (0, 1]", concat(density));
  if (density >= 1) return params;
  const auto k = static_cast<std::size_t>(density * static_cast<double>(params));
  if (k == 0)
    throw argument_error(function, "density", concat("at least 1/", params, " so that one entry of ", params,
                                                             " is kept"),
                         concat(density, ", which keeps none"));
  return k;
}

namespace detail {

inline constexpr int max_digit_bins = 1 << 12;

/// The sample that brackets the k-th largest magnitude takes one entry in every stride of a power of two between
/// 16 and 1024 entries, the one that gives 16384 to 32767 samples (so the bracket holds about 3 % of a row), in rows of
/// at least bracket_min_params entries, on spaces whose memory the host reads (the bracket's order statistics are
/// taken there with std::nth_element).
inline constexpr std::size_t bracket_samples = 16384;
inline constexpr std::size_t bracket_min_params = 16 * bracket_samples;

template <class ExecSpace>
inline constexpr bool brackets_on =
    static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);

/// Work decomposition of a row: at most 16 fixed chunks that depend on P only (so results do not depend on the
/// thread count), each a multiple of 64 entries; and how many entries of a row the bracket samples (0: none).
struct SelectChunking {
  std::size_t chunk, chunks, capacity, samples = 0, sample_stride = 0;
  SelectChunking(std::size_t params, bool may_bracket) {
    const std::size_t wanted = std::min<std::size_t>(16, (params + 16383) / 16384);
    chunk = ((params + wanted - 1) / wanted + 63) / 64 * 64;
    chunks = (params + chunk - 1) / chunk;
    capacity = std::min(params, params / 16 + 64);
    if (may_bracket && params >= bracket_min_params) {
      sample_stride = std::min<std::size_t>(1024, std::bit_floor(params / bracket_samples));
      samples = params / sample_stride;
    }
  }
  /// Where chunk c of a bracketed row lists its entries inside the bracket: its share of the row's list.
  std::size_t region() const { return capacity / chunks; }
};

/// A listed entry: its key travels with its index, so refining the list never goes back to the row (at a few
/// percent density, gathering from the row would touch every one of its cache lines again).
template <class T>
struct Candidate {
  magnitude_key<T> key;
  std::uint32_t index;
};

/// The arrays of one selection, in the order they are carved from the workspace.
template <class ExecSpace, class T>
struct SelectState {
  template <class U>
  using Array = typename WorkspaceCarver<ExecSpace>::template Array<U>;
  Array<std::uint32_t> histogram;        // [rows, chunks, max_digit_bins]
  Array<magnitude_key<T>> prefix;        // per row: the digits of the threshold found so far
  Array<std::uint64_t> remaining;        // per row: ranks still to place among entries matching the prefix
  Array<std::uint64_t> matches;          // per row: entries matching the prefix
  Array<Candidate<T>> candidates;        // [rows, capacity]: entries matching the prefix, ascending index
  Array<std::uint64_t> equal;            // [rows, chunks]: ties per chunk, then their offsets
  Array<std::uint8_t> listed;            // per row: 1 once its matching entries are in the candidate list
  Array<std::uint64_t> nan_count;        // [1]: entries whose magnitude is +inf or NaN
  Array<magnitude_key<T>> sample;        // [rows, samples]: the bracket's sample, reordered in place
  Array<magnitude_key<T>> bracket;       // [rows, 2]: lo and hi of the bracket
  Array<std::uint64_t> above;            // [rows, chunks]: entries above the bracket
  Array<std::uint64_t> inside;           // [rows, chunks]: entries inside it, more than region() for an overflow

  SelectState(WorkspaceCarver<ExecSpace>& carver, std::size_t rows, const SelectChunking& chunking)
      : histogram(carver.template take<std::uint32_t>(rows * chunking.chunks * max_digit_bins)),
        prefix(carver.template take<magnitude_key<T>>(rows)),
        remaining(carver.template take<std::uint64_t>(rows)),
        matches(carver.template take<std::uint64_t>(rows)),
        candidates(carver.template take<Candidate<T>>(rows * chunking.capacity)),
        equal(carver.template take<std::uint64_t>(rows * chunking.chunks)),
        listed(carver.template take<std::uint8_t>(rows)),
        nan_count(carver.template take<std::uint64_t>(1)),
        sample(carver.template take<magnitude_key<T>>(rows * chunking.samples)),
        bracket(carver.template take<magnitude_key<T>>(chunking.samples ? rows * 2 : 0)),
        above(carver.template take<std::uint64_t>(chunking.samples ? rows * chunking.chunks : 0)),
        inside(carver.template take<std::uint64_t>(chunking.samples ? rows * chunking.chunks : 0)) {}
};

/// Walks bins from the top: returns the bin holding the `left`-th largest entry and reduces `left` by the entries
/// in higher bins. `count(bin)` gives a bin's population.
template <class Count>
KOKKOS_INLINE_FUNCTION int pick_bin(int bins, std::uint64_t& left, std::uint64_t& population, const Count& count) {
  for (int d = bins - 1; d > 0; --d) {
    const std::uint64_t c = count(d);
    if (c >= left) {
      population = c;
      return d;
    }
    left -= c;
  }
  population = count(0);  // the invariant left <= entries matching the prefix puts the rank here
  return 0;
}

/// The compaction step over x[0, len): mask[q] = 1 where the key is above the range [lo, hi] (decided: kept), and
/// the keys and indices (first + q) of the entries inside it written to keys[] and indices[] in order (they go on
/// to the next digit); returns how many, and adds the count above to *above. A null mask is not written (a selection
/// that ends in a TrimBoundary). The entries matching a prefix of digits are the range [prefix, prefix with every
/// lower bit set]. Every entry is written and only those inside advance the count, so the few percent inside cost
/// no branch; keys and indices need len + 15 entries.
template <class T>
KOKKOS_INLINE_FUNCTION int mark_and_list(const T* x, int len, magnitude_key<T> lo, magnitude_key<T> hi,
                                         std::uint8_t* mask, std::uint32_t first, magnitude_key<T>* keys,
                                         std::uint32_t* indices, std::uint64_t* above) {
#if defined(CAMEX_SELECT_AVX512)
  if constexpr (std::is_same_v<T, float>) return mark_and_list_avx512(x, len, lo, hi, mask, first, keys, indices, above);
#endif
  std::uint64_t marked = 0;
  CAMEX_IVDEP
  for (int q = 0; q < len; ++q) marked += key_of(x[q]) > hi;
  *above += marked;
  if (mask) {
    CAMEX_IVDEP
    for (int q = 0; q < len; ++q) mask[q] = key_of(x[q]) > hi;
  }
  int count = 0;
  for (int q = 0; q < len; ++q) {
    const magnitude_key<T> key = key_of(x[q]);
    keys[count] = key;
    indices[count] = first + static_cast<std::uint32_t>(q);
    count += key - lo <= hi - lo;
  }
  return count;
}

/// What every pass of one selection reads: the rows, the mask, the chunking and the state in the workspace.
template <class ExecSpace, class T>
struct SelectPass {
  using Key = magnitude_key<T>;
  const T* data;
  std::ptrdiff_t stride;
  std::uint8_t* out;        // the mask, or null: the selection ends in `boundary`
  std::ptrdiff_t out_stride;
  TrimBoundary* boundary;   // [rows], with a null mask
  std::size_t rows, params;
  SelectChunking chunking;
  SelectState<ExecSpace, T> st;
  ExecSpace space;

  Kokkos::RangePolicy<ExecSpace> per_chunk() const {
    return Kokkos::RangePolicy<ExecSpace>(space, 0, rows * chunking.chunks);
  }
  Kokkos::RangePolicy<ExecSpace> per_row() const { return Kokkos::RangePolicy<ExecSpace>(space, 0, rows); }
};

/// Every row starts with an empty prefix, all P entries matching it, k ranks to place, and no list.
template <class ExecSpace, class T>
void select_start(const SelectPass<ExecSpace, T>& pass, std::size_t k) {
  const auto st = pass.st;
  const std::size_t params = pass.params;
  Kokkos::deep_copy(pass.space, st.nan_count, std::uint64_t{0});
  Kokkos::parallel_for("camex::top_k[init]", pass.per_row(), KOKKOS_LAMBDA(std::size_t r) {
    st.prefix(r) = 0;
    st.remaining(r) = k;
    st.matches(r) = params;
    st.listed(r) = 0;
  });
}

/// Where in its stride (a power of two, at most 2^10) sample j of a row sits: a fixed scatter (Knuth's multiplicative
/// hash of j), so that a row whose values repeat with a period dividing the stride is not sampled at one phase only.
inline std::size_t sample_position(std::size_t j, std::size_t stride) {
  const int bits = std::countr_zero(stride);
  const std::uint32_t scatter = bits ? (static_cast<std::uint32_t>(j) * 2654435761u) >> (32 - bits) : 0;
  return j * stride + scatter;
}

/// Per row, the bracket [lo, hi] of the k-th largest key from the row's sample of m keys, one per stride: the
/// sample's k m / P-th largest key is the estimate, and the bracket reaches 4 standard deviations of its binomial
/// rank (plus 8) to either side, so a sample of independent draws misses only about once in 10^4 rows. Where the
/// upper end falls off the sample, hi is the largest key (nothing above); the lower end, lo = 0 (everything inside).
template <class ExecSpace, class T>
void select_sample_bracket(const SelectPass<ExecSpace, T>& pass, std::size_t k) {
  using Key = magnitude_key<T>;
  const auto st = pass.st;
  const T* data = pass.data;
  const auto stride = pass.stride;
  const std::size_t m = pass.chunking.samples, every = pass.chunking.sample_stride;
  const double kept = static_cast<double>(k) / static_cast<double>(pass.params);
  const double rank = kept * static_cast<double>(m), reach = 4 * std::sqrt(rank * (1 - kept)) + 8;
  const auto top = static_cast<std::ptrdiff_t>(std::floor(rank - reach)), bottom = static_cast<std::ptrdiff_t>(std::ceil(rank + reach));
  Kokkos::parallel_for("camex::top_k[sample bracket]", pass.per_row(), [=](std::size_t r) {
    const T* row = data + r * stride;
    Key* keys = &st.sample(r * m);
    for (std::size_t j = 0; j < m; ++j) keys[j] = key_of(row[sample_position(j, every)]);
    // The i-th largest of the m keys (0 first) is keys[m - 1 - i] once sorted; nth_element places it there, with
    // everything smaller before it, where the second search looks.
    Key hi = ~Key{0} >> 1, lo = 0;
    std::size_t searched = m;
    if (top >= 0) {
      searched = m - 1 - static_cast<std::size_t>(top);
      std::nth_element(keys, keys + searched, keys + m);
      hi = keys[searched];
    }
    if (bottom < static_cast<std::ptrdiff_t>(m)) {
      const std::size_t at = m - 1 - static_cast<std::size_t>(bottom);
      std::nth_element(keys, keys + at, keys + searched);
      lo = keys[at];
    }
    st.bracket(2 * r) = lo;
    st.bracket(2 * r + 1) = hi;
  });
}

/// Per chunk of a bracketed row, one pass: every entry above the bracket marked, every other one cleared, and the
/// entries inside it listed in index order in the chunk's region of the row's list; the counts of both per chunk
/// (an overflowing region counts region() + 1); with `count_special`, the infinities and NaNs into st.nan_count.
template <class ExecSpace, class T>
void select_mark_bracket(const SelectPass<ExecSpace, T>& pass, bool count_special) {
  using Key = magnitude_key<T>;
  const auto st = pass.st;
  const T* data = pass.data;
  std::uint8_t* out = pass.out;
  const auto stride = pass.stride, out_stride = pass.out_stride;
  const std::size_t chunk = pass.chunking.chunk, chunks = pass.chunking.chunks, params = pass.params;
  const std::size_t capacity = pass.chunking.capacity, region = pass.chunking.region();
  Kokkos::parallel_for("camex::top_k[mark bracket]", pass.per_chunk(), [=](std::size_t i) {
    const std::size_t r = i / chunks, c = i % chunks;
    const T* row = data + r * stride;
    const Key lo = st.bracket(2 * r), hi = st.bracket(2 * r + 1);
    Candidate<T>* list = &st.candidates(r * capacity + c * region);
    std::uint8_t* mask = out ? out + r * out_stride : nullptr;
    const std::size_t end = chunk_end(c, chunk, params);
    constexpr int block = 256;
    Key keys[block + 15];
    std::uint32_t indices[block + 15];
    std::uint64_t above = 0, inside = 0, special = 0;
    for (std::size_t p0 = c * chunk; p0 < end; p0 += block) {
      const int len = end - p0 < block ? static_cast<int>(end - p0) : block;
      const int count =
          mark_and_list(row + p0, len, lo, hi, mask ? mask + p0 : nullptr, static_cast<std::uint32_t>(p0), keys, indices, &above);
      if (count_special)
        for (int q = 0; q < len; ++q) special += key_of(row[p0 + q]) >= infinity_key<T>;
      if (inside + count <= region)
        for (int j = 0; j < count; ++j) list[inside + j] = {keys[j], indices[j]};
      inside += count;
    }
    if (special) Kokkos::atomic_add(&st.nan_count(0), special);
    st.above(i) = above;
    st.inside(i) = inside <= region ? inside : region + 1;
  });
}

/// Per bracketed row: where the entries above the bracket leave the k-th largest inside it (k - above in [1, inside])
/// and no region overflowed, the chunks' regions are closed up into one list in index order and the row is listed
/// with k - above ranks to place and no digit found yet; otherwise it stays unlisted for the radix passes.
template <class ExecSpace, class T>
void select_settle_bracket(const SelectPass<ExecSpace, T>& pass, std::size_t k) {
  const auto st = pass.st;
  const std::size_t chunks = pass.chunking.chunks, capacity = pass.chunking.capacity, region = pass.chunking.region();
  Kokkos::parallel_for("camex::top_k[settle bracket]", pass.per_row(), [=](std::size_t r) {
    std::uint64_t above = 0, inside = 0;
    for (std::size_t c = 0; c < chunks; ++c) {
      if (st.inside(r * chunks + c) > region) return;
      above += st.above(r * chunks + c);
      inside += st.inside(r * chunks + c);
    }
    if (above >= k || k - above > inside) return;
    Candidate<T>* list = &st.candidates(r * capacity);
    std::size_t at = st.inside(r * chunks);
    for (std::size_t c = 1; c < chunks; ++c) {
      const std::size_t count = st.inside(r * chunks + c);
      std::memmove(list + at, list + c * region, count * sizeof(Candidate<T>));  // at <= c * region
      at += count;
    }
    st.remaining(r) = k - above;
    st.matches(r) = inside;
    st.listed(r) = 1;
  });
}

/// Per chunk of a row not yet listed, the histogram of digit `digit` over the entries that match the row's prefix
/// (every entry for the first digit, which also counts the infinities and NaNs into st.nan_count).
/// local[bin] += entries of row[begin, end) whose key's leading digit (key >> shift) is bin. With TwoHalves (host
/// spaces) even and odd entries go to two histograms added at the end: neighbouring entries often share a bin (the
/// leading bits of a magnitude are mostly its exponent), and one histogram would make each increment wait for the
/// last.
template <bool TwoHalves, class T>
KOKKOS_INLINE_FUNCTION void count_first_digit(const T* row, std::size_t begin, std::size_t end, int shift, int bins,
                                              std::uint32_t* local) {
  std::size_t p = begin;
  if constexpr (TwoHalves) {
    std::uint32_t odd[max_digit_bins] = {};
    for (; p + 2 <= end; p += 2) {
      ++local[key_of(row[p]) >> shift];
      ++odd[key_of(row[p + 1]) >> shift];
    }
    for (int d = 0; d < bins; ++d) local[d] += odd[d];
  }
  for (; p < end; ++p) ++local[key_of(row[p]) >> shift];
}

template <class ExecSpace, class T>
void select_histogram(const SelectPass<ExecSpace, T>& pass, int digit) {
  using Key = magnitude_key<T>;
  constexpr DigitPlan<T> plan;
  const int shift = plan.shift[digit], bins = 1 << plan.width[digit];
  const Key above = ~Key{0} << (shift + plan.width[digit]);  // bits of the digits already found
  const bool first = digit == 0;
  // Keys of +inf and of every NaN start with the all-ones exponent, so they can only land in the histogram's top
  // bins of the first digit; those bins are checked after the pass instead of testing every entry.
  const int special_bin = static_cast<int>(infinity_key<T> >> shift);
  const auto st = pass.st;
  const T* data = pass.data;
  const auto stride = pass.stride;
  const std::size_t chunk = pass.chunking.chunk, chunks = pass.chunking.chunks, params = pass.params;
  Kokkos::parallel_for("camex::top_k[histogram]", pass.per_chunk(), KOKKOS_LAMBDA(std::size_t i) {
    const std::size_t r = i / chunks, c = i % chunks;
    if (st.listed(r)) return;
    const T* row = data + r * stride;
    std::uint32_t local[max_digit_bins] = {};
    const std::size_t end = chunk_end(c, chunk, params);
    if (first) {  // every entry matches the empty prefix
      count_first_digit<static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible)>(
          row, c * chunk, end, shift, bins, local);
      std::uint64_t special = 0;
      for (int d = special_bin; d < bins; ++d) special += local[d];
      if (special) Kokkos::atomic_add(&st.nan_count(0), special);
    } else {
      // Branch-free: whether an entry matches the prefix is as unpredictable as the data.
      const Key want = st.prefix(r);
      for (std::size_t p = c * chunk; p < end; ++p) {
        const Key key = key_of(row[p]);
        local[(key >> shift) & (bins - 1)] += (key & above) == want;
      }
    }
    for (int d = 0; d < bins; ++d) st.histogram(i * max_digit_bins + d) = local[d];
  });
}

/// After the first histogram: throws argument_error naming the first NaN of `values`, if the histogram met any
/// infinity or NaN (rare, so copying the values to the host to find out which is affordable).
template <class ExecSpace, class T, class Values>
void select_reject_nan(const char* fn, const SelectPass<ExecSpace, T>& pass, const Values& values) {
  if (read_back(pass.space, pass.st.nan_count.data()) == 0) return;
  reject_nan_values(fn, values);
}

/// Per row not yet listed, the bin of the chunk histograms that holds the remaining rank: the digit joins the
/// prefix, the ranks in higher bins are placed, and the bin's population is the new count of matching entries.
template <class ExecSpace, class T>
void select_pick_digit(const SelectPass<ExecSpace, T>& pass, int digit) {
  using Key = magnitude_key<T>;
  constexpr DigitPlan<T> plan;
  const int shift = plan.shift[digit], bins = 1 << plan.width[digit];
  const auto st = pass.st;
  const std::size_t chunks = pass.chunking.chunks;
  Kokkos::parallel_for("camex::top_k[pick digit]", pass.per_row(), KOKKOS_LAMBDA(std::size_t r) {
    if (st.listed(r)) return;
    std::uint64_t left = st.remaining(r), population = 0;
    const int d = pick_bin(bins, left, population, [&](int bin) {
      std::uint64_t count = 0;
      for (std::size_t c = 0; c < chunks; ++c) count += st.histogram((r * chunks + c) * max_digit_bins + bin);
      return count;
    });
    st.prefix(r) |= static_cast<Key>(d) << shift;
    st.remaining(r) = left;
    st.matches(r) = population;
  });
}

/// For every row not yet listed whose entries matching the prefix after digit `digit` now fit the candidate list:
/// lists them, in index order, at offsets given by the chunk histograms, and decides every other entry (kept if its
/// leading digits are above the prefix), so this pass also writes the mask; then marks those rows listed.
template <class ExecSpace, class T>
void select_compact(const SelectPass<ExecSpace, T>& pass, int digit) {
  using Key = magnitude_key<T>;
  constexpr DigitPlan<T> plan;
  const int shift = plan.shift[digit], bins = 1 << plan.width[digit];
  const Key below = (Key{1} << shift) - 1;  // the bits of the digits still to find
  const auto st = pass.st;
  const T* data = pass.data;
  std::uint8_t* out = pass.out;
  const auto stride = pass.stride, out_stride = pass.out_stride;
  const std::size_t chunk = pass.chunking.chunk, chunks = pass.chunking.chunks, params = pass.params;
  const std::size_t capacity = pass.chunking.capacity;
  Kokkos::parallel_for("camex::top_k[compact]", pass.per_chunk(), KOKKOS_LAMBDA(std::size_t i) {
    const std::size_t r = i / chunks, c = i % chunks;
    if (st.listed(r) || st.matches(r) > capacity) return;
    const T* row = data + r * stride;
    const Key want = st.prefix(r);  // the entries matching it are the range [want, want | below]
    const int bin = static_cast<int>((want >> shift) & (bins - 1));
    std::uint64_t at = 0;
    for (std::size_t before = 0; before < c; ++before) at += st.histogram((r * chunks + before) * max_digit_bins + bin);
    Candidate<T>* list = &st.candidates(r * capacity);
    std::uint8_t* mask = out ? out + r * out_stride : nullptr;
    const std::size_t end = chunk_end(c, chunk, params);
    // Blocks of `block` entries compacted into local arrays, then copied to the list: the list's regions of
    // neighbouring chunks touch, and mark_and_list writes past its last match.
    constexpr int block = 256;
    Key keys[block + 15];
    std::uint32_t indices[block + 15];
    for (std::size_t p0 = c * chunk; p0 < end; p0 += block) {
      const int len = end - p0 < block ? static_cast<int>(end - p0) : block;
      std::uint64_t above = 0;
      const int count =
          mark_and_list(row + p0, len, want, want | below, mask ? mask + p0 : nullptr, static_cast<std::uint32_t>(p0), keys,
                        indices, &above);
      for (int j = 0; j < count; ++j) list[at + j] = {keys[j], indices[j]};
      at += count;
    }
  });
  // After every chunk of the pass: a row's chunks must all see it unlisted.
  Kokkos::parallel_for("camex::top_k[listed]", pass.per_row(), KOKKOS_LAMBDA(std::size_t r) {
    if (st.matches(r) <= capacity) st.listed(r) = 1;
  });
}

/// Digit `digit` found from the candidate list alone, for every listed row: entries above it are marked, the list
/// keeps the entries that still match.
template <int MostBins, class ExecSpace, class T>
void select_refine_candidates_up_to(const SelectPass<ExecSpace, T>& pass, int digit) {
  using Key = magnitude_key<T>;
  constexpr DigitPlan<T> plan;
  const int shift = plan.shift[digit], bins = 1 << plan.width[digit];
  const auto st = pass.st;
  std::uint8_t* out = pass.out;
  const auto out_stride = pass.out_stride;
  const std::size_t capacity = pass.chunking.capacity;
  Kokkos::parallel_for("camex::top_k[candidates]", pass.per_row(), KOKKOS_LAMBDA(std::size_t r) {
    if (!st.listed(r)) return;
    Candidate<T>* list = &st.candidates(r * capacity);
    const std::size_t count = st.matches(r);
    std::uint32_t local[MostBins] = {};
    for (std::size_t j = 0; j < count; ++j) ++local[(list[j].key >> shift) & (bins - 1)];
    std::uint64_t left = st.remaining(r), population = 0;
    const int d = pick_bin(bins, left, population, [&](int bin) { return std::uint64_t{local[bin]}; });
    std::size_t kept = 0;
    for (std::size_t j = 0; j < count; ++j) {
      const int bin = static_cast<int>((list[j].key >> shift) & (bins - 1));
      if (bin > d && out) out[r * out_stride + list[j].index] = 1;  // decided: above the threshold
      if (bin == d) list[kept++] = list[j];
    }
    st.prefix(r) |= static_cast<Key>(d) << shift;
    st.remaining(r) = left;
    st.matches(r) = kept;
  });
}

/// The digit-0 list (only bracketed rows have one) counts 2^12 bins; every later digit at most 2^11, which is all a
/// device thread holds.
template <class ExecSpace, class T>
void select_refine_candidates(const SelectPass<ExecSpace, T>& pass, int digit) {
  if constexpr (brackets_on<ExecSpace>)
    if (digit == 0) return select_refine_candidates_up_to<max_digit_bins>(pass, digit);
  select_refine_candidates_up_to<max_digit_bins / 2>(pass, digit);
}

/// For a listed row, everything but the ties is marked and the list holds exactly the ties, ascending: keeps the
/// first remaining(r) of them (with a boundary instead of a mask: they end after the last one kept).
template <class ExecSpace, class T>
void select_mark_listed_ties(const SelectPass<ExecSpace, T>& pass) {
  const auto st = pass.st;
  std::uint8_t* out = pass.out;
  TrimBoundary* boundary = pass.boundary;
  const auto out_stride = pass.out_stride;
  const std::size_t capacity = pass.chunking.capacity;
  Kokkos::parallel_for("camex::top_k[mark ties]", pass.per_row(), KOKKOS_LAMBDA(std::size_t r) {
    if (!st.listed(r)) return;
    const Candidate<T>* list = &st.candidates(r * capacity);
    const std::uint64_t take = st.remaining(r);
    if (!out) {
      boundary[r] = {st.prefix(r), std::uint64_t{list[take - 1].index} + 1};
      return;
    }
    for (std::uint64_t j = 0; j < take; ++j) out[r * out_stride + list[j].index] = 1;
  });
}

/// For a row never listed (too many ties for the list): counts the ties per chunk, turns the counts into offsets,
/// and marks every entry, keeping a tie by its rank among the row's ties; with a boundary instead of a mask, the
/// chunk that holds the last tie kept finds where the ties end.
template <class ExecSpace, class T>
void select_mark_by_rank(const SelectPass<ExecSpace, T>& pass) {
  using Key = magnitude_key<T>;
  const auto st = pass.st;
  const T* data = pass.data;
  std::uint8_t* out = pass.out;
  const auto stride = pass.stride, out_stride = pass.out_stride;
  const std::size_t chunk = pass.chunking.chunk, chunks = pass.chunking.chunks, params = pass.params;
  Kokkos::parallel_for("camex::top_k[count ties]", pass.per_chunk(), KOKKOS_LAMBDA(std::size_t i) {
    const std::size_t r = i / chunks, c = i % chunks;
    if (st.listed(r)) return;
    const T* row = data + r * stride;
    const std::size_t end = chunk_end(c, chunk, params);
    std::uint64_t ties = 0;
    for (std::size_t p = c * chunk; p < end; ++p) ties += key_of(row[p]) == st.prefix(r);
    st.equal(i) = ties;
  });
  Kokkos::parallel_for("camex::top_k[tie offsets]", pass.per_row(), KOKKOS_LAMBDA(std::size_t r) {
    if (st.listed(r)) return;
    std::uint64_t offset = 0;
    for (std::size_t c = 0; c < chunks; ++c) {
      const std::uint64_t ties = st.equal(r * chunks + c);
      st.equal(r * chunks + c) = offset;
      offset += ties;
    }
  });
  TrimBoundary* boundary = pass.boundary;
  Kokkos::parallel_for("camex::top_k[mark with ranks]", pass.per_chunk(), KOKKOS_LAMBDA(std::size_t i) {
    const std::size_t r = i / chunks, c = i % chunks;
    if (st.listed(r)) return;
    const T* row = data + r * stride;
    const std::size_t end = chunk_end(c, chunk, params);
    const Key threshold = st.prefix(r);
    const std::uint64_t take = st.remaining(r);
    std::uint64_t rank = st.equal(i);
    if (!out) {
      const bool last_chunk = c + 1 == chunks;
      if (rank >= take || (!last_chunk && st.equal(i + 1) < take)) return;  // the take-th tie is in another chunk
      for (std::size_t p = c * chunk; p < end; ++p)
        if (key_of(row[p]) == threshold && ++rank == take) {
          boundary[r] = {threshold, p + 1};
          return;
        }
      return;
    }
    std::uint8_t* mask = out + r * out_stride;
    for (std::size_t p = c * chunk; p < end; ++p) {
      const Key key = key_of(row[p]);
      mask[p] = key > threshold || (key == threshold && rank++ < take);
    }
  });
}

}  // namespace detail

/// Bytes of workspace top_k_by_magnitude needs for `rows` rows of `params` entries of type Scalar.
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
std::size_t top_k_workspace_bytes(std::size_t rows, std::size_t params) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) return detail::cub_select_workspace_bytes<Scalar>(rows, params);
#endif
  WorkspaceCarver<ExecSpace> carver;
  detail::SelectState<ExecSpace, Scalar>(carver, rows, detail::SelectChunking(params, detail::brackets_on<ExecSpace>));
  return carver.bytes();
}

namespace detail {

/// The selection of top_k_by_magnitude, for a caller that has checked its operands: into the mask `keep`, or where
/// `keep` is empty into one TrimBoundary per row at `boundary` (no mask written at all). With `nan_check` (the
/// calling function's name) the count of infinities and NaNs is read back after the first pass and a NaN is
/// reported as that function's argument_error; without it nothing is read back, for values the caller knows finite
/// (a NaN then selects like a magnitude above infinity: the selection is garbage, the call still ends).
template <class ExecSpace, class Values, class Keep>
void select_top_k(const ExecSpace& space, const Values& values, std::size_t k, const Keep& keep, TrimBoundary* boundary,
                  const Workspace<ExecSpace>& workspace, const char* nan_check) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    return select_top_k_cub(space, values, k, keep, boundary, workspace, nan_check);
  }
#endif
  using T = typename Values::non_const_value_type;
  const std::size_t rows = values.extent(0), params = values.extent(1);
  const SelectChunking chunking(params, brackets_on<ExecSpace>);
  WorkspaceCarver<ExecSpace> carver("camex::top_k_by_magnitude", workspace);
  const SelectPass<ExecSpace, T> pass{values.data(), row_stride(values),
                                      keep.size() ? keep.data() : nullptr, keep.size() ? row_stride(keep) : 0,
                                      boundary, rows, params, chunking, SelectState<ExecSpace, T>(carver, rows, chunking),
                                      space};
  select_start(pass, k);
  if constexpr (brackets_on<ExecSpace>)
    if (chunking.samples) {
      select_sample_bracket(pass, k);
      select_mark_bracket(pass, nan_check != nullptr);
      select_settle_bracket(pass, k);
      select_refine_candidates(pass, 0);
    }
  // Digits most significant first: full passes over a row until its entries matching the prefix fit the candidate
  // list, then passes over its list alone.
  constexpr DigitPlan<T> plan;
  for (int digit = 0; digit < plan.count; ++digit) {
    if (digit > 0) select_refine_candidates(pass, digit);
    select_histogram(pass, digit);
    if (digit == 0 && nan_check) select_reject_nan(nan_check, pass, values);
    select_pick_digit(pass, digit);
    if (digit + 1 < plan.count) select_compact(pass, digit);
  }
  // prefix(r) is now the k-th largest key and remaining(r) how many entries equal to it are kept: the first ones
  // in index order.
  select_mark_listed_ties(pass);
  select_mark_by_rank(pass);
}

}  // namespace detail

/// keep(r, p) = 1 for the k entries of row r of `values` with the largest magnitude, 0 for the others; among
/// entries tied at the k-th largest magnitude the lowest indices are kept. 1 <= k <= P < 2^32. NaN values are
/// rejected (argument_error naming the first one); infinities are ordinary large magnitudes.
template <class ExecSpace, MatrixOn<ExecSpace> Values, MatrixOn<ExecSpace> Keep>
  requires MutableMatrix<Keep> && std::same_as<typename Keep::value_type, std::uint8_t> &&
           std::floating_point<typename Values::non_const_value_type>
void top_k_by_magnitude(const ExecSpace& space, const Values& values, std::size_t k, const Keep& keep,
                        const Workspace<ExecSpace>& workspace) {
  constexpr const char* fn = "camex::top_k_by_magnitude";
  require_nonempty(fn, "values", values, "[R, P] matrix");
  const std::size_t rows = values.extent(0), params = values.extent(1);
  if (params > std::numeric_limits<std::uint32_t>::max())
    throw argument_error(fn, "values", "rows of fewer than 2^32 entries", concat("shape ", shape_of(values)));
  require_shape(fn, "keep", keep, rows, params, "[R, P], the shape of values");
  if (k < 1 || k > params)
    throw argument_error(fn, "k", concat("a count in [1, ", params, "] (P = values.extent(1))"), concat(k));
  detail::select_top_k(space, values, k, keep, nullptr, workspace, fn);
}

}  // namespace camex
