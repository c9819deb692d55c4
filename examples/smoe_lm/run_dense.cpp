#include "runs.hpp"

namespace camex::examples {

int run_dense(const TrainConfig& c, const LmData& data) {
  using Mlp = DenseMlp<float, Kokkos::DefaultExecutionSpace>;
  const MlpShape shape{c.channels, c.hidden_width(), Activation::gelu_tanh};
  return train<Mlp>(c, data, [&](std::size_t) { return std::make_unique<Mlp>(shape, c.batch * c.context); });
}

}  // namespace camex::examples
