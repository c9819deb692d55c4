// The ranks' shards of the gradients and the optimiser: cut only where allowed (AdamW's norm chunks), as equal as
// the cuts allow, possibly empty when the cuts are fewer than the ranks; bad cuts are errors naming them.
#include <boost/test/unit_test.hpp>

#include "common/parallel/shard_bounds.hpp"
#include "common/train/adamw.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

using namespace camex::examples;
using Bounds = std::vector<std::size_t>;

BOOST_AUTO_TEST_CASE(shards_end_on_the_nearest_allowed_cut) {
  const Bounds every{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  BOOST_TEST((shard_bounds(every, 1) == Bounds{0, 10}));
  BOOST_TEST((shard_bounds(every, 3) == Bounds{0, 3, 6, 10}));
  BOOST_TEST((shard_bounds({0, 4, 5, 100}, 2) == Bounds{0, 5, 100}));   // 50 is nearer 5 than 100
  BOOST_TEST((shard_bounds({0, 40, 60, 100}, 2) == Bounds{0, 40, 100}));  // a tie goes to the lower cut
  BOOST_TEST((shard_bounds({0, 7}, 3) == Bounds{0, 0, 7, 7}));           // fewer cuts than ranks: empty shards
  // A model's tensors cut into norm chunks: every shard within one chunk of an equal share.
  const auto cuts = norm_chunk_bounds({50000, 3, 70000, 100, 20000}, 4096);
  const auto bounds = shard_bounds(cuts, 4);
  for (std::size_t r = 0; r < 4; ++r) {
    BOOST_TEST(std::count(cuts.begin(), cuts.end(), bounds[r]) == 1);
    const double share = static_cast<double>(bounds[r + 1] - bounds[r]), equal = cuts.back() / 4.0;
    BOOST_TEST(std::abs(share - equal) <= 4096.0, "shard " << r << ": " << share << " entries");
  }
}

BOOST_AUTO_TEST_CASE(bad_cuts_and_rank_counts_are_refused) {
  const auto refused = [](const Bounds& cuts, int ranks, const std::string& argument, const std::string& fragment) {
    try {
      shard_bounds(cuts, ranks);
      BOOST_FAIL("no error for " << argument);
    } catch (const camex::argument_error& e) {
      BOOST_TEST(e.argument() == argument);
      BOOST_TEST(std::string(e.what()).find(fragment) != std::string::npos, e.what());
    }
  };
  refused({0, 5}, 0, "ranks", "given 0");
  refused({}, 2, "cuts", "given none");
  refused({3, 5}, 2, "cuts", "given a first of 3");
  refused({0, 5, 5}, 2, "cuts", "given 5 then 5 at 2");
}
