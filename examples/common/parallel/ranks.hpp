#pragma once
// The processes of one data-parallel run: one process alone, or the ranks of the MPI job it was started in
// (mpirun -np P). MPI only moves bytes here; every sum across ranks is taken by camex in rank order, so a run on P
// processes has the same bits every time, whatever algorithms the MPI library picks for its collectives.
//
// A process joins MPI only where a launcher started it (Open MPI's and MPICH's set the variables launched_ranks
// reads), so a trainer started on its own never touches MPI. A build without MPI
// (CAMEX_EXAMPLES_WITH_MPI undefined: CMake found no MPI) runs one process and refuses to be one of several.

#if CAMEX_EXAMPLES_WITH_MPI
#include <mpi.h>
#endif

#include <camex/core/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/parallel/batch_share.hpp"

namespace camex::examples {

/// An MPI call that failed, with MPI's own description.
class mpi_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// How many processes the launcher that started this one (Open MPI's mpirun, MPICH's mpiexec) started: 1 where none.
inline int launched_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* value = std::getenv(name)) return std::max(1, std::atoi(value));
  return 1;
}

class Ranks {
 public:
  /// Joins the MPI job this process was launched in, or stands alone.
  Ranks(int& argc, char**& argv) {
    const int launched = launched_ranks();
#if CAMEX_EXAMPLES_WITH_MPI
    if (launched > 1 || std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr) {
      int provided = 0;
      // The OpenMP threads of a step never call MPI: only the thread that runs the loop does.
      check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      joined_ = true;
      check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
      check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
#else
    (void)argc;
    (void)argv;
    if (launched > 1)
      throw std::runtime_error("started as one of " + std::to_string(launched) +
                               " processes, but this build has no MPI: install Open MPI (scripts/setup does: Debian's "
                               "libopenmpi-dev and openmpi-bin) and configure the build again");
#endif
  }
  ~Ranks() {
#if CAMEX_EXAMPLES_WITH_MPI
    if (joined_) MPI_Finalize();
#endif
  }
  Ranks(const Ranks&) = delete;
  Ranks& operator=(const Ranks&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  /// The rank that prints and writes files.
  bool leader() const { return rank_ == 0; }
  BatchShare share(std::size_t whole) const { return batch_share(whole, rank_, size_); }

  /// values <- sum over ranks r of weight_r * values_r, taken in rank order in double, on every rank.
  void weighted_sum(std::span<double> values, double weight) const {
    if (size_ == 1) {
      for (double& v : values) v *= weight;
      return;
    }
#if CAMEX_EXAMPLES_WITH_MPI
    const std::size_t width = values.size() + 1;
    std::vector<double> mine(width), all(width * static_cast<std::size_t>(size_));
    mine[0] = weight;
    std::copy(values.begin(), values.end(), mine.begin() + 1);
    check(MPI_Allgather(mine.data(), static_cast<int>(width), MPI_DOUBLE, all.data(), static_cast<int>(width), MPI_DOUBLE,
                        MPI_COMM_WORLD),
          "MPI_Allgather");
    for (std::size_t k = 0; k < values.size(); ++k) {
      double sum = 0;
      for (std::size_t r = 0; r < static_cast<std::size_t>(size_); ++r) sum += all[r * width] * all[r * width + 1 + k];
      values[k] = sum;
    }
#endif
  }

  /// The largest of every rank's `value`, on every rank (a decision all ranks must take alike).
  std::uint64_t max(std::uint64_t value) const {
#if CAMEX_EXAMPLES_WITH_MPI
    if (size_ > 1) check(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
    return value;
  }

  /// The sum of every rank's `value`, on every rank.
  std::uint64_t sum(std::uint64_t value) const {
#if CAMEX_EXAMPLES_WITH_MPI
    if (size_ > 1) check(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
    return value;
  }

  /// Every rank's `mine` (the same length on each), in rank order, on every rank.
  std::vector<std::byte> all_gather_bytes(std::span<const std::byte> mine) const {
    std::vector<std::byte> all(mine.size() * static_cast<std::size_t>(size_));
#if CAMEX_EXAMPLES_WITH_MPI
    if (size_ > 1) {
      const int length = static_cast<int>(mine.size());
      check(MPI_Allgather(mine.data(), length, MPI_BYTE, all.data(), length, MPI_BYTE, MPI_COMM_WORLD), "MPI_Allgather");
      return all;
    }
#endif
    std::copy(mine.begin(), mine.end(), all.begin());
    return all;
  }

  /// Rank 0's `bytes` onto every rank.
  void broadcast_from_leader(std::span<std::byte> bytes) const {
#if CAMEX_EXAMPLES_WITH_MPI
    if (size_ > 1)
      check(MPI_Bcast(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
#else
    static_cast<void>(bytes);
#endif
  }

  /// Returns on every rank once every rank has called it.
  void barrier() const {
#if CAMEX_EXAMPLES_WITH_MPI
    if (size_ > 1) check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
  }

  /// Runs `work` on rank 0, then on the others (work that fills a cache they then read, such as training the
  /// tokenizer, is done once).
  template <class Work>
  void leader_first(Work&& work) const {
    if (leader()) work();
    barrier();
    if (!leader()) work();
  }

  /// Ends every rank of the job (a rank that met an error alone would leave the others waiting in a collective).
  [[noreturn]] void abort(int code) const {
    std::fflush(stdout);
    std::fflush(stderr);
#if CAMEX_EXAMPLES_WITH_MPI
    if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::exit(code);
  }

#if CAMEX_EXAMPLES_WITH_MPI
  static void check(int code, const char* call) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw mpi_error(std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(length)));
  }
#endif

 private:
  int rank_ = 0, size_ = 1;
  bool joined_ = false;
};

}  // namespace camex::examples
