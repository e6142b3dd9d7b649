#include "data/batcher.h"

#include <algorithm>
#include <string>
#include <utility>

#include "core/error.h"
#include "core/rng.h"

namespace ssmtune {

Batch make_batch(const Dataset& dataset, const std::vector<std::int64_t>& indices,
                 std::int64_t pad_id) {
  check(!indices.empty(), dataset.path + ": make_batch needs at least one example index");
  const std::int64_t n = std::int64_t(dataset.examples.size());
  std::int64_t max_len = 0;
  for (const std::int64_t i : indices) {
    check(i >= 0 && i < n, dataset.path + ": example index " + std::to_string(i) +
                               " out of range [0, " + std::to_string(n) + ")");
    max_len = std::max(max_len, std::int64_t(dataset.examples[i].input_ids.size()));
  }
  const std::int64_t batch = std::int64_t(indices.size());
  Batch b;
  b.input_ids = Tensor::empty({batch, max_len}, DType::I64);
  b.labels = Tensor::empty({batch, max_len}, DType::I64);
  b.example_indices = indices;
  std::int64_t* ids = b.input_ids.data<std::int64_t>();
  std::int64_t* labels = b.labels.data<std::int64_t>();
  for (std::int64_t r = 0; r < batch; ++r) {
    const Example& ex = dataset.examples[indices[r]];
    std::int64_t* row_ids = ids + r * max_len;
    std::int64_t* row_labels = labels + r * max_len;
    const auto len = std::ptrdiff_t(ex.input_ids.size());
    std::copy(ex.input_ids.begin(), ex.input_ids.end(), row_ids);
    std::copy(ex.labels.begin(), ex.labels.end(), row_labels);
    std::fill(row_ids + len, row_ids + max_len, pad_id);
    std::fill(row_labels + len, row_labels + max_len, kIgnoreLabel);
    b.n_loss_tokens += count_loss_tokens(ex.labels);
  }
  bool padded = false;
  for (const std::int64_t i : indices)
    padded = padded || std::int64_t(dataset.examples[i].input_ids.size()) < max_len;
  if (padded) {
    b.attention_mask = Tensor::zeros({batch, max_len}, DType::I64);
    for (std::int64_t r = 0; r < batch; ++r) {
      const auto len = std::int64_t(dataset.examples[indices[r]].input_ids.size());
      std::fill_n(b.attention_mask.data<std::int64_t>() + r * max_len, len, 1);
    }
  }
  return b;
}

namespace {
// Decorrelates the epochs' seeds: consecutive epochs differ in many bits before for_stream's
// splitmix64, and epoch 0 still changes the seed (seed ^ 0 would equal the bare seed).
std::uint64_t epoch_mix(std::int64_t epoch) {
  return (std::uint64_t(epoch) + 1) * 0x9E3779B97F4A7C15ull;
}
}  // namespace

EpochSampler::EpochSampler(std::int64_t n_examples, std::uint64_t seed, bool shuffle)
    : n_(n_examples), seed_(seed), shuffle_(shuffle) {
  check(n_examples > 0, "EpochSampler: no examples to sample");
  order_ = epoch_order(0);
}

std::vector<std::int64_t> EpochSampler::epoch_order(std::int64_t epoch) const {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n_));
  for (std::int64_t i = 0; i < n_; ++i) order[std::size_t(i)] = i;
  if (!shuffle_) return order;
  // Fisher-Yates (Knuth's Algorithm P), from the top: each of the n! orders equally likely.
  Rng rng = Rng::for_stream(seed_ ^ epoch_mix(epoch), stream_id("shuffle"));
  for (std::int64_t i = n_ - 1; i > 0; --i)
    std::swap(order[std::size_t(i)], order[rng.below(std::uint64_t(i) + 1)]);
  return order;
}

std::vector<std::int64_t> EpochSampler::next(std::int64_t batch_size) {
  check(batch_size > 0,
        "EpochSampler: batch size must be positive, got " + std::to_string(batch_size));
  const std::int64_t take = std::min(batch_size, n_ - index_);
  std::vector<std::int64_t> out(order_.begin() + index_, order_.begin() + index_ + take);
  index_ += take;
  if (index_ == n_) set_position({epoch_ + 1, 0});
  return out;
}

void EpochSampler::set_position(const Position& p) {
  check(p.epoch >= 0 && p.index >= 0 && p.index < n_,
        "data position (epoch " + std::to_string(p.epoch) + ", index " + std::to_string(p.index) +
            ") is outside a dataset of " + std::to_string(n_) +
            " examples; was the checkpoint made with another dataset?");
  if (p.epoch != epoch_ || order_.empty()) order_ = epoch_order(p.epoch);
  epoch_ = p.epoch;
  index_ = p.index;
}

}  // namespace ssmtune
