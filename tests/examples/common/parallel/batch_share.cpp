// Batch shares: P processes cover a batch of B items exactly once, in rank order, as evenly as B allows; too few
// items, or a rank outside the job, is an error naming the argument.
#include <boost/test/unit_test.hpp>

#include "common/parallel/batch_share.hpp"

#include <string>

using namespace camex::examples;

BOOST_AUTO_TEST_CASE(shares_cover_the_batch_once_in_rank_order) {
  for (std::size_t whole = 1; whole <= 13; ++whole)
    for (int ranks = 1; ranks <= static_cast<int>(whole) && ranks <= 5; ++ranks) {
      std::size_t next = 0;
      double weights = 0;
      for (int r = 0; r < ranks; ++r) {
        const BatchShare s = batch_share(whole, r, ranks);
        BOOST_TEST(s.first == next);
        BOOST_TEST(s.whole == whole);
        BOOST_TEST((s.count == whole / ranks || s.count == whole / ranks + 1));
        next += s.count;
        weights += s.weight();
      }
      BOOST_TEST(next == whole);
      BOOST_TEST(weights == 1.0, boost::test_tools::tolerance(1e-15));
    }
  const BatchShare last = batch_share(7, 2, 3);  // 3, 2, 2
  BOOST_TEST(last.first == 5u);
  BOOST_TEST(last.count == 2u);
  const BatchShare alone = whole_batch(9);
  BOOST_TEST((alone.first == 0 && alone.count == 9 && alone.weight() == 1.0));
}

BOOST_AUTO_TEST_CASE(too_small_a_batch_or_a_stray_rank_is_an_error) {
  const auto message = [](auto&& call) {
    try {
      call();
    } catch (const camex::argument_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string few = message([] { batch_share(2, 0, 3); });
  BOOST_TEST(few.find("whole") != std::string::npos, few);
  BOOST_TEST(few.find("each of the 3 processes") != std::string::npos, few);
  const std::string stray = message([] { batch_share(8, 3, 3); });
  BOOST_TEST(stray.find("rank") != std::string::npos, stray);
  BOOST_TEST(stray.find("[0, 3)") != std::string::npos, stray);
}
