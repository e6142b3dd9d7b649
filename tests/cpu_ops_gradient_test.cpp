// Every CPU op's backward against central finite differences in double precision
// (tests/gradient_check.h states the tolerance). Loss = <dy, op(x)> with a random dy.
#include <catch2/catch.hpp>

#include "backend/backend.h"
#include "gradient_check.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {
std::unique_ptr<Backend> cpu() { return make_cpu_backend(); }
}  // namespace

TEST_CASE("gemm backward (as linear) matches finite differences", "[ops][grad]") {
  auto be = cpu();
  std::mt19937_64 rng(1);
  Tensor x = random_f64({5, 4}, rng), W = random_f64({3, 4}, rng), b = random_f64({3}, rng);
  Tensor dy = random_f64({5, 3}, rng);
  auto loss = [&] {
    Tensor y = be->empty({5, 3}, DType::F64);
    be->gemm(false, true, 1.0, x, W, 0.0, y);
    be->add_bias(y, b);
    return dot(dy, y);
  };
  Tensor dx = be->empty({5, 4}, DType::F64), dW = be->zeros({3, 4}, DType::F64),
         db = be->zeros({3}, DType::F64);
  be->gemm(false, false, 1.0, dy, W, 0.0, dx);
  be->gemm(true, false, 1.0, dy, x, 1.0, dW);
  be->bias_backward(dy, db);
  check_gradient("x", x, dx, loss);
  check_gradient("W", W, dW, loss);
  check_gradient("b", b, db, loss);
}

TEST_CASE("rmsnorm backward matches finite differences", "[ops][grad]") {
  auto be = cpu();
  std::mt19937_64 rng(2);
  const std::int64_t rows = 6, D = 70;  // D spans two column blocks of the dw sum
  Tensor x = random_f64({rows, D}, rng), w = random_f64({D}, rng, 0.5, 1.5);
  Tensor dy = random_f64({rows, D}, rng);
  auto loss = [&] {
    Tensor y = be->empty({rows, D}, DType::F64), rstd = be->empty({rows}, DType::F64);
    be->rmsnorm_forward(x, w, 1e-5, y, rstd);
    return dot(dy, y);
  };
  Tensor y = be->empty({rows, D}, DType::F64), rstd = be->empty({rows}, DType::F64);
  be->rmsnorm_forward(x, w, 1e-5, y, rstd);
  Tensor dx = be->empty({rows, D}, DType::F64), dw = be->zeros({D}, DType::F64);
  be->rmsnorm_backward(dy, x, w, rstd, dx, dw);
  check_gradient("x", x, dx, loss);
  check_gradient("w", w, dw, loss);
}

TEST_CASE("conv1d backward matches finite differences", "[ops][grad]") {
  auto be = cpu();
  for (std::int64_t K : {2, 3, 4}) {
    for (bool with_bias : {true, false}) {
      DYNAMIC_SECTION("K=" << K << " bias=" << with_bias) {
        std::mt19937_64 rng(10 + K);
        const std::int64_t B = 2, L = 7, E = 67;  // E spans two channel blocks
        Tensor x = random_f64({B, L, E}, rng), w = random_f64({E, K}, rng);
        Tensor bias = with_bias ? random_f64({E}, rng) : Tensor();
        Tensor dy = random_f64({B, L, E}, rng);
        auto loss = [&] {
          Tensor c = be->empty({B, L, E}, DType::F64);
          be->conv1d_forward(x, w, bias, c);
          return dot(dy, c);
        };
        Tensor dx = be->empty({B, L, E}, DType::F64), dw = be->zeros({E, K}, DType::F64);
        Tensor db = with_bias ? be->zeros({E}, DType::F64) : Tensor();
        be->conv1d_backward(dy, x, w, dx, dw, db);
        check_gradient("x", x, dx, loss);
        check_gradient("w", w, dw, loss);
        if (with_bias) check_gradient("bias", bias, db, loss);
        // A frozen conv weight (dw undefined, as the mixers pass it under LoRA): no dw formed,
        // the same dx and dbias bits.
        Tensor dx_frozen = be->empty({B, L, E}, DType::F64), no_dw;
        Tensor db_frozen = with_bias ? be->zeros({E}, DType::F64) : Tensor();
        be->conv1d_backward(dy, x, w, dx_frozen, no_dw, db_frozen);
        CHECK(same_bits(dx_frozen, dx));
        if (with_bias) CHECK(same_bits(db_frozen, db));
      }
    }
  }
}

TEST_CASE("conv1d forward is causal with left zero padding", "[ops]") {
  auto be = cpu();
  // One channel, K = 3, w = [1, 10, 100]: c_t = x_{t-2} + 10 x_{t-1} + 100 x_t
  Tensor x = Tensor::empty({1, 4, 1}, DType::F64), w = Tensor::empty({1, 3}, DType::F64);
  const double xs[] = {1, 2, 3, 4}, ws[] = {1, 10, 100};
  std::copy_n(xs, 4, x.data<double>());
  std::copy_n(ws, 3, w.data<double>());
  Tensor c = be->empty({1, 4, 1}, DType::F64);
  be->conv1d_forward(x, w, Tensor(), c);
  const double expected[] = {100, 210, 321, 432};
  for (int t = 0; t < 4; ++t) CHECK(c.data<double>()[t] == expected[t]);
}

TEST_CASE("elementwise backward passes match finite differences", "[ops][grad]") {
  auto be = cpu();
  std::mt19937_64 rng(3);
  const std::int64_t n = 40;
  Tensor x = random_f64({n}, rng, -6, 6), z = random_f64({n}, rng, -6, 6);
  x.data<double>()[0] = 25.0;  // above softplus' threshold of 20: identity branch
  Tensor dy = random_f64({n}, rng);
  Tensor y = be->empty({n}, DType::F64), dx = be->empty({n}, DType::F64),
         dz = be->empty({n}, DType::F64);

  SECTION("silu") {
    auto loss = [&] { be->silu_forward(x, y); return dot(dy, y); };
    be->silu_backward(dy, x, dx);
    check_gradient("x", x, dx, loss);
  }
  SECTION("softplus") {
    auto loss = [&] { be->softplus_forward(x, y); return dot(dy, y); };
    be->softplus_backward(dy, x, dx);
    check_gradient("x", x, dx, loss);
  }
  SECTION("gate y * silu(z)") {
    auto loss = [&] { be->gate_forward(x, z, y); return dot(dy, y); };
    be->gate_backward(dy, x, z, dx, dz);
    check_gradient("y", x, dx, loss);
    check_gradient("z", z, dz, loss);
  }
  SECTION("A = -exp(A_log)") {
    Tensor A_log = random_f64({4, 5}, rng, -1, 2), dA = random_f64({4, 5}, rng);
    Tensor A = be->empty({4, 5}, DType::F64), dA_log = be->zeros({4, 5}, DType::F64);
    auto loss = [&] { be->ssm_A_forward(A_log, A); return dot(dA, A); };
    be->ssm_A_forward(A_log, A);
    be->ssm_A_backward(dA, A, dA_log);
    check_gradient("A_log", A_log, dA_log, loss);
  }
}

TEST_CASE("embedding backward accumulates repeated ids", "[ops][grad]") {
  auto be = cpu();
  std::mt19937_64 rng(4);
  Tensor table = random_f64({6, 3}, rng), dy = random_f64({5, 3}, rng);
  Tensor ids = Tensor::empty({5}, DType::I64);
  const std::int64_t id_values[] = {2, 0, 2, 5, 2};
  std::copy_n(id_values, 5, ids.data<std::int64_t>());
  auto loss = [&] {
    Tensor out = be->empty({5, 3}, DType::F64);
    be->embedding_forward(ids, table, out);
    return dot(dy, out);
  };
  Tensor dtable = be->zeros({6, 3}, DType::F64);
  be->embedding_backward(ids, dy, dtable);
  check_gradient("table", table, dtable, loss);

  ids.data<std::int64_t>()[1] = 6;
  Tensor out = be->empty({5, 3}, DType::F64);
  REQUIRE_THROWS_WITH(be->embedding_forward(ids, table, out),
                      Catch::Contains("token id 6 at position 1 is outside the vocabulary [0, 6)"));
}

TEST_CASE("cross-entropy backward matches finite differences and ignores -100", "[ops][grad]") {
  auto be = cpu();
  std::mt19937_64 rng(5);
  const std::int64_t rows = 4, V = 9;
  Tensor logits = random_f64({rows, V}, rng, -3, 3);
  Tensor targets = Tensor::empty({rows}, DType::I64);
  const std::int64_t t_values[] = {3, -100, 8, 0};
  std::copy_n(t_values, rows, targets.data<std::int64_t>());
  auto loss = [&] {
    std::int64_t n = 0;
    return be->cross_entropy_forward(logits, targets, &n) / double(n);
  };
  std::int64_t n = 0;
  be->cross_entropy_forward(logits, targets, &n);
  REQUIRE(n == 3);
  Tensor dlogits = be->empty({rows, V}, DType::F64);
  be->cross_entropy_backward(logits, targets, 1.0 / 3.0, dlogits);
  for (std::int64_t v = 0; v < V; ++v) CHECK(dlogits.data<double>()[1 * V + v] == 0.0);
  check_gradient("logits", logits, dlogits, loss);

  targets.data<std::int64_t>()[0] = 9;
  REQUIRE_THROWS_WITH(be->cross_entropy_forward(logits, targets, &n),
                      Catch::Contains("label 9 at position 0 is outside the vocabulary"));
}

TEST_CASE("float cross-entropy over a vocabulary's width matches the float64 op", "[ops][grad]") {
  // The float rows run lane-wise and vectorised (token_ops_cpu.cpp), the double ones plainly:
  // the float op on the float64 op's logits rounded to float must give the same loss and
  // dlogits, in place and into another tensor. V = 50280 (Mamba's vocabulary, not a multiple of
  // the lanes) and 13 (fewer than the lanes); logits in [-30, 30] so the max shift matters.
  // Tolerance: float's exp of (x - lse), with lse rounded to float (~2e-6 relative at |x| ~ 30),
  // so 1e-5 relative; plus 1e-7 absolute (2e-7 of the scale) for the target's entry, where
  // scale * p - scale cancels.
  auto be = cpu();
  for (const std::int64_t V : {std::int64_t(50280), std::int64_t(13)}) {
    std::mt19937_64 rng(11);
    const std::int64_t rows = 3;
    const Tensor logits = random_f64({rows, V}, rng, -30, 30).to(DType::F32);
    const Tensor logits64 = logits.to(DType::F64);
    Tensor targets = Tensor::empty({rows}, DType::I64);
    const std::int64_t t_values[] = {V - 1, -100, 5};
    std::copy_n(t_values, rows, targets.data<std::int64_t>());
    std::int64_t n = 0, n64 = 0;
    const double loss = be->cross_entropy_forward(logits, targets, &n);
    const double loss64 = be->cross_entropy_forward(logits64, targets, &n64);
    REQUIRE(n == 2);
    REQUIRE(n64 == 2);
    CHECK(loss == Approx(loss64).epsilon(1e-6));
    Tensor d64 = be->empty({rows, V}, DType::F64), into = be->empty({rows, V}, DType::F32);
    Tensor in_place = logits.clone();
    be->cross_entropy_backward(logits64, targets, 0.5, d64);
    be->cross_entropy_backward(logits, targets, 0.5, into);
    be->cross_entropy_backward(in_place, targets, 0.5, in_place);
    for (std::int64_t i = 0; i < rows * V; ++i) {
      const double want = d64.data<double>()[i];
      INFO("V " << V << " element " << i);
      REQUIRE(std::fabs(into.data<float>()[i] - want) <= 1e-5 * std::fabs(want) + 1e-7);
      REQUIRE(in_place.data<float>()[i] == into.data<float>()[i]);
    }
  }
}
