#pragma once
// The benchmark families of camex_bench, registered by main() in kernels.cpp.

namespace camex::bench {

/// One step (prepare + merge) of every built-in merge policy; see policies.cpp.
void register_policy_benchmarks();

}  // namespace camex::bench
