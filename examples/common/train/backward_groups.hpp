#pragma once
// When a model's gradients are final, so that a data-parallel run can send a block's gradients while the backward of
// the blocks before it still runs (common/parallel/gradient_reduction.hpp). A model lists its tensors (indices in
// its tensors() order) in groups, in the order its backward finishes them, and its backward calls `ready(g)` once
// nothing later in the backward adds to group g. For the transformers here: what the head's backward finishes, then
// each block from the last to the first (the block's own tensors, and its merged MLP's library components: a dynamic
// chain hands layer l's base adjoint to layer l - 1, never back), then the embeddings (a tied embedding gets its last
// addition there).

#include <cstddef>
#include <functional>
#include <utility>
#include <vector>

namespace camex::examples {

/// Tensor indices (tensors() order) of each group, in the order backward finishes them.
using BackwardGroups = std::vector<std::vector<std::size_t>>;

/// Called by backward with each group's index once its gradients are final; may be empty.
using GradientsReady = std::function<void(std::size_t group)>;

/// Where a transformer's tensors are in its tensors() list: the arena's first, a block's own as a range of them,
/// then each block's library components, block after block.
struct TransformerTensors {
  std::size_t arena = 0;                                    ///< tensors in the arena
  std::vector<std::pair<std::size_t, std::size_t>> blocks;  ///< each block's arena tensors [first, last)
  std::vector<std::size_t> components;                      ///< each block's library component tensors
};

/// The groups of a transformer whose backward finishes `head` first, the blocks in reverse, then `tail`.
inline BackwardGroups transformer_groups(const TransformerTensors& where, std::vector<std::size_t> head,
                                         std::vector<std::size_t> tail) {
  BackwardGroups groups{std::move(head)};
  std::vector<std::size_t> component_first{where.arena};
  for (const std::size_t n : where.components) component_first.push_back(component_first.back() + n);
  for (std::size_t l = where.blocks.size(); l-- > 0;) {
    std::vector<std::size_t> block;
    for (std::size_t i = where.blocks[l].first; i < where.blocks[l].second; ++i) block.push_back(i);
    for (std::size_t i = component_first[l]; i < component_first[l + 1]; ++i) block.push_back(i);
    groups.push_back(std::move(block));
  }
  groups.push_back(std::move(tail));
  return groups;
}

}  // namespace camex::examples
