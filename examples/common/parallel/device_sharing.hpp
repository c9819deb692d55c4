#pragma once
// NCCL takes one GPU per rank, and a communicator whose ranks share one fails with a terse "invalid usage". Kokkos
// puts every rank of a job on device 0 unless told otherwise, so the ranks compare their devices' identifiers first
// and a shared GPU is refused with what to pass instead (common/parallel/nccl_communicator.hpp).

#include <cstddef>
#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <utility>

namespace camex::examples {

/// The first two ranks, in rank order, whose device identifiers are equal: `ids` holds each rank's, `id_bytes` bytes
/// each, rank after rank.
inline std::optional<std::pair<int, int>> ranks_sharing_a_device(std::span<const std::byte> ids, std::size_t id_bytes) {
  const std::size_t ranks = id_bytes == 0 ? 0 : ids.size() / id_bytes;
  const auto id = [&](std::size_t r) { return ids.subspan(r * id_bytes, id_bytes); };
  for (std::size_t b = 1; b < ranks; ++b)
    for (std::size_t a = 0; a < b; ++a)
      if (std::equal(id(a).begin(), id(a).end(), id(b).begin())) return std::pair{static_cast<int>(a), static_cast<int>(b)};
  return std::nullopt;
}

/// What a user reads when ranks `a` and `b` share a GPU.
inline std::string shared_device_message(int a, int b) {
  return "ranks " + std::to_string(a) + " and " + std::to_string(b) +
         " run on the same GPU, and NCCL takes one GPU per rank: give each rank its own (Kokkos 4: "
         "--kokkos-map-device-id-by=mpi_rank; Kokkos 3: --kokkos-num-devices=<GPUs per node>; or CUDA_VISIBLE_DEVICES "
         "set per rank), or start no more ranks than there are GPUs";
}

}  // namespace camex::examples
