#pragma once
// Batches of next-token prediction from one token stream: S windows of L + 1 tokens, inputs the first L, targets
// the last L.
//
// Training windows start at positions drawn from camex's counter-based generator keyed by (seed, step, sequence):
// a batch is a function of the step alone, so a resumed run sees exactly the batches the uninterrupted run saw,
// with no loader state to save. Evaluation windows are the stream's consecutive, non-overlapping windows from the
// start, S per batch, so every evaluation reads the same tokens. A process of a data-parallel run loads its share
// of each batch (sequences [first, first + count) of the S), drawn as they are for the whole batch.

#include <camex/core/random.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/parallel/batch_share.hpp"
#include "corpus.hpp"

namespace camex::examples {

class TokenBatches {
 public:
  TokenBatches(std::vector<std::int32_t> stream, std::size_t sequences, std::size_t context, const std::string& what)
      : stream_(std::move(stream)), sequences_(sequences), context_(context) {
    if (stream_.size() < sequences * context + 1)
      throw data_error(what + " holds " + std::to_string(stream_.size()) + " tokens: expected at least " +
                       std::to_string(sequences * context + 1) + " (one batch of " + std::to_string(sequences) +
                       " sequences of " + std::to_string(context) + " tokens, plus one)");
  }

  std::size_t tokens() const { return stream_.size(); }
  std::size_t batch_tokens() const { return sequences_ * context_; }
  /// Whole evaluation batches in the stream.
  std::size_t evaluation_batches() const { return (stream_.size() - 1) / batch_tokens(); }

  /// The training batch of `step` into inputs and targets (S x L each), or `share` of it (share.count x L).
  void training_batch(std::uint64_t seed, std::uint64_t step, std::int32_t* inputs, std::int32_t* targets) const {
    training_batch(seed, step, whole_batch(sequences_), inputs, targets);
  }
  void training_batch(std::uint64_t seed, std::uint64_t step, const BatchShare& share, std::int32_t* inputs,
                      std::int32_t* targets) const {
    check(share);
    const CounterRng rng(seed, step);
    const std::uint64_t starts = stream_.size() - context_;  // a window needs L + 1 tokens
    for (std::size_t i = 0; i < share.count; ++i) {
      const std::size_t s = share.first + i;
      const std::uint64_t wide = (static_cast<std::uint64_t>(rng.bits({.stream = 0, .expert = 0, .element = 2 * s})) << 32) |
                                 rng.bits({.stream = 0, .expert = 0, .element = 2 * s + 1});
      copy_window(wide % starts, i, inputs, targets);
    }
  }

  /// Evaluation batch `b` (< evaluation_batches()), or `share` of it.
  void evaluation_batch(std::size_t b, std::int32_t* inputs, std::int32_t* targets) const {
    evaluation_batch(b, whole_batch(sequences_), inputs, targets);
  }
  void evaluation_batch(std::size_t b, const BatchShare& share, std::int32_t* inputs, std::int32_t* targets) const {
    check(share);
    for (std::size_t i = 0; i < share.count; ++i) copy_window((b * sequences_ + share.first + i) * context_, i, inputs, targets);
  }

 private:
  void check(const BatchShare& share) const {
    if (share.whole != sequences_ || share.first + share.count > sequences_)
      throw argument_error("TokenBatches", "share", "sequences within the batch of " + std::to_string(sequences_),
                           concat("[", share.first, ", ", share.first + share.count, ") of ", share.whole));
  }

  void copy_window(std::size_t start, std::size_t s, std::int32_t* inputs, std::int32_t* targets) const {
    for (std::size_t t = 0; t < context_; ++t) {
      inputs[s * context_ + t] = stream_[start + t];
      targets[s * context_ + t] = stream_[start + t + 1];
    }
  }

  std::vector<std::int32_t> stream_;
  std::size_t sequences_, context_;
};

}  // namespace camex::examples
