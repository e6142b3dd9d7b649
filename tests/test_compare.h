// Normwise tensor comparison for parity tests.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <string>

#include "core/tensor.h"

namespace ssmtune::testing {

// max |a - ref| <= rtol * max |ref| + atol: a normwise comparison, so that elements near zero
// (where an elementwise relative error means nothing) do not decide the result.
inline void require_close(const std::string& what, const Tensor& actual, const Tensor& ref,
                          double rtol, double atol) {
  REQUIRE(actual.numel() == ref.numel());
  const Tensor a = actual.to(DType::F64), r = ref.to(DType::F64);
  double max_ref = 0, max_err = 0;
  std::int64_t worst = 0;
  for (std::int64_t i = 0; i < r.numel(); ++i) {
    max_ref = std::max(max_ref, std::fabs(r.data<double>()[i]));
    double err = std::fabs(a.data<double>()[i] - r.data<double>()[i]);
    if (std::isnan(err)) err = INFINITY;  // a NaN (e.g. an element never written) must fail
    if (err > max_err) max_err = err, worst = i;
  }
  INFO(what << ": max |error| " << max_err << " at " << worst << ", max |ref| " << max_ref);
  REQUIRE(max_ref > 0);  // a reference of zeros would test nothing
  REQUIRE(max_err <= rtol * max_ref + atol);
}

// require_close, except where the reference is all zeros (a gradient that vanishes exactly:
// attention at L = 1, where each query has one key, P = 1 and dS = P (dP - Drow) = 0, or the
// MoE router with one expert): then only rounding remains, and with inputs of order 1 it must
// stay within rtol absolute.
inline void require_close_or_zero(const std::string& what, const Tensor& actual, const Tensor& ref,
                                  double rtol) {
  const Tensor a = actual.to(DType::F64), r = ref.to(DType::F64);
  double max_ref = 0, max_a = 0;
  for (std::int64_t i = 0; i < r.numel(); ++i) {
    max_ref = std::max(max_ref, std::fabs(r.data<double>()[i]));
    max_a = std::max(max_a, std::fabs(a.data<double>()[i]));
  }
  if (max_ref > 0) return require_close(what, actual, ref, rtol, 0);
  INFO(what << ": reference all zeros, max |actual| " << max_a);
  REQUIRE(max_a <= rtol);
}

// The same element type, count and bytes: for results that must agree bit for bit (repeated
// runs, other thread orders). Host tensors.
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.numel() == b.numel() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace ssmtune::testing
