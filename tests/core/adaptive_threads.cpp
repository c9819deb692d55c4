// camex::AdaptiveThreads: the width decisions of ThreadWidthChooser on made-up step times (alone it never leaves all
// the threads; beside another process it takes one thread fewer where that is faster and tries all of them again at
// doubling intervals; where one fewer is slower it stays; fixed choices never change), and steps run on the test's
// space at either width: a partition of one thread fewer on OpenMP, with range, team and reduction kernels all
// complete in it, and an exception thrown inside reaching the caller.
#include <boost/test/unit_test.hpp>

#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "camex/core/adaptive_threads.hpp"
#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

template <class S>
constexpr bool is_openmp() {
#if defined(KOKKOS_ENABLE_OPENMP)
  return std::is_same_v<S, Kokkos::OpenMP>;
#else
  return false;
#endif
}

/// How many OpenMP threads took part in a loop of n iterations on `space` (1 on other spaces).
template <class S>
int distinct_threads(const S& space, int n) {
  if constexpr (is_openmp<S>()) {
#if defined(KOKKOS_ENABLE_OPENMP)
    std::vector<int> seen(static_cast<std::size_t>(omp_get_max_threads()) + 64, 0);
    int* flags = seen.data();
    Kokkos::parallel_for("which threads", Kokkos::RangePolicy<S>(space, 0, n), [=](int) { flags[omp_get_thread_num()] = 1; });
    int count = 0;
    for (const int f : seen) count += f;
    return count;
#endif
  }
  return 1;
}

/// Feeds `steps` steps to the chooser: each takes `all` or `fewer` seconds by its width and, on all threads,
/// waits `waited` seconds for a core. Returns the width of each step (true: one thread fewer).
std::vector<bool> feed(ThreadWidthChooser& chooser, int steps, double all, double fewer, double waited) {
  std::vector<bool> widths;
  for (int i = 0; i < steps; ++i) {
    const bool narrow = chooser.narrow_next();
    widths.push_back(narrow);
    chooser.record(narrow ? fewer : all, narrow ? 0.0 : waited);
  }
  return widths;
}

std::vector<int> narrow_steps(const std::vector<bool>& widths, int offset = 0) {
  std::vector<int> at;
  for (std::size_t i = 0; i < widths.size(); ++i)
    if (widths[i]) at.push_back(static_cast<int>(i) + offset);
  return at;
}

}  // namespace

BOOST_AUTO_TEST_CASE(alone_all_threads_are_kept_and_nothing_is_tried) {
  ThreadWidthChooser chooser;
  const auto widths = feed(chooser, 2000, 0.10, 0.19, 0.0);
  BOOST_TEST(narrow_steps(widths).empty());
  BOOST_TEST(chooser.trials() == 0u);
}

BOOST_AUTO_TEST_CASE(beside_another_process_one_thread_fewer_is_taken_and_all_are_tried_at_doubling_intervals) {
  const AdaptiveThreadsOptions o;  // settle 3, window 4, trials of 2 steps, first interval 16
  ThreadWidthChooser chooser(o);
  // All threads: 0.30 s a step, 0.2 s of it waiting for a core; one fewer: 0.19 s.
  const auto widths = feed(chooser, 200, 0.30, 0.19, 0.2);
  // Steps 0-2 settle, 3-6 fill the window, 7-8 try one thread fewer, which is faster: kept from step 7 on, but
  // for the trials of all the threads (2 steps each) after 16, then 32, 64 steps.
  std::vector<bool> expected(200, false);
  for (int s = 7; s < 200; ++s) expected[s] = true;
  int trial = 9 + 16;
  for (int interval = 32; trial < 200; trial += 2 + interval, interval *= 2)
    for (int s = trial; s < trial + 2 && s < 200; ++s) expected[s] = false;
  BOOST_TEST(widths == expected, boost::test_tools::per_element());
  BOOST_TEST(chooser.narrow());
  BOOST_TEST(chooser.switches() == 1u);

  // The other process leaves: at its next trial, all the threads are faster again and stay.
  const auto after = feed(chooser, 400, 0.10, 0.19, 0.0);
  BOOST_TEST(!chooser.narrow());
  BOOST_TEST(chooser.switches() == 2u);
  const auto last_narrow = narrow_steps(after);
  BOOST_TEST_REQUIRE(!last_narrow.empty());
  BOOST_TEST(last_narrow.back() < 200, "one thread fewer stops once all the threads are tried and are faster");
}

BOOST_AUTO_TEST_CASE(where_one_thread_fewer_is_slower_all_are_kept_and_trials_thin_out) {
  // A many-core machine with one busy core: waiting shows, but one thread fewer is slower.
  ThreadWidthChooser chooser;
  const auto widths = feed(chooser, 1000, 0.10, 0.12, 0.02);
  BOOST_TEST(!chooser.narrow());
  BOOST_TEST(chooser.switches() == 0u);
  const auto tried = narrow_steps(widths);
  BOOST_TEST_REQUIRE(tried.size() >= 4u);
  BOOST_TEST(tried.size() <= 14u, "trials of 2 steps at doubling intervals: " << tried.size() << " steps in 1000");
  for (std::size_t i = 3; i + 2 < tried.size(); i += 2)
    BOOST_TEST(tried[i + 2] - tried[i] > tried[i] - tried[i - 2], "the gaps between trials grow");
}

BOOST_AUTO_TEST_CASE(fixed_choices_never_change) {
  ThreadWidthChooser all({.choice = HostThreads::all}), fewer({.choice = HostThreads::all_but_one});
  BOOST_TEST(narrow_steps(feed(all, 300, 0.30, 0.10, 0.2)).empty());
  BOOST_TEST(narrow_steps(feed(fewer, 300, 0.10, 0.30, 0.0)).size() == 300u);
  BOOST_TEST(all.trials() + fewer.trials() == 0u);
}

BOOST_AUTO_TEST_CASE(bad_options_are_refused) {
  const auto refused = [](AdaptiveThreadsOptions o, const std::string& argument, std::initializer_list<std::string> fragments) {
    require_argument_error([&] { ThreadWidthChooser chooser(o); }, argument, fragments);
  };
  refused({.probe_steps = 0}, "options.probe_steps", {"at least 1 step", "given 0"});
  refused({.window = 0}, "options.window", {"1 to 16 steps", "given 0"});
  refused({.window = 17}, "options.window", {"1 to 16 steps", "given 17"});
  refused({.first_interval = 0}, "options.first_interval", {"at least 1 step", "given 0"});
  refused({.first_interval = 32, .longest_interval = 16}, "options.longest_interval",
          {"at least first_interval = 32", "given 16"});
  refused({.gain = 1}, "options.gain", {"a fraction in [0, 1)", "given 1"});
  refused({.gain = std::numeric_limits<double>::quiet_NaN()}, "options.gain", {"a fraction in [0, 1)", "given nan"});
  refused({.waiting = -0.5}, "options.waiting", {"a finite fraction >= 0", "given -0.5"});
  refused({.waiting = std::numeric_limits<double>::infinity()}, "options.waiting", {"a finite fraction >= 0", "given inf"});
  require_argument_error([] { AdaptiveThreads<Space> runner({.window = 0}); }, "options.window", {"given 0"});
}

BOOST_AUTO_TEST_CASE(steps_run_completely_at_either_width) {
  CAMEX_TEST_CONTEXT() {
    const int threads = static_cast<int>(Space().concurrency());
    for (const HostThreads choice : {HostThreads::all, HostThreads::all_but_one}) {
      AdaptiveThreads<Space> runner({.choice = choice});
      BOOST_TEST(runner.adapts() == (is_openmp<Space>() && threads > 1));
      constexpr int n = 1000;
      Kokkos::View<int*, Space::memory_space> hits("hits", n);
      double sum = 0;
      int threads_seen = 0;
      runner.run(Space(), [&](const Space& on) {
        threads_seen = distinct_threads(on, n);
        Kokkos::parallel_for("range", Kokkos::RangePolicy<Space>(on, 0, n), KOKKOS_LAMBDA(int i) { hits(i) += 1; });
        using Team = Kokkos::TeamPolicy<Space>;
        Kokkos::parallel_for("teams", Team(on, n, 1), KOKKOS_LAMBDA(const Team::member_type& m) { hits(m.league_rank()) += 2; });
        Kokkos::parallel_reduce("sum", Kokkos::RangePolicy<Space>(on, 0, n), KOKKOS_LAMBDA(int i, double& a) { a += i; }, sum);
      });
      const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), hits);
      int complete = 0;
      for (int i = 0; i < n; ++i) complete += host(i) == 3;
      BOOST_TEST(complete == n);
      BOOST_TEST(sum == n * (n - 1) / 2.0);
      const bool fewer = runner.adapts() && choice == HostThreads::all_but_one;
      if constexpr (is_openmp<Space>()) BOOST_TEST(threads_seen == (fewer ? threads - 1 : threads));
    }
    AdaptiveThreads<Space> runner({.choice = HostThreads::all_but_one});
    BOOST_CHECK_THROW(runner.run(Space(), [](const Space&) { throw std::runtime_error("inside the step"); }),
                      std::runtime_error);
  }
}
