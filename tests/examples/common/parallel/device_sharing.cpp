// The check before a NCCL communicator is made: the ranks' device identifiers compared, the first two ranks in rank
// order that share a GPU found (none where every identifier differs, or for one rank), and the message naming them
// and what to pass instead.
#include <boost/test/unit_test.hpp>

#include "common/parallel/device_sharing.hpp"

#include <cstddef>
#include <string>
#include <vector>

using namespace camex::examples;

namespace {

/// Each rank's identifier: `bytes` bytes, all equal to its entry of `devices`.
std::vector<std::byte> identifiers(const std::vector<int>& devices, std::size_t bytes) {
  std::vector<std::byte> ids;
  for (const int d : devices) ids.insert(ids.end(), bytes, static_cast<std::byte>(d));
  return ids;
}

}  // namespace

BOOST_AUTO_TEST_CASE(the_first_two_ranks_on_one_gpu_are_found) {
  BOOST_TEST(!ranks_sharing_a_device(identifiers({0, 1, 2, 3}, 16), 16).has_value());
  BOOST_TEST(!ranks_sharing_a_device(identifiers({5}, 16), 16).has_value());
  const auto shared = ranks_sharing_a_device(identifiers({0, 1, 2, 1, 2}, 16), 16);
  BOOST_TEST_REQUIRE(shared.has_value());
  BOOST_TEST(shared->first == 1);
  BOOST_TEST(shared->second == 3);
  // Identifiers that differ in their last byte only are different devices.
  auto ids = identifiers({0, 0}, 16);
  ids[31] = std::byte{9};
  BOOST_TEST(!ranks_sharing_a_device(ids, 16).has_value());
}

BOOST_AUTO_TEST_CASE(the_message_names_the_ranks_and_what_to_pass) {
  const std::string message = shared_device_message(1, 3);
  for (const char* part : {"ranks 1 and 3 run on the same GPU", "--kokkos-map-device-id-by=mpi_rank", "--kokkos-num-devices",
                           "CUDA_VISIBLE_DEVICES"})
    BOOST_TEST(message.find(part) != std::string::npos, message);
}
