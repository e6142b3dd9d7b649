// Examples -> padded batches, and the deterministic order they are drawn in. The order is a
// function of (seed, epoch) alone, so a checkpoint stores a Position and a resumed run draws
// exactly the batches the uninterrupted run would have drawn (docs/datasets.md "Shuffling").
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "data/jsonl_dataset.h"

namespace ssmtune {

struct Batch {
  // input_ids, labels: (B, L) I64, L = the longest example of the batch; shorter examples are
  // right-padded with pad_id (inputs) and kIgnoreLabel (labels).
  Tensor input_ids, labels;
  // (B, L) I64: 1 at an example's tokens, 0 at its padding (HF's attention_mask), or
  // undefined when no row is padded.
  Tensor attention_mask;
  std::vector<std::int64_t> example_indices;  // into Dataset::examples, row order
  std::int64_t n_loss_tokens = 0;             // labels[b, t] != -100 for t >= 1 (after the shift)
};

// One row per index, in the order given. Throws Error for an empty or out-of-range index list.
Batch make_batch(const Dataset& dataset, const std::vector<std::int64_t>& indices,
                 std::int64_t pad_id);

// Epoch after epoch over [0, n_examples): each epoch a Fisher-Yates permutation drawn from
// Rng::for_stream(seed ^ epoch_mix(epoch), stream_id("shuffle")) when shuffle is on, the file
// order otherwise.
class EpochSampler {
 public:
  struct Position {
    std::int64_t epoch = 0;  // the epoch the next batch comes from (= epochs completed)
    std::int64_t index = 0;  // examples of that epoch already drawn, in [0, n_examples)
  };

  EpochSampler(std::int64_t n_examples, std::uint64_t seed, bool shuffle);

  // The next min(batch_size, left in this epoch) indices. A batch never mixes epochs: the last
  // batch of an epoch may be short, and after it the sampler is at (epoch + 1, 0).
  std::vector<std::int64_t> next(std::int64_t batch_size);

  Position position() const { return {epoch_, index_}; }
  // Continues from a stored position (the permutation is redrawn from seed and epoch).
  // Throws Error unless epoch >= 0 and 0 <= index < n_examples.
  void set_position(const Position& p);
  std::int64_t epoch() const { return epoch_; }
  std::int64_t size() const { return n_; }
  // The order of examples in `epoch` (what next() walks through).
  std::vector<std::int64_t> epoch_order(std::int64_t epoch) const;

 private:
  std::int64_t n_;
  std::uint64_t seed_;
  bool shuffle_;
  std::int64_t epoch_ = 0, index_ = 0;
  std::vector<std::int64_t> order_;  // epoch_order(epoch_)
};

}  // namespace ssmtune
