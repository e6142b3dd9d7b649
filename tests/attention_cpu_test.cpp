// The CPU backend's causal grouped-query attention (cpu/attention_cpu.cpp): forward against a
// naive float64 reference that materialises the L x L scores (attention_reference.h), backward
// against central finite differences in float64 and against the reference's analytic gradient
// in float32, and the argument checks; each with as many queries as keys and with fewer (the
// last Lq positions, as when decoding after cached keys).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "attention_reference.h"
#include "backend/backend.h"
#include "gradient_check.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {

struct Inputs {
  Tensor q, k, v, mask;
  double scale;
};
Inputs random_inputs(const AttentionCase& c, std::mt19937_64& rng) {
  // Inputs in [-1, 1) with scale 1 / sqrt(hd), as the model's: scores of order 1, so the
  // softmax is neither uniform nor one-hot and every term of the gradient matters.
  return {random_f64({c.B, c.Lq(), c.H, c.hd}, rng), random_f64({c.B, c.L, c.KV, c.hd}, rng),
          random_f64({c.B, c.L, c.KV, c.hd}, rng), attention_mask(c), 1.0 / std::sqrt(double(c.hd))};
}

struct Forward {
  Tensor out, lse;
};
Forward run_forward(Backend& be, const Inputs& in, DType dt) {
  const Tensor q = in.q.to(dt), k = in.k.to(dt), v = in.v.to(dt);
  Forward f{be.empty(q.shape(), dt), be.empty({q.dim(0), q.dim(2), q.dim(1)}, dt)};
  be.attention_forward(q, k, v, in.mask, in.scale, f.out, f.lse);
  return f;
}

// float64 agrees with the reference to rounding: sums of <= 150 terms of size <= 1, ~1e-14
// (measured: at most 1.8e-15).
constexpr double kF64Tol = 1e-12;
// float32 against float64: a score is a sum of hd <= 128 products (error <= 128 u |q||k| scale
// ~ 8e-6 absolute at worst, ~1e-6 typical), exp turns it into that relative error in P, and
// out sums <= 150 terms in tiles (another ~1e-6). Measured: at most 1.6e-7 (out) and 5.0e-7
// (lse) over attention_cases(), 4.9e-7 and 6.2e-7 over attention_offset_cases(); 5e-6 is 8
// times that and far below a wrong term's O(1) error.
constexpr double kF32Tol = 5e-6;

// Forward in float64 and float32 against the naive reference, over `cases`.
void check_forward(const std::vector<AttentionCase>& cases, std::uint64_t seed) {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(seed);
  for (const AttentionCase& c : cases) {
    INFO(c);
    const Inputs in = random_inputs(c, rng);
    const NaiveAttention ref = naive_attention(in.q, in.k, in.v, in.mask, in.scale);
    const Forward f64 = run_forward(*be, in, DType::F64);
    require_close("out F64", f64.out, ref.out, kF64Tol, 0);
    require_lse_close("lse F64", f64.lse, ref.lse, kF64Tol);
    const Forward f32 = run_forward(*be, in, DType::F32);
    require_close("out F32", f32.out, ref.out, kF32Tol, 0);
    require_lse_close("lse F32", f32.lse, ref.lse, kF32Tol);
  }
}

// Backward in float64 against central finite differences of <dout, out>, over `cases`.
void check_backward_by_finite_differences(const std::vector<AttentionCase>& cases,
                                          std::uint64_t seed) {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(seed);
  for (const AttentionCase& c : cases) {
    INFO(c);
    Inputs in = random_inputs(c, rng);
    const Tensor dout = random_f64({c.B, c.Lq(), c.H, c.hd}, rng);
    auto loss = [&] { return dot(dout, run_forward(*be, in, DType::F64).out); };
    const Forward f = run_forward(*be, in, DType::F64);
    Tensor dq = be->empty(in.q.shape(), DType::F64), dk = be->empty(in.k.shape(), DType::F64),
           dv = be->empty(in.k.shape(), DType::F64);
    be->attention_backward(in.q, in.k, in.v, in.mask, in.scale, f.out, f.lse, dout, dq, dk, dv);
    check_gradient("q", in.q, dq, loss);
    check_gradient("k", in.k, dk, loss);
    check_gradient("v", in.v, dv, loss);
  }
}

// Backward in float32 against the naive reference's analytic float64 gradient, over `cases`.
void check_backward_f32(const std::vector<AttentionCase>& cases, std::uint64_t seed) {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(seed);
  for (const AttentionCase& c : cases) {
    INFO(c);
    const Inputs in = random_inputs(c, rng);
    const Tensor dout = random_f64({c.B, c.Lq(), c.H, c.hd}, rng);
    const NaiveAttention ref = naive_attention(in.q, in.k, in.v, in.mask, in.scale, dout);
    const Forward f = run_forward(*be, in, DType::F32);
    Tensor dq = be->empty(in.q.shape(), DType::F32), dk = be->empty(in.k.shape(), DType::F32),
           dv = be->empty(in.k.shape(), DType::F32);
    be->attention_backward(in.q.to(DType::F32), in.k.to(DType::F32), in.v.to(DType::F32),
                           in.mask, in.scale, f.out, f.lse, dout.to(DType::F32), dq, dk, dv);
    // As forward, plus the sums over queries (dk, dv: <= 150 rows x 2 heads) and dS = P (dP -
    // Drow), a difference of sums of hd products: measured at most 6.8e-7 (dk; 5.6e-7, dq, with
    // Lq < Lk); 1e-5 is ~15 times that.
    require_close_or_zero("dq", dq, ref.dq, 1e-5);
    require_close_or_zero("dk", dk, ref.dk, 1e-5);
    require_close_or_zero("dv", dv, ref.dv, 1e-5);
  }
}

}  // namespace

TEST_CASE("cpu attention forward matches a naive float64 reference with L x L scores",
          "[attention]") {
  check_forward(attention_cases(), 31);
}

TEST_CASE("cpu attention forward with fewer queries than keys matches the naive reference",
          "[attention]") {
  check_forward(attention_offset_cases(), 35);
}

TEST_CASE("cpu attention gives zeros and lse -inf to a query with no allowed key",
          "[attention]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(32);
  const AttentionCase c{2, 7, 4, 2, 5, KeyMask::kLeftPadding};  // row 1: positions 0..3 padded
  const Inputs in = random_inputs(c, rng);
  const Forward f = run_forward(*be, in, DType::F64);
  for (std::int64_t t = 0; t < 4; ++t)
    for (std::int64_t h = 0; h < c.H; ++h) {
      CHECK(std::isinf(f.lse.data<double>()[(1 * c.H + h) * c.L + t]));
      for (std::int64_t e = 0; e < c.hd; ++e)
        CHECK(f.out.data<double>()[((1 * c.L + t) * c.H + h) * c.hd + e] == 0.0);
    }
}

TEST_CASE("cpu attention backward matches finite differences in float64", "[attention][grad]") {
  // A small case with left padding and groups of two heads, and one over two 64-row blocks
  // (so dk/dv of block 0 sum over two query blocks) with KV = 1 and a padded key in the middle.
  check_backward_by_finite_differences({{2, 7, 4, 2, 5, KeyMask::kLeftPadding},
                                        {1, 70, 2, 1, 3, KeyMask::kMiddleZero}},
                                       33);
}

TEST_CASE("cpu attention backward with fewer queries than keys matches finite differences",
          "[attention][grad]") {
  // Lq = 1 after 8 keys with left padding and groups of two heads; Lq = 1 after 69 keys (two
  // key blocks, one query); Lq = 70 after 5 keys with a padded key in the middle: key block 1
  // (keys 64..74) is first seen by query 59, so its dk/dv start at query block 0.
  check_backward_by_finite_differences({{2, 9, 4, 2, 5, KeyMask::kLeftPadding, 8},
                                        {1, 70, 2, 1, 3, KeyMask::kNone, 69},
                                        {1, 75, 2, 1, 3, KeyMask::kMiddleZero, 5}},
                                       36);
}

TEST_CASE("cpu attention backward in float32 matches the naive reference's analytic gradient",
          "[attention]") {
  check_backward_f32(attention_cases(), 34);
}

TEST_CASE("cpu attention backward in float32 with fewer queries than keys matches the naive "
          "reference",
          "[attention]") {
  check_backward_f32(attention_offset_cases(), 37);
}

// Before the op took Lq < Lk, decoding ran the square op with zero queries in front of the
// block's; the op with Lq < Lk must give those rows' results exactly. The extra query rows and key blocks add only
// exact zeros (P = 0 for a key after the query, dout = 0 and q = 0 in the front rows) to sums
// taken in the same order, so the bits agree, not just the values.
TEST_CASE("cpu attention with Lq < Lk equals the square op with zero queries in front, bit for "
          "bit",
          "[attention]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(38);
  for (const AttentionCase& c : attention_offset_cases()) {
    INFO(c);
    const Inputs in = random_inputs(c, rng);
    const Tensor dout = random_f64({c.B, c.Lq(), c.H, c.hd}, rng);
    // The square problem: q and dout padded in front with c.past zero rows per batch row.
    const auto pad_front = [&](const Tensor& x) {
      Tensor y = Tensor::zeros({c.B, c.L, c.H, c.hd}, DType::F64);
      const std::int64_t row = c.H * c.hd;
      for (std::int64_t b = 0; b < c.B; ++b)
        std::copy_n(x.data<double>() + b * c.Lq() * row, c.Lq() * row,
                    y.data<double>() + (b * c.L + c.past) * row);
      return y;
    };
    const Inputs square{pad_front(in.q), in.k, in.v, in.mask, in.scale};
    const Forward f = run_forward(*be, in, DType::F64), fs = run_forward(*be, square, DType::F64);
    Tensor dq = be->empty(in.q.shape(), DType::F64), dk = be->empty(in.k.shape(), DType::F64),
           dv = be->empty(in.k.shape(), DType::F64);
    be->attention_backward(in.q, in.k, in.v, in.mask, in.scale, f.out, f.lse, dout, dq, dk, dv);
    Tensor dqs = be->empty(square.q.shape(), DType::F64), dks = be->empty(in.k.shape(), DType::F64),
           dvs = be->empty(in.k.shape(), DType::F64);
    be->attention_backward(square.q, in.k, in.v, in.mask, in.scale, fs.out, fs.lse,
                           pad_front(dout), dqs, dks, dvs);
    // The square op's last Lq rows: out and dq by pad_front's inverse, lse (B, H, L) per head.
    const auto tail = [&](const Tensor& x) {
      Tensor y = Tensor::empty({c.B, c.Lq(), c.H, c.hd}, DType::F64);
      const std::int64_t row = c.H * c.hd;
      for (std::int64_t b = 0; b < c.B; ++b)
        std::copy_n(x.data<double>() + (b * c.L + c.past) * row, c.Lq() * row,
                    y.data<double>() + b * c.Lq() * row);
      return y;
    };
    Tensor lse_tail = Tensor::empty(f.lse.shape(), DType::F64);
    for (std::int64_t bh = 0; bh < c.B * c.H; ++bh)
      std::copy_n(fs.lse.data<double>() + bh * c.L + c.past, c.Lq(),
                  lse_tail.data<double>() + bh * c.Lq());
    CHECK(same_bits(f.out, tail(fs.out)));
    CHECK(same_bits(f.lse, lse_tail));
    CHECK(same_bits(dq, tail(dqs)));
    CHECK(same_bits(dk, dks));
    CHECK(same_bits(dv, dvs));
  }
}

TEST_CASE("attention refuses mismatched shapes, head counts and mask types", "[attention]") {
  auto be = make_cpu_backend();
  const Tensor q = Tensor::zeros({1, 4, 3, 8}, DType::F32), k = Tensor::zeros({1, 4, 2, 8}, DType::F32);
  Tensor out = Tensor::zeros(q.shape(), DType::F32), lse = Tensor::zeros({1, 3, 4}, DType::F32);
  CHECK_THROWS_WITH(be->attention_forward(q, k, k, Tensor(), 1.0, out, lse),
                    Catch::Contains("3 query heads are not a multiple of 2"));
  const Tensor k1 = Tensor::zeros({1, 4, 1, 8}, DType::F32);
  CHECK_THROWS_WITH(be->attention_forward(q, k1, k1, Tensor::zeros({1, 4}, DType::F32), 1.0, out, lse),
                    Catch::Contains("key_mask must be I64"));
  CHECK_THROWS_WITH(be->attention_forward(q, k1, k1, Tensor::zeros({1, 5}, DType::I64), 1.0, out, lse),
                    Catch::Contains("key_mask has shape"));
  Tensor bad_lse = Tensor::zeros({1, 4, 3}, DType::F32);
  CHECK_THROWS_WITH(be->attention_forward(q, k1, k1, Tensor(), 1.0, out, bad_lse),
                    Catch::Contains("lse has shape"));
  CHECK_THROWS_WITH(be->attention_forward(q, k1.to(DType::F64), k1, Tensor(), 1.0, out, lse),
                    Catch::Contains("element types differ"));
}

TEST_CASE("attention refuses more queries than keys and q, k that disagree in batch or head dim",
          "[attention]") {
  auto be = make_cpu_backend();
  const auto zeros = [](Shape s) { return Tensor::zeros(s, DType::F32); };
  const Tensor k = zeros({1, 4, 1, 8});
  Tensor out5 = zeros({1, 5, 2, 8}), lse5 = zeros({1, 2, 5});
  CHECK_THROWS_WITH(be->attention_forward(zeros({1, 5, 2, 8}), k, k, Tensor(), 1.0, out5, lse5),
                    Catch::Contains("attention_forward: q has 5 steps, more than the 4 of k"));
  const Tensor q = zeros({1, 2, 2, 8});  // two queries at positions 2, 3 of the 4 keys
  Tensor out = zeros(q.shape()), lse = zeros({1, 2, 2});
  CHECK_THROWS_WITH(be->attention_forward(q, zeros({2, 4, 1, 8}), k, Tensor(), 1.0, out, lse),
                    Catch::Contains("k has shape (2, 4, 1, 8), expected (1, 4, 1, 8)"));
  CHECK_THROWS_WITH(be->attention_forward(q, zeros({1, 4, 1, 4}), k, Tensor(), 1.0, out, lse),
                    Catch::Contains("k has shape (1, 4, 1, 4), expected (1, 4, 1, 8)"));
  CHECK_THROWS_WITH(be->attention_forward(q, k, zeros({1, 3, 1, 8}), Tensor(), 1.0, out, lse),
                    Catch::Contains("v has shape (1, 3, 1, 8), expected (1, 4, 1, 8)"));
  // The outputs follow q's length, the mask k's.
  Tensor out_k = zeros({1, 4, 2, 8}), lse_k = zeros({1, 2, 4});
  CHECK_THROWS_WITH(be->attention_forward(q, k, k, Tensor(), 1.0, out_k, lse),
                    Catch::Contains("out has shape"));
  CHECK_THROWS_WITH(be->attention_forward(q, k, k, Tensor(), 1.0, out, lse_k),
                    Catch::Contains("lse has shape (1, 2, 4), expected (1, 2, 2)"));
  CHECK_THROWS_WITH(be->attention_forward(q, k, k, Tensor::zeros({1, 2}, DType::I64), 1.0, out,
                                          lse),
                    Catch::Contains("key_mask has shape (1, 2), expected (1, 4)"));
  be->attention_forward(q, k, k, Tensor(), 1.0, out, lse);
  Tensor dq = zeros(q.shape()), dk = zeros(k.shape()), dv = zeros(k.shape());
  Tensor dk_q = zeros({1, 2, 1, 8});
  CHECK_THROWS_WITH(be->attention_backward(q, k, k, Tensor(), 1.0, out, lse, out, dq, dk_q, dv),
                    Catch::Contains("attention_backward: dk has shape (1, 2, 1, 8), expected"));
  CHECK_NOTHROW(be->attention_backward(q, k, k, Tensor(), 1.0, out, lse, out, dq, dk, dv));
}
