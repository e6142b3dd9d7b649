// The attention tests' shared parts: the shapes and masks they run, and a naive float64
// reference that materialises each (batch, head)'s Lq x Lk score matrix, as the blocked op must
// never do: scores, softmax over the allowed keys, out = P v; backward by the textbook chain
// rule (dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = scale dS K, dK = scale dS^T Q).
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "test_compare.h"

namespace ssmtune::testing {

enum class KeyMask { kNone, kLeftPadding, kMiddleZero };

// L positions, all with keys; the queries are the last Lq() = L - past of them (past > 0: a
// decoding block after `past` cached keys).
struct AttentionCase {
  std::int64_t B, L, H, KV, hd;
  KeyMask mask;
  std::int64_t past = 0;
  std::int64_t Lq() const { return L - past; }
};

inline std::ostream& operator<<(std::ostream& os, const AttentionCase& c) {
  const char* m[] = {"none", "left padding", "zero in the middle"};
  return os << "B " << c.B << ", L " << c.L << ", Lq " << c.Lq() << ", H " << c.H << ", KV "
            << c.KV << ", hd " << c.hd << ", mask " << m[int(c.mask)];
}

// The shapes of the forward and backward comparisons: H = KV, H = 2 KV, KV = 1; head dims that
// are not multiples of 32 (the GPU lanes) or of 64 (the CPU tile), and 128 (the GPU maximum);
// L below a tile, one CPU tile (two GPU tiles) and several tiles plus a remainder.
inline const std::vector<AttentionCase>& attention_cases() {
  static const std::vector<AttentionCase> cases = {
      {2, 1, 2, 2, 8, KeyMask::kNone},         {2, 7, 4, 2, 5, KeyMask::kLeftPadding},
      {1, 7, 3, 1, 33, KeyMask::kMiddleZero},  {1, 64, 3, 1, 16, KeyMask::kMiddleZero},
      {2, 64, 2, 2, 40, KeyMask::kLeftPadding}, {2, 150, 4, 2, 20, KeyMask::kLeftPadding},
      {1, 150, 2, 1, 70, KeyMask::kMiddleZero}, {1, 100, 4, 4, 24, KeyMask::kNone},
      {1, 40, 2, 1, 128, KeyMask::kMiddleZero}};
  return cases;
}

// Fewer queries than keys (the last Lq positions): Lq = 1 after 1, 8, 64 (one CPU tile, two GPU
// tiles) and 69 keys; Lq not a multiple of 32 or 64 after a number of keys that is not a tile
// start either (so each query tile straddles two key tiles), after exactly one CPU tile, and
// with left padding long enough that the first queries see no key.
inline const std::vector<AttentionCase>& attention_offset_cases() {
  static const std::vector<AttentionCase> cases = {
      {2, 2, 2, 2, 8, KeyMask::kNone, 1},           {2, 9, 4, 2, 5, KeyMask::kLeftPadding, 8},
      {1, 70, 3, 1, 33, KeyMask::kMiddleZero, 69},  {1, 65, 2, 2, 128, KeyMask::kNone, 64},
      {2, 150, 4, 2, 20, KeyMask::kLeftPadding, 50}, {1, 100, 3, 1, 33, KeyMask::kMiddleZero, 60},
      {1, 130, 4, 4, 24, KeyMask::kNone, 64},        {2, 90, 2, 1, 40, KeyMask::kLeftPadding, 13}};
  return cases;
}

// key_mask (B, L) I64 or undefined. Left padding: batch row b has its first (b + 1) L / 3
// positions padded (queries there see no key at all). Middle zero: position L / 2 and, in row b,
// L / 2 + 3b + 1 are padded (queries after them skip those keys).
inline Tensor attention_mask(const AttentionCase& c) {
  if (c.mask == KeyMask::kNone) return Tensor();
  Tensor m = Tensor::empty({c.B, c.L}, DType::I64);
  std::int64_t* p = m.data<std::int64_t>();
  for (std::int64_t b = 0; b < c.B; ++b)
    for (std::int64_t t = 0; t < c.L; ++t) {
      bool keep = true;
      if (c.mask == KeyMask::kLeftPadding) keep = t >= (b + 1) * c.L / 3;
      if (c.mask == KeyMask::kMiddleZero) keep = t != c.L / 2 && t != c.L / 2 + 3 * b + 1;
      p[b * c.L + t] = keep ? 1 : 0;
    }
  return m;
}

// Naive attention in double on F64 tensors q (B, Lq, H, hd), k, v (B, Lk, KV, hd), the queries
// at the last Lq key positions; key_mask as attention_mask. Fills out (B, Lq, H, hd), lse
// (B, H, Lq); with dout defined also dq, dk, dv.
struct NaiveAttention {
  Tensor out, lse, dq, dk, dv;
};
inline NaiveAttention naive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor& key_mask, double scale,
                                      const Tensor& dout = Tensor()) {
  const std::int64_t B = q.dim(0), Lq = q.dim(1), H = q.dim(2), KV = k.dim(2), hd = q.dim(3);
  const std::int64_t Lk = k.dim(1), off = Lk - Lq;  // query t sits at position t + off
  NaiveAttention r{Tensor::zeros(q.shape(), DType::F64), Tensor::zeros({B, H, Lq}, DType::F64),
                   Tensor::zeros(q.shape(), DType::F64), Tensor::zeros(k.shape(), DType::F64),
                   Tensor::zeros(k.shape(), DType::F64)};
  const double *Q = q.data<double>(), *K = k.data<double>(), *V = v.data<double>();
  const double* dO = dout.defined() ? dout.data<double>() : nullptr;
  const std::int64_t* mask = key_mask.defined() ? key_mask.data<std::int64_t>() : nullptr;
  const auto qi = [&](std::int64_t b, std::int64_t t, std::int64_t h) {
    return ((b * Lq + t) * H + h) * hd;
  };
  const auto ki = [&](std::int64_t b, std::int64_t j, std::int64_t g) {
    return ((b * Lk + j) * KV + g) * hd;
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> S(std::size_t(Lq * Lk)), P(std::size_t(Lq * Lk));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t g = h / (H / KV);
      for (std::int64_t t = 0; t < Lq; ++t)  // the whole Lq x Lk score matrix
        for (std::int64_t j = 0; j < Lk; ++j) {
          double s = 0;
          for (std::int64_t e = 0; e < hd; ++e) s += Q[qi(b, t, h) + e] * K[ki(b, j, g) + e];
          const bool allowed = j <= t + off && (!mask || mask[b * Lk + j] != 0);
          S[t * Lk + j] = allowed ? scale * s : -inf;
        }
      for (std::int64_t t = 0; t < Lq; ++t) {
        const double mx = *std::max_element(&S[t * Lk], &S[t * Lk] + Lk);
        double* lse = r.lse.data<double>() + (b * H + h) * Lq + t;
        if (mx == -inf) {  // no allowed key: zeros, lse -inf, P row of zeros
          *lse = -inf;
          std::fill_n(&P[t * Lk], Lk, 0.0);
          continue;
        }
        double sum = 0;
        for (std::int64_t j = 0; j < Lk; ++j) sum += std::exp(S[t * Lk + j] - mx);
        *lse = mx + std::log(sum);
        for (std::int64_t j = 0; j < Lk; ++j) {
          P[t * Lk + j] = std::exp(S[t * Lk + j] - mx) / sum;
          for (std::int64_t e = 0; e < hd; ++e)
            r.out.data<double>()[qi(b, t, h) + e] += P[t * Lk + j] * V[ki(b, j, g) + e];
        }
      }
      if (!dO) continue;
      for (std::int64_t t = 0; t < Lq; ++t) {
        std::vector<double> dP(static_cast<std::size_t>(Lk), 0.0);
        double rowsum = 0;
        for (std::int64_t j = 0; j < Lk; ++j) {
          for (std::int64_t e = 0; e < hd; ++e) dP[j] += dO[qi(b, t, h) + e] * V[ki(b, j, g) + e];
          rowsum += P[t * Lk + j] * dP[j];
        }
        for (std::int64_t j = 0; j < Lk; ++j) {
          const double p = P[t * Lk + j], ds = p * (dP[j] - rowsum);
          for (std::int64_t e = 0; e < hd; ++e) {
            r.dq.data<double>()[qi(b, t, h) + e] += scale * ds * K[ki(b, j, g) + e];
            r.dk.data<double>()[ki(b, j, g) + e] += scale * ds * Q[qi(b, t, h) + e];
            r.dv.data<double>()[ki(b, j, g) + e] += p * dO[qi(b, t, h) + e];
          }
        }
      }
    }
  return r;
}

// lse: the same rows are -inf (no allowed key) and the others agree to atol (lse is a log, so
// an absolute error in it is a relative error in the row's sum).
inline void require_lse_close(const std::string& what, const Tensor& actual, const Tensor& ref,
                              double atol) {
  REQUIRE(actual.numel() == ref.numel());
  const Tensor a = actual.to(DType::F64), r = ref.to(DType::F64);
  double max_err = 0;
  for (std::int64_t i = 0; i < r.numel(); ++i) {
    const double x = a.data<double>()[i], y = r.data<double>()[i];
    INFO(what << "[" << i << "]: " << x << " vs " << y);
    REQUIRE(std::isinf(x) == std::isinf(y));
    if (!std::isinf(y)) max_err = std::max(max_err, std::fabs(x - y));
  }
  INFO(what << ": max |error| " << max_err);
  REQUIRE(max_err <= atol);
}

}  // namespace ssmtune::testing
