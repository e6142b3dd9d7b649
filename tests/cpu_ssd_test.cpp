// The CPU SSD scan (cpu/ssd_cpu.h; Backend::ssd_forward / ssd_backward): the sequential
// reference against the Mamba-1 selective scan (an SSD head is P selective-scan channels whose
// A is A_h in every state, docs/models.md "Mamba-2 SSD scan"), the backend op against finite
// differences for every input, and the op's argument checks. Shapes: ssd_case.h.
#include <catch2/catch.hpp>

#include "backend/backend.h"
#include "backend/cpu/ssd_cpu.h"
#include "gradient_check.h"
#include "ssd_case.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {

// Group g of an SSD case as a selective scan over its heads' E = (H / G) P channels:
// u = x, delta_e = dt of e's head, A[e, n] = A_h, Bm, Cm the group's, D_e = D_h, h0 the heads'.
Backend::ScanInputs group_as_scan(const SsdCase& c, std::int64_t g) {
  const SsdShape& s = c.s;
  const std::int64_t hpg = s.H / s.G, E = hpg * s.P;
  Backend::ScanInputs in;
  in.u = Tensor::empty({s.B, s.L, E}, DType::F64);
  in.delta = Tensor::empty({s.B, s.L, E}, DType::F64);
  in.A = Tensor::empty({E, s.N}, DType::F64);
  in.Bm = Tensor::empty({s.B, s.L, s.N}, DType::F64);
  in.Cm = Tensor::empty({s.B, s.L, s.N}, DType::F64);
  if (s.with_D) in.D = Tensor::empty({E}, DType::F64);
  if (s.with_h0) in.h0 = Tensor::empty({s.B, E, s.N}, DType::F64);
  in.chunk = s.chunk;
  const auto v = [](const Tensor& t) { return t.data<double>(); };
  for (std::int64_t e = 0; e < E; ++e) {
    const std::int64_t h = g * hpg + e / s.P, p = e % s.P;
    for (std::int64_t n = 0; n < s.N; ++n) v(in.A)[e * s.N + n] = v(c.in.A)[h];
    if (s.with_D) v(in.D)[e] = v(c.in.D)[h];
    for (std::int64_t b = 0; b < s.B; ++b) {
      for (std::int64_t t = 0; t < s.L; ++t) {
        const std::int64_t bt = b * s.L + t;
        v(in.u)[bt * E + e] = v(c.in.x)[(bt * s.H + h) * s.P + p];
        v(in.delta)[bt * E + e] = v(c.in.dt)[bt * s.H + h];
      }
      for (std::int64_t n = 0; n < s.N && s.with_h0; ++n)
        v(in.h0)[(b * E + e) * s.N + n] = v(c.in.h0)[((b * s.H + h) * s.P + p) * s.N + n];
    }
  }
  for (std::int64_t bt = 0; bt < s.B * s.L; ++bt)
    for (std::int64_t n = 0; n < s.N; ++n) {
      v(in.Bm)[bt * s.N + n] = v(c.in.Bm)[(bt * s.G + g) * s.N + n];
      v(in.Cm)[bt * s.N + n] = v(c.in.Cm)[(bt * s.G + g) * s.N + n];
    }
  return in;
}

}  // namespace

TEST_CASE("ssd reference forward matches the selective scan run per group", "[ssd]") {
  auto be = make_cpu_backend();
  std::uint64_t seed = 100;
  for (const SsdShape& s : ssd_shapes()) {
    INFO(s);
    const SsdCase c = make_ssd_case(s, seed++);
    const cpu::SsdDims d{s.B, s.L, s.H, s.P, s.G, s.N, s.chunk};
    Tensor y = Tensor::empty({s.B, s.L, s.H, s.P}, DType::F64);
    Tensor h_saved = Tensor::empty({s.B, s.n_chunks(), s.H, s.P, s.N}, DType::F64);
    Tensor h_last = Tensor::empty({s.B, s.H, s.P, s.N}, DType::F64);
    const auto p = [](const Tensor& t) { return t.defined() ? t.data<double>() : nullptr; };
    cpu::ssd_reference_forward<double>(d, p(c.in.x), p(c.in.dt), p(c.in.A), p(c.in.Bm), p(c.in.Cm),
                                       p(c.in.D), p(c.in.h0), p(y), p(h_saved), p(h_last));
    const std::int64_t E = s.H / s.G * s.P;
    for (std::int64_t g = 0; g < s.G; ++g) {
      const Backend::ScanInputs in = group_as_scan(c, g);
      Tensor ys = Tensor::empty({s.B, s.L, E}, DType::F64);
      Tensor hs = Tensor::empty({s.B, s.n_chunks(), E, s.N}, DType::F64);
      Tensor hl = Tensor::empty({s.B, E, s.N}, DType::F64);
      be->selective_scan_forward(in, ys, hs, hl);
      // The group's heads are E consecutive channels of y (B, L, H P) and of each state row:
      // the same operations in the same order, so equal to double rounding.
      for (std::int64_t r = 0; r < s.B * s.L; ++r)
        for (std::int64_t e = 0; e < E; ++e)
          REQUIRE(p(y)[r * s.H * s.P + g * E + e] ==
                  Approx(p(ys)[r * E + e]).epsilon(1e-13).margin(1e-14));
      for (std::int64_t r = 0; r < s.B * s.n_chunks(); ++r)
        for (std::int64_t i = 0; i < E * s.N; ++i)
          REQUIRE(p(h_saved)[(r * s.H * s.P + g * E) * s.N + i] ==
                  Approx(p(hs)[r * E * s.N + i]).epsilon(1e-13).margin(1e-14));
      for (std::int64_t b = 0; b < s.B; ++b)
        for (std::int64_t i = 0; i < E * s.N; ++i)
          REQUIRE(p(h_last)[(b * s.H * s.P + g * E) * s.N + i] ==
                  Approx(p(hl)[b * E * s.N + i]).epsilon(1e-13).margin(1e-14));
    }
  }
}

TEST_CASE("ssd backward matches finite differences for every input", "[ssd][grad]") {
  auto be = make_cpu_backend();
  std::uint64_t seed = 200;
  for (const SsdShape& s : ssd_shapes()) {
    INFO(s);
    SsdCase c = make_ssd_case(s, seed++);
    const SsdForward f = run_ssd_forward(*be, c.in, s);
    const Backend::SsdGrads g = run_ssd_backward(*be, c.in, s, f.h_saved, c.dy);
    // L = <dy, y>; h_last is not part of the objective (nothing differentiates it).
    auto loss = [&] { return dot(c.dy, run_ssd_forward(*be, c.in, s).y); };
    check_gradient("x", c.in.x, g.dx, loss);
    check_gradient("dt", c.in.dt, g.ddt, loss);
    check_gradient("A", c.in.A, g.dA, loss);
    check_gradient("Bm", c.in.Bm, g.dBm, loss);
    check_gradient("Cm", c.in.Cm, g.dCm, loss);
    if (s.with_D) check_gradient("D", c.in.D, g.dD, loss);
    if (s.with_h0) check_gradient("h0", c.in.h0, g.dh0, loss);
  }
}

TEST_CASE("ssd backward accumulates dA and dD and overwrites the rest", "[ssd]") {
  auto be = make_cpu_backend();
  const SsdShape s = ssd_shapes()[1];
  const SsdCase c = make_ssd_case(s, 300);
  const SsdForward f = run_ssd_forward(*be, c.in, s);
  const Backend::SsdGrads g0 = run_ssd_backward(*be, c.in, s, f.h_saved, c.dy, 0.0);
  const Backend::SsdGrads g1 = run_ssd_backward(*be, c.in, s, f.h_saved, c.dy, 0.5);
  for (std::int64_t h = 0; h < s.H; ++h) {
    REQUIRE(g1.dA.data<double>()[h] == Approx(g0.dA.data<double>()[h] + 0.5).epsilon(1e-14));
    REQUIRE(g1.dD.data<double>()[h] == Approx(g0.dD.data<double>()[h] + 0.5).epsilon(1e-14));
  }
  REQUIRE(same_bits(g0.dx, g1.dx));
  REQUIRE(same_bits(g0.dBm, g1.dBm));
}

TEST_CASE("ssd refuses inconsistent shapes with a message naming the tensor", "[ssd]") {
  auto be = make_cpu_backend();
  const SsdShape s = ssd_shapes()[1];
  SsdCase c = make_ssd_case(s, 400);
  const auto fails_with = [&](const Backend::SsdInputs& in, const char* what) {
    Tensor y = Tensor::empty({s.B, s.L, s.H, s.P}, DType::F64);
    Tensor hs = Tensor::empty({s.B, s.n_chunks(), s.H, s.P, s.N}, DType::F64), hl;
    REQUIRE_THROWS_WITH(be->ssd_forward(in, y, hs, hl), Catch::Contains(what));
  };
  Backend::SsdInputs in = c.in;
  in.chunk = 0;
  fails_with(in, "chunk must be positive");
  in = c.in;
  in.dt = Tensor::empty({s.B, s.L, s.H + 1}, DType::F64);
  fails_with(in, "dt has shape");
  in = c.in;
  in.Bm = Tensor::empty({s.B, s.L, 3, s.N}, DType::F64);  // H = 4 heads, 3 groups
  fails_with(in, "multiple of groups");
  in = c.in;
  in.A = c.in.A.to(DType::F32);
  fails_with(in, "element type");
}
