// The CPU backend's causal grouped-query attention (cpu/attention_cpu.cpp): forward against a
// naive float64 reference that materialises the L x L scores (attention_reference.h), backward
// against central finite differences in float64 and against the reference's analytic gradient
// in float32, and the argument checks.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

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
  return {random_f64({c.B, c.L, c.H, c.hd}, rng), random_f64({c.B, c.L, c.KV, c.hd}, rng),
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
// (lse) over attention_cases(); 5e-6 is 10 times that and far below a wrong term's O(1) error.
constexpr double kF32Tol = 5e-6;

}  // namespace

TEST_CASE("cpu attention forward matches a naive float64 reference with L x L scores",
          "[attention]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(31);
  for (const AttentionCase& c : attention_cases()) {
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
  auto be = make_cpu_backend();
  // A small case with left padding and groups of two heads, and one over two 64-row blocks
  // (so dk/dv of block 0 sum over two query blocks) with KV = 1 and a padded key in the middle.
  const AttentionCase cases[] = {{2, 7, 4, 2, 5, KeyMask::kLeftPadding},
                                 {1, 70, 2, 1, 3, KeyMask::kMiddleZero}};
  std::mt19937_64 rng(33);
  for (const AttentionCase& c : cases) {
    INFO(c);
    Inputs in = random_inputs(c, rng);
    const Tensor dout = random_f64({c.B, c.L, c.H, c.hd}, rng);
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

TEST_CASE("cpu attention backward in float32 matches the naive reference's analytic gradient",
          "[attention]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(34);
  for (const AttentionCase& c : attention_cases()) {
    INFO(c);
    const Inputs in = random_inputs(c, rng);
    const Tensor dout = random_f64({c.B, c.L, c.H, c.hd}, rng);
    const NaiveAttention ref = naive_attention(in.q, in.k, in.v, in.mask, in.scale, dout);
    const Forward f = run_forward(*be, in, DType::F32);
    Tensor dq = be->empty(in.q.shape(), DType::F32), dk = be->empty(in.k.shape(), DType::F32),
           dv = be->empty(in.k.shape(), DType::F32);
    be->attention_backward(in.q.to(DType::F32), in.k.to(DType::F32), in.v.to(DType::F32),
                           in.mask, in.scale, f.out, f.lse, dout.to(DType::F32), dq, dk, dv);
    // As forward, plus the sums over queries (dk, dv: <= 150 rows x 2 heads) and dS = P (dP -
    // Drow), a difference of sums of hd products: measured at most 6.8e-7 (dk); 1e-5 is ~15
    // times that.
    require_close_or_zero("dq", dq, ref.dq, 1e-5);
    require_close_or_zero("dk", dk, ref.dk, 1e-5);
    require_close_or_zero("dv", dv, ref.dv, 1e-5);
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
