// The Boost.Test module every camex test executable links: Kokkos is initialised once per process.
#define BOOST_TEST_MODULE camex
#include <boost/test/unit_test.hpp>

#include <Kokkos_Core.hpp>

struct KokkosSession {
  KokkosSession() { Kokkos::initialize(); }
  ~KokkosSession() { Kokkos::finalize(); }
};
BOOST_TEST_GLOBAL_FIXTURE(KokkosSession);
