// Dynamic merging (EP-CAMEx): one chain per MLP tensor kind through the layers; only layer 0 owns a base.
#include "merged_run.hpp"
#include "runs.hpp"

namespace camex::examples {

int run_dynamic(const TrainConfig& c, const LmData& data) {
  using Store = ChainedPolicies<TrainScalar, TrainSpace>;
  Store chains(gpt_shape(c, data.vocab), c.experts, routing_layout(c),
               DynamicOptions{.gamma = c.gamma, .alpha = merge_step(c), .curvature = {.rank = c.rank}});
  return train_merged<Store, DynamicChain<TrainScalar, TrainSpace>::Layer>(c, data, chains, noisy_routers(c));
}

}  // namespace camex::examples
