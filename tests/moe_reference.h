// The MoE routing tests' shared parts: the shapes they run, router logits with ties, the slot
// permutation a model builds (choices grouped by expert), and a naive float64 reference of the
// router (softmax, then a stable sort of the probabilities: equal ones keep ascending expert
// order) and of combine.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "gradient_check.h"

namespace ssmtune::testing {

struct RouterCase {
  std::int64_t rows, X, k;
};
inline std::ostream& operator<<(std::ostream& os, const RouterCase& c) {
  return os << "rows " << c.rows << ", X " << c.X << ", k " << c.k;
}
// One expert (k = X = 1), k = 1, k = X, Jamba's 16 experts top 2 over rows that do not fill the
// kernels' last block of 4 rows, X over one and over two warps' 32 lanes, k = X = 70.
inline const std::vector<RouterCase>& router_cases() {
  static const std::vector<RouterCase> cases = {{1, 1, 1},  {5, 4, 1},  {5, 4, 4},
                                                {9, 16, 2}, {6, 37, 5}, {4, 70, 70}};
  return cases;
}

struct SlotCase {
  std::int64_t rows, X, k, D;
};
inline std::ostream& operator<<(std::ostream& os, const SlotCase& c) {
  return os << "rows " << c.rows << ", X " << c.X << ", k " << c.k << ", D " << c.D;
}
// One token and one column; k = 2 and k = X = 3 (every token to every expert); widths under
// one warp, over the combine kernels' 128 threads (D = 257: three passes) and ragged ones.
inline const std::vector<SlotCase>& slot_cases() {
  static const std::vector<SlotCase> cases = {
      {1, 1, 1, 1}, {7, 4, 2, 5}, {10, 16, 2, 33}, {5, 3, 3, 70}, {3, 8, 2, 257}};
  return cases;
}

// Router logits (rows, X) F64 holding float32 values (so an F32 run sees the same numbers), in
// [-2, 2), with exact ties: row 0 all equal (uniform probabilities, so experts 0 .. k-1); row 1
// its largest value at experts 0 and X-1; row 2 pairs of equal values, ascending by pair.
inline Tensor router_logits(const RouterCase& c, std::mt19937_64& rng) {
  Tensor logits = random_f64({c.rows, c.X}, rng, -2, 2).to(DType::F32).to(DType::F64);
  double* p = logits.data<double>();
  for (std::int64_t e = 0; e < c.X; ++e) {
    if (c.rows > 0) p[e] = 0.5;
    if (c.rows > 2) p[2 * c.X + e] = 0.25 * double(e / 2);
  }
  if (c.rows > 1) p[c.X] = p[2 * c.X - 1] = 3.0;
  return logits;
}

// Logits at least a third of a step (4 / X) apart, in a random order: top-k cannot change
// under a finite-difference step, so the router's gradient is defined and smooth there.
inline Tensor spaced_logits(const RouterCase& c, std::mt19937_64& rng) {
  Tensor logits = Tensor::empty({c.rows, c.X}, DType::F64);
  std::uniform_real_distribution<double> jitter(-1.0 / 3, 1.0 / 3);
  std::vector<std::int64_t> order(static_cast<std::size_t>(c.X));
  for (std::int64_t t = 0; t < c.rows; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (std::int64_t e = 0; e < c.X; ++e)  // steps of 4 / X: logits within about [0, 4]
      logits.data<double>()[t * c.X + e] =
          4.0 * (double(order[std::size_t(e)]) + jitter(rng)) / double(c.X);
  }
  return logits;
}

// Softmax in double, then the experts stably sorted by descending probability.
struct NaiveRouter {
  Tensor probs, weights, experts;
};
inline NaiveRouter naive_router(const Tensor& logits, std::int64_t k) {
  const std::int64_t rows = logits.dim(0), X = logits.dim(1);
  const Tensor x = logits.to(DType::F64);
  NaiveRouter r{Tensor::empty({rows, X}, DType::F64), Tensor::empty({rows, k}, DType::F64),
                Tensor::empty({rows, k}, DType::I64)};
  for (std::int64_t t = 0; t < rows; ++t) {
    const double* row = x.data<double>() + t * X;
    double* p = r.probs.data<double>() + t * X;
    const double mx = *std::max_element(row, row + X);
    double sum = 0;
    for (std::int64_t e = 0; e < X; ++e) sum += std::exp(row[e] - mx);
    for (std::int64_t e = 0; e < X; ++e) p[e] = std::exp(row[e] - mx) / sum;
    std::vector<std::int64_t> order(static_cast<std::size_t>(X));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::int64_t a, std::int64_t b) { return p[a] > p[b]; });
    for (std::int64_t j = 0; j < k; ++j) {
      r.experts.data<std::int64_t>()[t * k + j] = order[std::size_t(j)];
      r.weights.data<double>()[t * k + j] = p[order[std::size_t(j)]];
    }
  }
  return r;
}

// experts (rows, k) I64: k distinct random experts of [0, X) per row.
inline Tensor random_experts(std::int64_t rows, std::int64_t X, std::int64_t k,
                             std::mt19937_64& rng) {
  Tensor experts = Tensor::empty({rows, k}, DType::I64);
  std::vector<std::int64_t> all(static_cast<std::size_t>(X));
  for (std::int64_t t = 0; t < rows; ++t) {
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), k, experts.data<std::int64_t>() + t * k);
  }
  return experts;
}

// slot (rows, k) I64 for experts (rows, k): expert 0's choices first, then expert 1's, ...,
// each expert's in token order (a stable counting sort, as a model groups the rows it sends
// to each expert's matrix products).
inline Tensor group_by_expert(const Tensor& experts, std::int64_t X) {
  const std::int64_t n = experts.numel();
  const std::int64_t* ex = experts.data<std::int64_t>();
  std::vector<std::int64_t> start(static_cast<std::size_t>(X + 1), 0);
  for (std::int64_t i = 0; i < n; ++i) ++start[std::size_t(ex[i] + 1)];
  std::partial_sum(start.begin(), start.end(), start.begin());
  Tensor slot = Tensor::empty(experts.shape(), DType::I64);
  for (std::int64_t i = 0; i < n; ++i) slot.data<std::int64_t>()[i] = start[std::size_t(ex[i])]++;
  return slot;
}

// slot (rows, k) for k random distinct experts per token, grouped by expert.
inline Tensor random_slot(const SlotCase& c, std::mt19937_64& rng) {
  return group_by_expert(random_experts(c.rows, c.X, c.k, rng), c.X);
}

// out[t] = sum_j weights[t, j] ys[slot[t, j]] in double.   ys: (n, D)   weights: (rows, k)
inline Tensor naive_combine(const Tensor& ys, const Tensor& slot, const Tensor& weights) {
  const std::int64_t rows = slot.dim(0), k = slot.dim(1), D = ys.dim(1);
  const Tensor y = ys.to(DType::F64), w = weights.to(DType::F64);
  Tensor out = Tensor::zeros({rows, D}, DType::F64);
  for (std::int64_t t = 0; t < rows; ++t)
    for (std::int64_t j = 0; j < k; ++j)
      for (std::int64_t c = 0; c < D; ++c)
        out.data<double>()[t * D + c] +=
            w.data<double>()[t * k + j] *
            y.data<double>()[slot.data<std::int64_t>()[t * k + j] * D + c];
  return out;
}

}  // namespace ssmtune::testing
