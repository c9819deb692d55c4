#pragma once
// A model's backward groups (examples/common/train/backward_groups.hpp) checked while its backward runs: each group's
// gradients, copied when the backward says the group is final, equal the gradients at the backward's end bit for bit
// (nothing later adds to them, so a data-parallel run may send them then); the groups are told in order, once each,
// and hold every tensor once.
#include <boost/test/unit_test.hpp>

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <vector>

namespace camex::testing {

/// Runs `model.backward(space, ready)` with the check above.
template <class Model, class Space>
void backward_checking_groups(Model& model, const Space& space) {
  const auto tensors = model.tensors();
  const auto groups = model.backward_groups();
  std::vector<std::size_t> held(tensors.size(), 0);
  for (const auto& group : groups)
    for (const std::size_t i : group) {
      BOOST_TEST_REQUIRE(i < tensors.size());
      ++held[i];
    }
  for (std::size_t i = 0; i < tensors.size(); ++i) BOOST_TEST(held[i] == 1u, tensors[i].name << " is in " << held[i] << " groups");
  using Copy = typename decltype(Kokkos::create_mirror_view(tensors[0].flat.gradient))::non_const_type;
  std::vector<Copy> when_ready(tensors.size());
  std::size_t told = 0;
  model.backward(space, [&](std::size_t group) {
    BOOST_TEST_REQUIRE(group == told, "group " << group << " told when group " << told << " was next");
    ++told;
    space.fence();
    for (const std::size_t i : groups[group])
      when_ready[i] = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, tensors[i].flat.gradient);
  });
  BOOST_TEST(told == groups.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (when_ready[i].extent(0) != tensors[i].flat.gradient.extent(0)) continue;  // reported above
    const auto final_gradient = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, tensors[i].flat.gradient);
    std::size_t changed = 0;
    for (std::size_t k = 0; k < final_gradient.extent(0); ++k) changed += final_gradient(k) != when_ready[i](k) ? 1 : 0;
    BOOST_TEST(changed == 0u, tensors[i].name << ": " << changed << " gradient entries changed after its group was final");
  }
}

}  // namespace camex::testing
