#pragma once
// The few Kokkos names that moved between 3.4 and 4.x, spelled once so camex's code, and a user's kernels, read the
// same on both: camex::math::exp and so on, callable in device code.

#include <Kokkos_Core.hpp>

namespace camex::math {
#if KOKKOS_VERSION >= 30700
using Kokkos::cos;
using Kokkos::erf;
using Kokkos::erfc;
using Kokkos::exp;
using Kokkos::isfinite;
using Kokkos::log;
using Kokkos::log1p;
using Kokkos::sqrt;
using Kokkos::tanh;
#else
using Kokkos::Experimental::cos;
using Kokkos::Experimental::erf;
using Kokkos::Experimental::erfc;
using Kokkos::Experimental::exp;
using Kokkos::Experimental::isfinite;
using Kokkos::Experimental::log;
using Kokkos::Experimental::log1p;
using Kokkos::Experimental::sqrt;
using Kokkos::Experimental::tanh;
#endif
}  // namespace camex::math
