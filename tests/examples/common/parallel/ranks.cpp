// The processes of a run as a build without MPI sees them (this test compiles common/parallel/ranks.hpp with MPI
// left out, whatever the build found): alone it is rank 0 of 1 and its sums are its own, weighted; started by a
// launcher as one of several (Open MPI's or MPICH's variables set) it refuses, naming what to install.
#include <boost/test/unit_test.hpp>

#undef CAMEX_EXAMPLES_WITH_MPI
#include "common/parallel/ranks.hpp"

#include <cstdlib>
#include <string>

using namespace camex::examples;

namespace {

/// Sets `name` to `value` for its lifetime, then removes it.
struct ScopedVariable {
  ScopedVariable(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedVariable() { ::unsetenv(name_); }
  const char* name_;
};

int argc = 1;
char program[] = "ranks_test";
char* argv_storage[] = {program, nullptr};
char** argv = argv_storage;

}  // namespace

BOOST_AUTO_TEST_CASE(alone_it_is_rank_0_of_1) {
  BOOST_TEST(launched_ranks() == 1);
  const Ranks ranks(argc, argv);
  BOOST_TEST(ranks.rank() == 0);
  BOOST_TEST(ranks.size() == 1);
  BOOST_TEST(ranks.leader());
  double values[2] = {3.0, -1.5};
  ranks.weighted_sum(values, 0.5);
  BOOST_TEST(values[0] == 1.5);
  BOOST_TEST(values[1] == -0.75);
  BOOST_TEST(ranks.max(7u) == 7u);
  const BatchShare share = ranks.share(6);
  BOOST_TEST((share.first == 0 && share.count == 6));
  ranks.barrier();
  int calls = 0;
  ranks.leader_first([&] { ++calls; });
  BOOST_TEST(calls == 1);
}

BOOST_AUTO_TEST_CASE(one_of_several_without_mpi_is_refused_with_what_to_install) {
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    const ScopedVariable launched(variable, "4");
    BOOST_TEST(launched_ranks() == 4);
    try {
      const Ranks ranks(argc, argv);
      BOOST_FAIL("no error");
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      BOOST_TEST(message.find("started as one of 4 processes") != std::string::npos, message);
      BOOST_TEST(message.find("libopenmpi-dev") != std::string::npos, message);
    }
  }
}
