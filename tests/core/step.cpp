// Draw streams (core/step.hpp): substream offsets a step's stream and keeps the rest; DrawStreams hands out
// consecutive, non-overlapping ranges in order; random_streams_of reads a component's declaration, 1 without one.
#include "camex/core/step.hpp"

#include "testing.hpp"

using namespace camex;

namespace {
struct Declares {
  static constexpr std::uint32_t random_streams = 4;
};
struct DeclaresNone {};
static_assert(random_streams_of<Declares> == 4);
static_assert(random_streams_of<DeclaresNone> == 1);
}  // namespace

BOOST_AUTO_TEST_CASE(substream_offsets_the_stream_only) {
  const StepContext step{.seed = 9, .step = 4, .stream = 10, .training = false};
  const StepContext part = step.substream(3);
  BOOST_TEST(part.stream == 13u);
  BOOST_TEST(part.seed == 9u);
  BOOST_TEST(part.step == 4u);
  BOOST_TEST(part.training == false);
  BOOST_TEST(step.substream(0).stream == 10u);
}

BOOST_AUTO_TEST_CASE(draw_streams_hand_out_consecutive_ranges) {
  DrawStreams streams(5);
  BOOST_TEST(streams.take(3) == 5u);
  BOOST_TEST(streams.take(0) == 8u);
  BOOST_TEST(streams.take(6) == 8u);
  BOOST_TEST(streams.take(1) == 14u);
  BOOST_TEST(streams.end() == 15u);
  BOOST_TEST(DrawStreams().take(2) == 0u);
}
