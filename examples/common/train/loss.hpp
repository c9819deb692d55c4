#pragma once
// What a model's forward reports of its objective.

#include <optional>

namespace camex::examples {

/// The task's loss, the routers' balancing losses (already scaled by their coefficients; the objective is their
/// sum), and, for a classifier, the fraction of the batch it got right.
struct LossParts {
  double cross_entropy = 0;
  double aux = 0;
  std::optional<double> accuracy;
};

}  // namespace camex::examples
