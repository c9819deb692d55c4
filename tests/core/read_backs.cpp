// The host's reads of one step taken together (core/read_backs.hpp): queued values of every size come back as the
// kernels left them, more than one gather's worth at once, and settle in queue order; losses are summed; a settle
// that throws discards the values after it; discard tells every owner; with_step_read_backs reads once where the
// step carries no batch and leaves a caller's batch to its owner; bad arguments are refused.
#include "camex/core/read_backs.hpp"
#include "camex/core/step.hpp"

#include "testing.hpp"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

/// What a settle function saw: which owner, and the value's bytes (none where discarded).
struct Seen {
  int owner;
  std::vector<unsigned char> value;
  bool discarded;
};

struct Owner {
  int id;
  std::size_t bytes;
  std::vector<Seen>* log;
  bool throws = false;

  static void settle(void* self, const unsigned char* value) {
    auto& o = *static_cast<Owner*>(self);
    o.log->push_back({o.id, value ? std::vector<unsigned char>(value, value + o.bytes) : std::vector<unsigned char>{},
                      value == nullptr});
    if (value != nullptr && o.throws) throw std::runtime_error("owner " + std::to_string(o.id) + " refuses its value");
  }
};

/// byte b of cell c holds (31 c + 7 b) mod 251, written by a kernel on Space.
Kokkos::View<unsigned char**, Kokkos::LayoutRight, typename Space::memory_space> written_cells(std::size_t cells) {
  Kokkos::View<unsigned char**, Kokkos::LayoutRight, typename Space::memory_space> v("cells", cells, StepReadBacks::max_value_bytes);
  Kokkos::parallel_for(Kokkos::RangePolicy<Space>(0, cells * StepReadBacks::max_value_bytes), KOKKOS_LAMBDA(std::size_t k) {
    const std::size_t c = k / StepReadBacks::max_value_bytes, b = k % StepReadBacks::max_value_bytes;
    v(c, b) = static_cast<unsigned char>((31 * c + 7 * b) % 251);
  });
  Kokkos::fence();
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(queued_values_come_back_and_settle_in_order) {
  // 37 cells: more than two gathers of 16, of sizes 1 to 32 bytes, so offsets are padded.
  const std::size_t cells = 37;
  const auto v = written_cells(cells);
  std::vector<Seen> log;
  std::vector<Owner> owners;
  for (std::size_t c = 0; c < cells; ++c) owners.push_back({static_cast<int>(c), 1 + (c * 5) % 32, &log});
  ReadBackBatch<Space> batch;
  for (int round = 0; round < 2; ++round) {  // the second round reuses the buffers the first grew
    log.clear();
    for (std::size_t c = 0; c < cells; ++c) batch.defer(&v(c, 0), owners[c].bytes, &Owner::settle, &owners[c]);
    BOOST_TEST(batch.pending() == cells);
    batch.read(Space{});
    BOOST_TEST(batch.pending() == 0u);
    BOOST_TEST_REQUIRE(log.size() == cells);
    for (std::size_t c = 0; c < cells; ++c) {
      BOOST_TEST(log[c].owner == static_cast<int>(c), "settled in queue order");
      BOOST_TEST(!log[c].discarded);
      BOOST_TEST_REQUIRE(log[c].value.size() == owners[c].bytes);
      for (std::size_t b = 0; b < owners[c].bytes; ++b)
        BOOST_TEST(log[c].value[b] == (31 * c + 7 * b) % 251, "cell " << c << " byte " << b);
    }
  }
}

BOOST_AUTO_TEST_CASE(losses_are_summed_and_an_empty_read_settles_nothing) {
  Kokkos::View<double*, typename Space::memory_space> losses("losses", 3);
  Kokkos::parallel_for(Kokkos::RangePolicy<Space>(0, 3), KOKKOS_LAMBDA(std::size_t i) { losses(i) = 0.25 * (i + 1); });
  ReadBackBatch<Space> batch;
  for (std::size_t i = 0; i < 3; ++i) batch.defer_loss(losses.data() + i);
  batch.read(Space{});
  BOOST_TEST(batch.loss() == 1.5);  // 0.25 + 0.5 + 0.75, exact in binary
  batch.read(Space{});
  BOOST_TEST(batch.loss() == 0.0, "a read with no loss queued reports none");
}

BOOST_AUTO_TEST_CASE(a_settle_that_throws_discards_the_values_after_it) {
  const auto v = written_cells(4);
  std::vector<Seen> log;
  std::vector<Owner> owners{{0, 8, &log}, {1, 8, &log, true}, {2, 8, &log}, {3, 8, &log}};
  ReadBackBatch<Space> batch;
  for (auto& o : owners) batch.defer(&v(o.id, 0), o.bytes, &Owner::settle, &o);
  BOOST_CHECK_THROW(batch.read(Space{}), std::runtime_error);
  BOOST_TEST(batch.pending() == 0u);
  BOOST_TEST_REQUIRE(log.size() == 4u);
  BOOST_TEST(!log[0].discarded);
  BOOST_TEST(!log[1].discarded);
  BOOST_TEST(log[2].discarded);
  BOOST_TEST(log[3].discarded);

  log.clear();
  batch.defer(&v(2, 0), 8, &Owner::settle, &owners[2]);
  batch.read(Space{});
  BOOST_TEST_REQUIRE(log.size() == 1u, "the next read settles only what was queued since");
  BOOST_TEST(log[0].owner == 2);

  log.clear();
  batch.defer(&v(0, 0), 8, &Owner::settle, &owners[0]);
  batch.defer(&v(3, 0), 8, &Owner::settle, &owners[3]);
  batch.discard();
  BOOST_TEST(batch.pending() == 0u);
  BOOST_TEST_REQUIRE(log.size() == 2u);
  BOOST_TEST((log[0].discarded && log[1].discarded), "discard tells every owner");
}

BOOST_AUTO_TEST_CASE(a_step_reads_once_unless_its_caller_holds_the_batch) {
  Kokkos::View<double*, typename Space::memory_space> loss("loss", 1);
  Kokkos::deep_copy(loss, 0.125);
  ReadBackBatch<Space> own, callers;
  const auto queue_loss = [&](const StepContext& step) {
    BOOST_TEST_REQUIRE(step.read_backs != nullptr);
    step.read_backs->defer_loss(loss.data());
    return 2.0;
  };
  BOOST_TEST(with_step_read_backs(Space{}, StepContext{.seed = 1}, own, queue_loss) == 2.125);
  BOOST_TEST(own.pending() == 0u);

  const StepContext carried{.seed = 1, .read_backs = &callers};
  BOOST_TEST(with_step_read_backs(Space{}, carried, own, queue_loss) == 2.0, "the loss stays on the caller's batch");
  BOOST_TEST(own.pending() == 0u);
  BOOST_TEST(callers.pending() == 1u);
  callers.read(Space{});
  BOOST_TEST(callers.loss() == 0.125);

  const auto v = written_cells(1);
  std::vector<Seen> log;
  Owner owner{0, 4, &log};
  BOOST_CHECK_THROW(with_step_read_backs(Space{}, StepContext{}, own,
                                         [&](const StepContext& step) -> double {
                                           step.read_backs->defer(v.data(), 4, &Owner::settle, &owner);
                                           throw std::runtime_error("the step fails after queuing");
                                         }),
                    std::runtime_error);
  BOOST_TEST(own.pending() == 0u);
  BOOST_TEST_REQUIRE(log.size() == 1u);
  BOOST_TEST(log[0].discarded, "an abandoned step's queued values are discarded");
}

BOOST_AUTO_TEST_CASE(bad_arguments_are_refused) {
  const auto v = written_cells(1);
  std::vector<Seen> log;
  Owner owner{0, 8, &log};
  ReadBackBatch<Space> batch;
  require_argument_error([&] { batch.defer(nullptr, 8, &Owner::settle, &owner); }, "cell", {"a null pointer"});
  require_argument_error([&] { batch.defer(v.data(), 0, &Owner::settle, &owner); }, "bytes", {"1 to 32 bytes", "0"});
  require_argument_error([&] { batch.defer(v.data(), 33, &Owner::settle, &owner); }, "bytes", {"1 to 32 bytes", "33"});
  require_argument_error([&] { batch.defer(v.data(), 8, nullptr, &owner); }, "settle", {"a null pointer"});
  BOOST_TEST(batch.pending() == 0u);
}
