#pragma once
// One entry point per policy family, each compiled in its own file (run_*.cpp) so the model's instantiations
// build in parallel; main.cpp picks one by --policy.

#include "config.hpp"
#include "train.hpp"

namespace camex::examples {

int run_dense(const TrainConfig&, const LmData&);
int run_soft(const TrainConfig&, const LmData&);   ///< smoe, domain (no mask, no transform, noisy top-k router)
int run_smear(const TrainConfig&, const LmData&);  ///< SMEAR's router
int run_ties(const TrainConfig&, const LmData&);
int run_ties_ca(const TrainConfig&, const LmData&);
int run_dare(const TrainConfig&, const LmData&);
int run_dare_ca(const TrainConfig&, const LmData&);
int run_ca(const TrainConfig&, const LmData&);
int run_dynamic(const TrainConfig&, const LmData&);

}  // namespace camex::examples
