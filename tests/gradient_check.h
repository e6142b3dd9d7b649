// Central finite differences in double precision, for checking backward passes.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ssmtune::testing {

// Fills a F64 or F32 tensor with uniform values in [lo, hi) (drawn in double, then rounded).
inline void fill_uniform(Tensor& t, std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    if (t.dtype() == DType::F32)
      t.data<float>()[i] = float(dist(rng));
    else
      t.data<double>()[i] = dist(rng);
  }
}

// (B, L) I64 token ids, uniform over [0, V), from `seed`.
inline Tensor random_ids(std::int64_t B, std::int64_t L, std::int64_t V, std::uint64_t seed) {
  Tensor ids = Tensor::empty({B, L}, DType::I64);
  std::mt19937_64 rng(seed);
  for (std::int64_t i = 0; i < ids.numel(); ++i)
    ids.data<std::int64_t>()[i] = std::int64_t(rng() % std::uint64_t(V));
  return ids;
}

inline Tensor random_f64(const Shape& shape, std::mt19937_64& rng, double lo = -1.0,
                         double hi = 1.0) {
  Tensor t = Tensor::empty(shape, DType::F64);
  fill_uniform(t, rng, lo, hi);
  return t;
}

// Sum of a * b over all elements (the scalar "loss" <dy, y> whose gradient is backward(dy)).
inline double dot(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  double s = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) s += a.data<double>()[i] * b.data<double>()[i];
  return s;
}

// Built with AddressSanitizer (.ci/sanitize: the whole suite, in CI)? GCC defines
// __SANITIZE_ADDRESS__, clang answers __has_feature(address_sanitizer).
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif
// Under the sanitizers check_gradient checks at most this many elements of each tensor (evenly
// spread, first and last included). The sanitizers judge memory accesses and undefined
// behaviour, and every further element repeats the same two forwards over the same addresses
// with one value moved: the first elements already run every code path the check reaches. The
// Release suite checks every element (or every stride-th) as each test asks; under the
// sanitizers the repeats made the float64 whole-model checks the slowest tests by far
// (docs/reliability.md "Sanitizers").
inline constexpr std::int64_t kSanitizedElements = 8;

// Compares `analytic` (same shape as `x`) with (loss(x + h e_i) - loss(x - h e_i)) / 2h for
// every element i of x (every `stride`-th one, first and last included, when stride > 1: for
// whole-model objectives, whose every element costs two forwards). Double precision with h = 1e-6: truncation error ~h^2 * f''' ~ 1e-12 and
// rounding ~1e-16 / h ~ 1e-10 relative, so 1e-6 relative (+ 1e-8 absolute) leaves a wide margin
// while any wrong term in a backward pass (an O(1) relative error) fails.
inline void check_gradient(const std::string& what, Tensor& x, const Tensor& analytic,
                           const std::function<double()>& loss, double h = 1e-6,
                           double rtol = 1e-6, double atol = 1e-8, std::int64_t stride = 1) {
  REQUIRE(x.shape() == analytic.shape());
  REQUIRE(stride >= 1);
  if (kSanitized) stride = std::max(stride, (x.numel() + kSanitizedElements - 2) /
                                                std::max<std::int64_t>(1, kSanitizedElements - 1));
  double* p = x.data<double>();
  const double* g = analytic.data<double>();
  const std::int64_t n = x.numel();
  std::vector<std::int64_t> checked;  // 0, stride, 2 stride, ... and the last element
  for (std::int64_t i = 0; i < n; i += stride) checked.push_back(i);
  if (n > 0 && checked.back() != n - 1) checked.push_back(n - 1);
  for (const std::int64_t i : checked) {
    const double saved = p[i];
    p[i] = saved + h;
    const double up = loss();
    p[i] = saved - h;
    const double down = loss();
    p[i] = saved;
    const double numeric = (up - down) / (2 * h);
    INFO(what << "[" << i << "]: analytic " << g[i] << ", numeric " << numeric);
    REQUIRE(std::fabs(numeric - g[i]) <= atol + rtol * std::fabs(numeric));
  }
}

}  // namespace ssmtune::testing
