// Exact top-k by magnitude against a stable sort on the host (magnitude descending, index ascending), with ties
// at the threshold, signed zeros, infinities, subnormals, both float and double; and its error paths.
#include "camex/kernels/top_k.hpp"

#include "reference.hpp"
#include "testing.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

/// The rows as a matrix on the execution space.
template <class T>
Matrix<T, Space> on_space(const std::vector<std::vector<T>>& rows) {
  Matrix<T, Space> values("values", rows.size(), rows[0].size());
  auto host = Kokkos::create_mirror_view(values);
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::size_t p = 0; p < rows[r].size(); ++p) host(r, p) = rows[r][p];
  Kokkos::deep_copy(values, host);
  return values;
}

template <class T>
void check_rows(const std::vector<std::vector<T>>& rows, std::size_t k, const char* what) {
  BOOST_TEST_CONTEXT(what << ", T = " << (sizeof(T) == 4 ? "float" : "double") << ", P = " << rows[0].size()
                          << ", k = " << k) {
    const std::size_t R = rows.size(), P = rows[0].size();
    const auto values = on_space(rows);
    Matrix<std::uint8_t, Space> keep("keep", R, P);
    const auto workspace = make_workspace<Space>(top_k_workspace_bytes<T, Space>(R, P));
    top_k_by_magnitude(Space{}, values, k, keep, workspace);
    // The same selection as a boundary per row (the TIES trim's form): no mask written.
    Kokkos::View<detail::TrimBoundary*, Space::memory_space> boundaries("boundaries", R);
    detail::select_top_k(Space{}, values, k, Matrix<std::uint8_t, Space>(), boundaries.data(), workspace, nullptr);
    const auto got = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, keep);
    const auto boundary = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, boundaries);
    for (std::size_t r = 0; r < R; ++r) {
      const auto expected = reference_top_k_mask(rows[r], k);
      std::size_t mismatches = 0, first = P, kept = 0, boundary_mismatches = 0;
      for (std::size_t p = 0; p < P; ++p) {
        kept += got(r, p);
        if (got(r, p) != expected[p] && mismatches++ == 0) first = p;
        boundary_mismatches += boundary(r).selects(detail::key_of(rows[r][p]), p) != static_cast<bool>(expected[p]);
      }
      BOOST_TEST(kept == k, "row " << r);
      BOOST_TEST(mismatches == 0u, "row " << r << ": " << mismatches << " entries differ from the stable sort, first at "
                                          << first);
      BOOST_TEST(boundary_mismatches == 0u, "row " << r << ": the boundary {" << boundary(r).threshold << ", "
                                                   << boundary(r).tie_end << "} selects " << boundary_mismatches
                                                   << " entries unlike the stable sort");
    }
  }
}

template <class T>
std::vector<std::vector<T>> random_rows(std::size_t rows, std::size_t params, std::mt19937_64& gen, int levels) {
  // levels > 0: values drawn from a few magnitudes, so many entries tie at the threshold.
  std::uniform_real_distribution<double> uniform(-1, 1);
  std::uniform_int_distribution<int> level(-levels, levels);
  std::vector<std::vector<T>> out(rows, std::vector<T>(params));
  for (auto& row : out)
    for (auto& x : row) x = levels > 0 ? static_cast<T>(0.25 * level(gen)) : static_cast<T>(uniform(gen));
  return out;
}

template <class T>
void check_type(std::mt19937_64& gen) {
  for (std::size_t params : {1ul, 5ul, 64ul, 4097ul, 300001ul})
    for (std::size_t k : {std::size_t{1}, std::max<std::size_t>(1, params / 5), params - params / 3, params}) {
      check_rows(random_rows<T>(3, params, gen, 0), k, "distinct magnitudes");
      check_rows(random_rows<T>(3, params, gen, 3), k, "many ties");
      // Rows decide apart when their candidates fit the list: a row of distinct magnitudes is listed after a digit
      // or two, one of few magnitudes never (its ties at the threshold outnumber the list).
      auto mixed = random_rows<T>(3, params, gen, 0);
      mixed[1] = random_rows<T>(1, params, gen, 3)[0];
      check_rows(mixed, k, "one row never listed between listed ones");
    }
  // Signed zeros tie with each other; subnormals and infinities order like any magnitude.
  const T inf = std::numeric_limits<T>::infinity(), tiny = std::numeric_limits<T>::denorm_min();
  const std::vector<T> special = {T(0), T(-0.0), tiny, -tiny, T(1), -inf, inf, T(-1), T(0), 4 * tiny, T(-0.0), T(2)};
  for (std::size_t k = 1; k <= special.size(); ++k) check_rows<T>({special}, k, "special values");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(top_k)

BOOST_AUTO_TEST_CASE(matches_stable_sort) {
  std::mt19937_64 gen(test_seed());
  BOOST_TEST_CONTEXT("backend " << space_name << ", CAMEX_TEST_SEED=" << test_seed()) {
    check_type<float>(gen);
    check_type<double>(gen);
  }
}

// The compaction step on its own (hand-vectorised for float where AVX-512 is compiled in): every length around
// the vector width, ranges that hold none, some and all of the entries (a digit prefix's and the bracket's), against
// the plain definition.
BOOST_AUTO_TEST_CASE(compaction_marks_and_lists_in_order) {
  std::mt19937_64 gen(test_seed());
  std::uniform_real_distribution<float> uniform(-1, 1);
  using Key = detail::magnitude_key<float>;
  std::vector<float> x(80);
  for (float& v : x) v = uniform(gen);
  x[7] = -x[3];  // equal magnitudes, opposite signs
  x[11] = std::numeric_limits<float>::infinity();
  const Key below = (Key{1} << 23) - 1;  // a prefix of the exponent: |x| in [2^e, 2^(e+1)) inside, larger above
  const std::pair<Key, Key> ranges[] = {{0, below},
                                        {detail::key_of(0.3f) & ~below, (detail::key_of(0.3f) & ~below) | below},
                                        {detail::key_of(0.7f) & ~below, (detail::key_of(0.7f) & ~below) | below},
                                        {Key{0x7f800000}, Key{0x7fffffff}},
                                        {detail::key_of(0.2f), detail::key_of(0.6f)},  // a bracket across exponents
                                        {detail::key_of(0.5f), detail::key_of(0.5f)},
                                        {0, Key{0x7fffffff}}};
  for (const auto& [lo, hi] : ranges)
    for (int len = 0; len <= 70; ++len) {
      std::vector<std::uint8_t> mask(len, 2);
      std::vector<Key> keys(len + 15);
      std::vector<std::uint32_t> indices(len + 15);
      std::uint64_t above = 5;
      const int count =
          detail::mark_and_list(x.data() + 5, len, lo, hi, mask.data(), 1000, keys.data(), indices.data(), &above);
      int expected = 0;
      std::uint64_t expected_above = 5;
      for (int q = 0; q < len; ++q) {
        const Key key = detail::key_of(x[5 + q]);
        if (mask[q] != (key > hi)) BOOST_FAIL("mask at " << q << ", len " << len);
        expected_above += key > hi;
        if (key < lo || key > hi) continue;
        if (expected >= count || keys[expected] != key || indices[expected] != 1000u + q)
          BOOST_FAIL("listed entry " << expected << " (q = " << q << "), len " << len);
        ++expected;
      }
      BOOST_TEST(count == expected, "len " << len << ", range [" << lo << ", " << hi << "]");
      BOOST_TEST(above == expected_above, "len " << len << ", range [" << lo << ", " << hi << "]");
    }
}

// Whether the sample's bracket took each row: the bracket passes alone, then every row's listed flag.
template <class T>
std::vector<int> bracketed(const std::vector<std::vector<T>>& rows, std::size_t k) {
  const std::size_t R = rows.size(), P = rows[0].size();
  const auto values = on_space(rows);
  Matrix<std::uint8_t, Space> keep("keep", R, P);
  const auto workspace = make_workspace<Space>(top_k_workspace_bytes<T, Space>(R, P));
  const detail::SelectChunking chunking(P, detail::brackets_on<Space>);
  WorkspaceCarver<Space> carver("test", workspace);
  const detail::SelectPass<Space, T> pass{values.data(), row_stride(values), keep.data(), row_stride(keep), nullptr,
                                          R, P, chunking, detail::SelectState<Space, T>(carver, R, chunking), Space{}};
  detail::select_start(pass, k);
  detail::select_sample_bracket(pass, k);
  detail::select_mark_bracket(pass, false);
  detail::select_settle_bracket(pass, k);
  const auto listed = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, pass.st.listed);
  return std::vector<int>(listed.data(), listed.data() + R);
}

// The sample's bracket decides how fast a row is selected, never what: a row of distinct magnitudes is bracketed,
// a row whose sampled entries are its largest (the sample misleads) and a row of few magnitudes (its ties at the
// threshold overflow the list) are not, and all three select exactly the stable sort's entries.
BOOST_AUTO_TEST_CASE(sample_bracket_decides_speed_not_result) {
  std::mt19937_64 gen(test_seed());
  BOOST_TEST_CONTEXT("backend " << space_name << ", CAMEX_TEST_SEED=" << test_seed()) {
    const std::size_t P = 300001, k = P / 5;
    auto rows = random_rows<float>(3, P, gen, 0);
    const detail::SelectChunking chunking(P, true);
    BOOST_TEST(chunking.samples > 0u);
    for (std::size_t j = 0; j < chunking.samples; ++j)
      rows[1][detail::sample_position(j, chunking.sample_stride)] = 2.0f + rows[1][j] * 0.5f;
    rows[2] = random_rows<float>(1, P, gen, 3)[0];
    if constexpr (detail::brackets_on<Space>) {
      const auto taken = bracketed(rows, k);
      BOOST_TEST(taken[0] == 1, "distinct magnitudes: bracketed");
      BOOST_TEST(taken[1] == 0, "a misleading sample: not bracketed");
      BOOST_TEST(taken[2] == 0, "ties overflowing the list: not bracketed");
    }
    check_rows(rows, k, "bracketed, misled and overflowing rows");
    check_rows(std::vector<std::vector<double>>(1, std::vector<double>(rows[0].begin(), rows[0].end())), k,
               "a bracketed row of doubles");
  }
}

BOOST_AUTO_TEST_CASE(count_from_density_follows_mergekit) {
  BOOST_TEST(top_k_count("f", 0.2, 10) == 2u);
  BOOST_TEST(top_k_count("f", 0.25, 10) == 2u);  // floor, as mergekit's int(density * numel)
  BOOST_TEST(top_k_count("f", 1.0, 10) == 10u);
  BOOST_TEST(top_k_count("f", 3.0, 10) == 10u);
  require_argument_error([] { top_k_count("f", 0.05, 10); }, "density", {"at least 1/10", "0.05, which keeps none"});
  require_argument_error([] { top_k_count("f", 0.0, 10); }, "density", {"a fraction in (0, 1]", "given 0"});
  require_argument_error([] { top_k_count("f", std::nan(""), 10); }, "density", {"a fraction in (0, 1]"});
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  const char* fn = "camex::top_k_by_magnitude";
  Matrix<float, Space> values("values", 2, 100);
  Kokkos::deep_copy(values, 0.5f);
  Matrix<std::uint8_t, Space> keep("keep", 2, 100);
  const auto workspace = make_workspace<Space>(top_k_workspace_bytes<float, Space>(2, 100));
  require_argument_error([&] { top_k_by_magnitude(Space{}, values, 0, keep, workspace); }, "k", {fn, "[1, 100]", "given 0"});
  require_argument_error([&] { top_k_by_magnitude(Space{}, values, 101, keep, workspace); }, "k", {"given 101"});
  require_argument_error([&] { top_k_by_magnitude(Space{}, values, 5, Matrix<std::uint8_t, Space>("k", 2, 99), workspace); },
                         "keep", {"[2, 100]", "given [2, 99]"});
  require_argument_error([&] { top_k_by_magnitude(Space{}, Matrix<float, Space>("v", 0, 100), 5, keep, workspace); },
                         "values", {"non-empty"});
  require_argument_error(
      [&] { top_k_by_magnitude(Space{}, values, 5, keep, make_workspace<Space>(top_k_workspace_bytes<float, Space>(2, 100) - 1)); },
      "workspace", {"bytes (ask the *_workspace_bytes query)"});
  Kokkos::deep_copy(Kokkos::subview(values, 1, 37), std::nanf(""));
  require_argument_error([&] { top_k_by_magnitude(Space{}, values, 5, keep, workspace); }, "values",
                         {"no NaN", "1 NaN values, the first at values(1, 37)"});
}

BOOST_AUTO_TEST_SUITE_END()
