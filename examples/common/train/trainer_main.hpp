#pragma once
// The main() of every trainer: join the MPI job the process was launched in (or stand alone), read the options,
// start Kokkos, run, and turn what went wrong into a message and an exit status: 2 a usage error, 3 a diverged
// run, 1 any other error. In a job of several processes only rank 0 prints (the others' standard output is
// discarded; their errors still reach standard error, prefixed with the rank), and a rank that fails ends the
// whole job (MPI_Abort), since the others would wait for it in the next collective.

#include <Kokkos_Core.hpp>

#include <cstdio>
#include <exception>
#include <optional>
#include <string>

#include "common/parallel/ranks.hpp"
#include "common/train/loop.hpp"

namespace camex::examples {

/// `run(config, ranks)` for the trainer `name`, whose options `parse(argc, argv, config)` reads (false: --help
/// was answered).
template <class Config, class Parse, class Run>
int trainer_main(const char* name, int argc, char** argv, Config config, Parse parse, Run run) {
  std::optional<Ranks> ranks;
  try {
    ranks.emplace(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return 1;
  }
  const std::string who = ranks->size() > 1 ? std::string(name) + " (rank " + std::to_string(ranks->rank()) + ")" : name;
  try {
    if (!parse(argc, argv, config)) return 0;
  } catch (const std::exception& e) {
    // Every rank reads the same options and fails alike: one message is enough.
    if (ranks->leader()) std::fprintf(stderr, "%s: %s\n(%s --help lists the options)\n", name, e.what(), name);
    return 2;
  }
  if (config.optimiser.batch < static_cast<std::size_t>(ranks->size())) {
    if (ranks->leader())
      std::fprintf(stderr, "%s: option --batch: expected at least one item for each of the %d processes, given %zu\n", name,
                   ranks->size(), config.optimiser.batch);
    return 2;
  }
  if (!ranks->leader() && std::freopen("/dev/null", "w", stdout) == nullptr) {
    std::fprintf(stderr, "%s: error: cannot discard this rank's standard output\n", who.c_str());
    ranks->abort(1);
  }
  int status = 0;
  {
    Kokkos::ScopeGuard kokkos(argc, argv);
    try {
      status = run(config, *ranks);
    } catch (const training_diverged& e) {
      std::fprintf(stderr, "%s: %s\n", who.c_str(), e.what());
      status = 3;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: error: %s\n", who.c_str(), e.what());
      status = 1;
    }
    if (status != 0 && status != 128 + SIGINT && status != 128 + SIGTERM && ranks->size() > 1) ranks->abort(status);
  }
  return status;
}

}  // namespace camex::examples
