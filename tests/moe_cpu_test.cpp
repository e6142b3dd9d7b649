// The CPU backend's MoE routing ops (cpu/moe_cpu.cpp): the router against a naive float64
// softmax and stable sort (moe_reference.h), ties and NaN included; the router's backward,
// dispatch's and combine's against central finite differences in float64; dispatch and
// combine against exact references; and the argument checks.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <random>

#include "backend/backend.h"
#include "gradient_check.h"
#include "moe_reference.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {

struct Router {
  Tensor probs, weights, experts;
};
Router run_router(Backend& be, const Tensor& logits, std::int64_t k, DType dt) {
  const Tensor x = logits.to(dt);
  Router r{be.empty(x.shape(), dt), be.empty({x.dim(0), k}, dt),
           be.empty({x.dim(0), k}, DType::I64)};
  be.moe_router_forward(x, k, r.probs, r.weights, r.experts);
  return r;
}

bool same_experts(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) return false;
  for (std::int64_t i = 0; i < a.numel(); ++i)
    if (a.data<std::int64_t>()[i] != b.data<std::int64_t>()[i]) return false;
  return true;
}

// float64 against the reference: the same exps, sum and quotients in the same order, so a
// difference could only come from the rounding of a reordered sum, ~X u = 1e-14 at X = 70
// (measured: 0).
constexpr double kF64Tol = 1e-14;
// float32 against float64 on the same (float) logits: x - max rounded to float (error <= 4 u,
// logits within [-2, 3]), expf (<= 1 ulp), the quotient's rounding (1/2 ulp): under 6 u = 7e-7
// relative per probability, and probabilities <= 1. Measured: at most 3.5e-8.
constexpr double kF32Tol = 1e-6;

}  // namespace

TEST_CASE(
    "cpu moe router forward matches a naive float64 softmax and top-k, ties by lower "
    "expert index",
    "[moe]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(51);
  for (const RouterCase& c : router_cases()) {
    INFO(c);
    const Tensor logits = router_logits(c, rng);
    const NaiveRouter ref = naive_router(logits, c.k);
    const Router f64 = run_router(*be, logits, c.k, DType::F64);
    require_close("probs F64", f64.probs, ref.probs, kF64Tol, 0);
    require_close("weights F64", f64.weights, ref.weights, kF64Tol, 0);
    CHECK(same_experts(f64.experts, ref.experts));
    const Router f32 = run_router(*be, logits, c.k, DType::F32);
    require_close("probs F32", f32.probs, ref.probs, kF32Tol, 0);
    require_close("weights F32", f32.weights, ref.weights, kF32Tol, 0);
    CHECK(same_experts(f32.experts, ref.experts));
  }
}

TEST_CASE("cpu moe router puts tied experts in ascending order and weights are not renormalised",
          "[moe]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(52);
  const RouterCase c{3, 4, 3};
  const Router r = run_router(*be, router_logits(c, rng), c.k, DType::F64);
  const std::int64_t* ex = r.experts.data<std::int64_t>();
  // Row 0: all equal; row 1: experts 0 and 3 share the largest logit; row 2: logits 0, 0,
  // 0.25, 0.25.
  CHECK((ex[0] == 0 && ex[1] == 1 && ex[2] == 2));
  CHECK((ex[3] == 0 && ex[4] == 3));
  CHECK((ex[6] == 2 && ex[7] == 3 && ex[8] == 0));
  CHECK(r.weights.data<double>()[0] == Approx(0.25).epsilon(1e-15));  // 1/4, not 1/3
  CHECK(r.weights.data<double>()[0] + r.weights.data<double>()[1] + r.weights.data<double>()[2] ==
        Approx(0.75).epsilon(1e-15));
}

TEST_CASE("cpu moe router ranks NaN probabilities first and still picks k distinct experts",
          "[moe]") {
  auto be = make_cpu_backend();
  Tensor logits = Tensor::zeros({1, 5}, DType::F32);
  logits.data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  // A NaN logit makes the row's sum NaN, so every probability is NaN (as torch's softmax);
  // the order then falls back to the expert index.
  const Router r = run_router(*be, logits, 3, DType::F32);
  for (std::int64_t j = 0; j < 3; ++j) {
    CHECK(r.experts.data<std::int64_t>()[j] == j);
    CHECK(std::isnan(r.weights.data<float>()[j]));
  }
}

TEST_CASE(
    "cpu moe router backward matches finite differences of sum(c1 weights) + "
    "sum(c2 probs) in float64",
    "[moe][grad]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(53);
  const RouterCase cases[] = {{3, 4, 1}, {3, 4, 4}, {4, 16, 2}, {2, 37, 5}};
  for (const RouterCase& c : cases) {
    for (const bool with_extra : {true, false}) {
      INFO(c << (with_extra ? ", with" : ", without") << " dprobs_extra");
      Tensor logits = spaced_logits(c, rng);
      const Tensor c1 = random_f64({c.rows, c.k}, rng);
      const Tensor c2 = with_extra ? random_f64({c.rows, c.X}, rng) : Tensor();
      auto loss = [&] {
        const Router r = run_router(*be, logits, c.k, DType::F64);
        return dot(c1, r.weights) + (with_extra ? dot(c2, r.probs) : 0.0);
      };
      const Router r = run_router(*be, logits, c.k, DType::F64);
      Tensor dlogits = be->empty(logits.shape(), DType::F64);
      be->moe_router_backward(c1, r.probs, r.experts, c2, dlogits);
      check_gradient("logits", logits, dlogits, loss);
    }
  }
}

TEST_CASE("cpu moe router backward in float32 matches float64", "[moe]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(54);
  for (const RouterCase& c : router_cases()) {
    INFO(c);
    const Tensor logits = spaced_logits(c, rng), dw = random_f64({c.rows, c.k}, rng);
    const Tensor extra = random_f64({c.rows, c.X}, rng);
    Tensor d64 = be->empty(logits.shape(), DType::F64), d32 = be->empty(logits.shape(), DType::F32);
    const Router r64 = run_router(*be, logits, c.k, DType::F64);
    be->moe_router_backward(dw, r64.probs, r64.experts, extra, d64);
    const Router r32 = run_router(*be, logits, c.k, DType::F32);
    be->moe_router_backward(dw.to(DType::F32), r32.probs, r32.experts, extra.to(DType::F32), d32);
    // The double arithmetic adds nothing; the inputs' float rounding (probs 7e-7 relative, as
    // forward; dweights, dprobs_extra 6e-8) and the result's (6e-8) do, and p (g - sum g p)
    // loses no more than the inputs' relative error times |g| + |sum g p| <= 2 max |g|.
    // Measured: at most 8.5e-8 normwise; 2e-6 leaves room.
    require_close_or_zero("dlogits", d32, d64, 2e-6);
  }
}

TEST_CASE(
    "cpu moe dispatch copies rows exactly and its backward accumulates the sum of "
    "the copies' gradients",
    "[moe][grad]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(55);
  for (const SlotCase& c : slot_cases()) {
    INFO(c);
    const std::int64_t n = c.rows * c.k;
    const Tensor slot = random_slot(c, rng);
    Tensor x = random_f64({c.rows, c.D}, rng);
    for (const DType dt : {DType::F64, DType::F32}) {
      const Tensor xt = x.to(dt);
      Tensor xs = be->empty({n, c.D}, dt);
      be->moe_dispatch(xt, slot, xs);
      const Tensor xs64 = xs.to(DType::F64), x64 = xt.to(DType::F64);
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t e = 0; e < c.D; ++e)
          REQUIRE(xs64.data<double>()[slot.data<std::int64_t>()[i] * c.D + e] ==
                  x64.data<double>()[(i / c.k) * c.D + e]);
    }
    // backward: the gradient of <cxs, dispatch(x)> from zero, then accumulated onto a prefilled
    // dx (the sum of k + 1 terms in double: within a few u of the reference).
    const Tensor cxs = random_f64({n, c.D}, rng);
    Tensor dx = Tensor::zeros(x.shape(), DType::F64);
    be->moe_dispatch_backward(cxs, slot, dx);
    auto loss = [&] {
      Tensor xs = be->empty({n, c.D}, DType::F64);
      be->moe_dispatch(x, slot, xs);
      return dot(cxs, xs);
    };
    check_gradient("x", x, dx, loss);
    const Tensor before = random_f64(x.shape(), rng);
    Tensor acc = before.clone();
    be->moe_dispatch_backward(cxs, slot, acc);
    for (std::int64_t i = 0; i < x.numel(); ++i)
      REQUIRE(acc.data<double>()[i] ==
              Approx(before.data<double>()[i] + dx.data<double>()[i]).margin(1e-15));
  }
}

TEST_CASE(
    "cpu moe combine matches a float64 reference and its backward matches finite "
    "differences",
    "[moe][grad]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(56);
  for (const SlotCase& c : slot_cases()) {
    INFO(c);
    const std::int64_t n = c.rows * c.k;
    const Tensor slot = random_slot(c, rng);
    Tensor ys = random_f64({n, c.D}, rng), weights = random_f64({c.rows, c.k}, rng, 0, 1);
    const Tensor ref = naive_combine(ys, slot, weights);
    Tensor out = be->empty(ref.shape(), DType::F64);
    be->moe_combine(ys, slot, weights, out);
    // the same k products and sums in the same order (measured: exact); 1e-15 would allow a
    // reordered sum of k <= 3 terms
    require_close("out F64", out, ref, 1e-15, 0);
    Tensor out32 = be->empty(ref.shape(), DType::F32);
    be->moe_combine(ys.to(DType::F32), slot, weights.to(DType::F32), out32);
    // k <= 3 float products and sums of inputs rounded to float: <= (2 k + 1) u |w| |y| summed,
    // normwise under 5e-7 (|w| <= 1); measured at most 6.7e-8.
    require_close("out F32", out32, ref, 5e-7, 0);

    const Tensor dout = random_f64({c.rows, c.D}, rng);
    Tensor dys = be->empty(ys.shape(), DType::F64),
           dweights = be->empty(weights.shape(), DType::F64);
    be->moe_combine_backward(dout, ys, slot, weights, dys, dweights);
    auto loss = [&] {
      Tensor o = be->empty(ref.shape(), DType::F64);
      be->moe_combine(ys, slot, weights, o);
      return dot(dout, o);
    };
    check_gradient("ys", ys, dys, loss);
    check_gradient("weights", weights, dweights, loss);
    Tensor dys32 = be->empty(ys.shape(), DType::F32), dw32 = be->empty(weights.shape(), DType::F32);
    be->moe_combine_backward(dout.to(DType::F32), ys.to(DType::F32), slot, weights.to(DType::F32),
                             dys32, dw32);
    // dys: one float product (u each of three roundings); dweights: a double dot of float
    // inputs (the inputs' rounding, 2 u relative per term, over D terms of either sign:
    // normwise under 2 u D / sqrt(D) typically, 2 u D at worst = 3e-5 at D = 257). Measured: at
    // most 8.5e-8 and 8.6e-8.
    require_close("dys F32", dys32, dys, 5e-7, 0);
    require_close("dweights F32", dw32, dweights, 3e-5, 0);
  }
}

TEST_CASE(
    "moe ops refuse a bad top_k, mismatched shapes and types, and slots out of range or "
    "repeated",
    "[moe]") {
  auto be = make_cpu_backend();
  const Tensor logits = Tensor::zeros({2, 4}, DType::F32);
  Tensor probs = Tensor::zeros({2, 4}, DType::F32), w = Tensor::zeros({2, 2}, DType::F32);
  Tensor ex = Tensor::zeros({2, 2}, DType::I64);
  CHECK_THROWS_WITH(be->moe_router_forward(logits, 0, probs, w, ex),
                    Catch::Contains("cpu backend: moe_router_forward: top_k 0 outside [1, 4]"));
  Tensor w5 = Tensor::zeros({2, 5}, DType::F32), ex5 = Tensor::zeros({2, 5}, DType::I64);
  CHECK_THROWS_WITH(be->moe_router_forward(logits, 5, probs, w5, ex5),
                    Catch::Contains("top_k 5 outside [1, 4]"));
  Tensor bad_probs = Tensor::zeros({2, 3}, DType::F32);
  CHECK_THROWS_WITH(be->moe_router_forward(logits, 2, bad_probs, w, ex),
                    Catch::Contains("probs has shape (2, 3)"));
  Tensor ex_f = Tensor::zeros({2, 2}, DType::F32);
  CHECK_THROWS_WITH(be->moe_router_forward(logits, 2, probs, w, ex_f),
                    Catch::Contains("experts must be I64"));
  Tensor w64 = Tensor::zeros({2, 2}, DType::F64);
  CHECK_THROWS_WITH(be->moe_router_forward(logits, 2, probs, w64, ex),
                    Catch::Contains("element type"));
  Tensor dlogits = Tensor::zeros({2, 4}, DType::F32);
  CHECK_THROWS_WITH(
      be->moe_router_backward(w, probs, ex, Tensor::zeros({2, 3}, DType::F32), dlogits),
      Catch::Contains("moe_router_backward: dprobs_extra has shape (2, 3)"));
  CHECK_THROWS_WITH(be->moe_router_backward(w5, probs, ex5, Tensor(), dlogits),
                    Catch::Contains("top_k 5 outside [1, 4]"));

  const Tensor x = Tensor::zeros({4, 3}, DType::F32);
  Tensor xs = Tensor::zeros({8, 3}, DType::F32), slot = Tensor::empty({4, 2}, DType::I64);
  for (std::int64_t i = 0; i < 8; ++i) slot.data<std::int64_t>()[i] = 7 - i;
  be->moe_dispatch(x, slot, xs);  // a valid permutation passes
  slot.data<std::int64_t>()[3] = 8;
  CHECK_THROWS_WITH(be->moe_dispatch(x, slot, xs),
                    Catch::Contains("moe_dispatch: slot[1, 1] = 8 is outside [0, 8)"));
  Tensor out = Tensor::zeros({4, 3}, DType::F32), w4 = Tensor::zeros({4, 2}, DType::F32);
  slot.data<std::int64_t>()[3] = -1;
  CHECK_THROWS_WITH(be->moe_combine(xs, slot, w4, out),
                    Catch::Contains("moe_combine: slot[1, 1] = -1 is outside [0, 8)"));
  slot.data<std::int64_t>()[3] = 7;  // slot[0, 0] is 7 already
  CHECK_THROWS_WITH(be->moe_dispatch_backward(xs, slot, out),
                    Catch::Contains("slot[1, 1] = 7 repeats slot[0, 0]"));
  slot.data<std::int64_t>()[3] = 4;
  Tensor xs_short = Tensor::zeros({7, 3}, DType::F32);
  CHECK_THROWS_WITH(be->moe_dispatch(x, slot, xs_short), Catch::Contains("xs has shape (7, 3)"));
  CHECK_THROWS_WITH(be->moe_dispatch(x, Tensor::zeros({4, 2}, DType::F32), xs),
                    Catch::Contains("slot must be I64"));
  Tensor xs64 = xs.to(DType::F64);
  CHECK_THROWS_WITH(be->moe_dispatch(x, slot, xs64),
                    Catch::Contains("x and xs element types differ"));
  CHECK_THROWS_WITH(be->moe_combine(xs, slot, w, out), Catch::Contains("weights has shape (2, 2)"));
  Tensor dys = Tensor::zeros({8, 2}, DType::F32);
  CHECK_THROWS_WITH(be->moe_combine_backward(out, xs, slot, w4, dys, w4),
                    Catch::Contains("dys has shape (8, 2)"));
}
