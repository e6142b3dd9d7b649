// The CPU selective scan: forward against a naive full-state recurrence written here from
// docs/models.md, Mamba step 7, backward against finite differences, and independence of the chunk
// length (chunking only changes what is saved, never the math).
#include <catch2/catch.hpp>

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

#include "backend/backend.h"
#include "gradient_check.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {

struct ScanCase {
  std::int64_t B = 2, L = 11, E = 37, N = 3;  // E = 37: two channel blocks, the last ragged
  Backend::ScanInputs in;
  Tensor dy;
};

// Draws the inputs of a case of c's sizes.
ScanCase make_case(std::uint64_t seed, std::int64_t chunk, bool with_h0, ScanCase c = {}) {
  std::mt19937_64 rng(seed);
  c.in.u = random_f64({c.B, c.L, c.E}, rng);
  c.in.delta = random_f64({c.B, c.L, c.E}, rng, 0.05, 1.0);  // softplus output: positive
  c.in.A = random_f64({c.E, c.N}, rng, -2.0, -0.1);
  c.in.Bm = random_f64({c.B, c.L, c.N}, rng);
  c.in.Cm = random_f64({c.B, c.L, c.N}, rng);
  c.in.D = random_f64({c.E}, rng);
  if (with_h0) c.in.h0 = random_f64({c.B, c.E, c.N}, rng);
  c.in.chunk = chunk;
  c.dy = random_f64({c.B, c.L, c.E}, rng);
  return c;
}

Tensor run_forward(Backend& be, const ScanCase& c, Tensor* h_saved_out = nullptr) {
  const DType dt = c.in.u.dtype();
  Tensor y = be.empty({c.B, c.L, c.E}, dt);
  Tensor h_saved = be.empty({c.B, (c.L + c.in.chunk - 1) / c.in.chunk, c.E, c.N}, dt);
  Tensor no_last;
  be.selective_scan_forward(c.in, y, h_saved, no_last);
  if (h_saved_out) *h_saved_out = h_saved;
  return y;
}

Backend::ScanGrads run_backward(Backend& be, const ScanCase& c) {
  Tensor h_saved;
  run_forward(be, c, &h_saved);
  const DType dt = c.in.u.dtype();
  Backend::ScanGrads g;
  g.du = be.empty({c.B, c.L, c.E}, dt);
  g.ddelta = be.empty({c.B, c.L, c.E}, dt);
  g.dA = be.zeros({c.E, c.N}, dt);
  g.dBm = be.empty({c.B, c.L, c.N}, dt);
  g.dCm = be.empty({c.B, c.L, c.N}, dt);
  g.dD = be.zeros({c.E}, dt);
  if (c.in.h0.defined()) g.dh0 = be.empty({c.B, c.E, c.N}, dt);
  be.selective_scan_backward(c.in, h_saved, c.dy, g);
  return g;
}

}  // namespace

TEST_CASE("scan forward matches the naive recurrence", "[scan]") {
  auto be = make_cpu_backend();
  ScanCase dims;
  dims.L = GENERATE(11, 1);  // L = 1: a decoding step, which takes its own path
  ScanCase c = make_case(7, 4, /*with_h0=*/true, dims);
  Tensor y = run_forward(*be, c);
  const auto at = [](const Tensor& t, std::int64_t i) { return t.data<double>()[i]; };
  for (std::int64_t b = 0; b < c.B; ++b) {
    for (std::int64_t e = 0; e < c.E; ++e) {
      std::vector<double> h(c.N);
      for (std::int64_t n = 0; n < c.N; ++n) h[n] = at(c.in.h0, (b * c.E + e) * c.N + n);
      for (std::int64_t t = 0; t < c.L; ++t) {
        const std::int64_t bte = (b * c.L + t) * c.E + e, btn = (b * c.L + t) * c.N;
        const double dt = at(c.in.delta, bte), u = at(c.in.u, bte);
        double expected = at(c.in.D, e) * u;
        for (std::int64_t n = 0; n < c.N; ++n) {
          h[n] = std::exp(dt * at(c.in.A, e * c.N + n)) * h[n] + dt * at(c.in.Bm, btn + n) * u;
          expected += h[n] * at(c.in.Cm, btn + n);
        }
        // Same operations in the same order in double: agreement to rounding.
        REQUIRE(at(y, bte) == Approx(expected).epsilon(1e-13).margin(1e-14));
      }
    }
  }
}

TEST_CASE("scan backward matches finite differences across chunk boundaries", "[scan][grad]") {
  auto be = make_cpu_backend();
  for (bool with_h0 : {false, true}) {
    DYNAMIC_SECTION("h0=" << with_h0) {
      ScanCase c = make_case(11, /*chunk=*/4, with_h0);  // L = 11: chunks 4, 4, 3
      Backend::ScanGrads g = run_backward(*be, c);
      auto loss = [&] { return dot(c.dy, run_forward(*be, c)); };
      check_gradient("u", c.in.u, g.du, loss);
      check_gradient("delta", c.in.delta, g.ddelta, loss);
      check_gradient("A", c.in.A, g.dA, loss);
      check_gradient("B", c.in.Bm, g.dBm, loss);
      check_gradient("C", c.in.Cm, g.dCm, loss);
      check_gradient("D", c.in.D, g.dD, loss);
      if (with_h0) check_gradient("h0", c.in.h0, g.dh0, loss);
    }
  }
}

TEST_CASE("scan results do not depend on the chunk length", "[scan]") {
  auto be = make_cpu_backend();
  ScanCase ref = make_case(13, /*chunk=*/64, true);  // one chunk covers L = 11
  const Tensor y_ref = run_forward(*be, ref);
  const Backend::ScanGrads g_ref = run_backward(*be, ref);
  for (std::int64_t chunk : {1, 3, 4, 10, 11}) {
    DYNAMIC_SECTION("chunk=" << chunk) {
      ScanCase c = make_case(13, chunk, true);
      const Tensor y = run_forward(*be, c);
      const Backend::ScanGrads g = run_backward(*be, c);
      // Recomputation inside a chunk repeats the forward's operations exactly.
      const auto same = [](const Tensor& a, const Tensor& b) {
        for (std::int64_t i = 0; i < a.numel(); ++i)
          REQUIRE(a.data<double>()[i] == Approx(b.data<double>()[i]).epsilon(1e-12).margin(1e-13));
      };
      same(y, y_ref);
      same(g.du, g_ref.du);
      same(g.ddelta, g_ref.ddelta);
      same(g.dA, g_ref.dA);
      same(g.dBm, g_ref.dBm);
      same(g.dCm, g_ref.dCm);
      same(g.dD, g_ref.dD);
      same(g.dh0, g_ref.dh0);
    }
  }
}

// float is the training precision and the vectorised path (per-CPU clones, lanes of channels,
// the tree sums of dB and dC over a block's lanes); double above is the plain one. Sizes of a
// real layer's state (N = 16), three full channel blocks and a ragged one (E = 101), and
// chunks that do not divide L.
TEST_CASE("float scan: close to double, the same bits on 1 and 3 threads", "[scan]") {
  auto be = make_cpu_backend();
  ScanCase dims;
  dims.B = 2, dims.L = 70, dims.E = 101, dims.N = 16;
  const ScanCase c64 = make_case(17, /*chunk=*/32, /*with_h0=*/true, dims);
  ScanCase c32 = c64;
  for (Tensor* t : {&c32.in.u, &c32.in.delta, &c32.in.A, &c32.in.Bm, &c32.in.Cm, &c32.in.D,
                    &c32.in.h0, &c32.dy})
    *t = t->to(DType::F32);
  const Tensor y64 = run_forward(*be, c64);
  const Backend::ScanGrads g64 = run_backward(*be, c64);

  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const Tensor y1 = run_forward(*be, c32);
  const Backend::ScanGrads g1 = run_backward(*be, c32);
  omp_set_num_threads(std::max(threads, 3));
  const Tensor y3 = run_forward(*be, c32);
  const Backend::ScanGrads g3 = run_backward(*be, c32);
  omp_set_num_threads(threads);

  const std::pair<const char*, std::array<const Tensor*, 3>> outs[] = {
      {"y", {&y64, &y1, &y3}},           {"du", {&g64.du, &g1.du, &g3.du}},
      {"ddelta", {&g64.ddelta, &g1.ddelta, &g3.ddelta}},
      {"dA", {&g64.dA, &g1.dA, &g3.dA}}, {"dB", {&g64.dBm, &g1.dBm, &g3.dBm}},
      {"dC", {&g64.dCm, &g1.dCm, &g3.dCm}}, {"dD", {&g64.dD, &g1.dD, &g3.dD}},
      {"dh0", {&g64.dh0, &g1.dh0, &g3.dh0}}};
  for (const auto& [what, t] : outs) {
    // float32's unit roundoff is 6e-8; each output sums up to L * N (1120) products and decays
    // through exp (2 ulp each), so 1e-5 of the output's largest value bounds the rounding.
    require_close(what, *t[1], *t[0], 1e-5, 0);
    CHECK(same_bits(*t[1], *t[2]));
  }
}

namespace {
// Step t of a (B, L, X) tensor: (B, 1, X).
Tensor step_of(const Tensor& x, std::int64_t t) {
  const std::int64_t B = x.dim(0), L = x.dim(1), X = x.dim(2);
  Tensor s = Tensor::empty({B, 1, X}, x.dtype());
  for (std::int64_t b = 0; b < B; ++b)
    std::copy_n(x.data<float>() + (b * L + t) * X, X, s.data<float>() + b * X);
  return s;
}
}  // namespace

// A decoding step (L = 1) takes its own path, in the state's (E, N) layout. Step after step its
// states must be the whole-sequence path's bits (the same operations per state); y may differ
// in rounding only: its sum over the N states adds products rounded apiece where the other
// path may fuse each multiply-add.
TEST_CASE("float scan: one step at a time gives the whole sequence's states", "[scan]") {
  auto be = make_cpu_backend();
  ScanCase dims;
  dims.B = 2, dims.L = 4, dims.E = 101, dims.N = 16;
  for (const bool with_h0 : {false, true}) {
    DYNAMIC_SECTION("initial state " << (with_h0 ? "given" : "zero")) {
      ScanCase c = make_case(23, /*chunk=*/64, with_h0, dims);
      for (Tensor* t : {&c.in.u, &c.in.delta, &c.in.A, &c.in.Bm, &c.in.Cm, &c.in.D, &c.in.h0})
        if (t->defined()) *t = t->to(DType::F32);
      Tensor y = be->empty({c.B, c.L, c.E}, DType::F32);
      Tensor h_saved = be->empty({c.B, 1, c.E, c.N}, DType::F32);
      Tensor h_last = be->empty({c.B, c.E, c.N}, DType::F32);
      be->selective_scan_forward(c.in, y, h_saved, h_last);

      Tensor h = c.in.h0;
      for (std::int64_t t = 0; t < c.L; ++t) {
        const Backend::ScanInputs in{step_of(c.in.u, t), step_of(c.in.delta, t), c.in.A,
                                     step_of(c.in.Bm, t), step_of(c.in.Cm, t), c.in.D, h, 64};
        Tensor y_t = be->empty({c.B, 1, c.E}, DType::F32);
        Tensor saved_t = be->empty({c.B, 1, c.E, c.N}, DType::F32);
        Tensor h_t = be->empty({c.B, c.E, c.N}, DType::F32);
        be->selective_scan_forward(in, y_t, saved_t, h_t);
        // float's unit roundoff 6e-8, N = 16 products and their sum: 1e-6 of the largest y.
        require_close("y", y_t, step_of(y, t), 1e-6, 0);
        if (t == 0) CHECK(same_bits(saved_t, h_saved));
        h = h_t;
      }
      CHECK(same_bits(h, h_last));
    }
  }
}

// ScanInputs::delta_softplus: the scan takes softplus of its delta input itself and returns the
// gradient of the values before it. The mixer relies on this being exactly the softplus ops
// around a plain scan (it picks one or the other by whether a scan hook reads delta), so every
// output must be the same bits, on the block path (L = 70, chunks of 32) and the one-step path
// (L = 1), in float (the fast path) and double (the gradient checks').
TEST_CASE("the scan's own softplus gives the bits of the softplus ops around a plain scan",
          "[scan]") {
  auto be = make_cpu_backend();
  const DType dtype = GENERATE(DType::F32, DType::F64);
  ScanCase dims;
  dims.B = 2, dims.L = GENERATE(70, 1), dims.E = 101, dims.N = 16;
  CAPTURE(dtype_name(dtype), dims.L);
  ScanCase raw = make_case(29, /*chunk=*/32, /*with_h0=*/true, dims);
  std::mt19937_64 rng(31);
  raw.in.delta = random_f64({dims.B, dims.L, dims.E}, rng, -8.0, 3.0);  // dt_proj's output
  raw.in.delta.data<double>()[3] = 25.0;     // above softplus's threshold: delta = the value
  raw.in.delta.data<double>()[5] = -40.0;    // 1 + exp(x) rounds to 1
  for (Tensor* t : {&raw.in.u, &raw.in.delta, &raw.in.A, &raw.in.Bm, &raw.in.Cm, &raw.in.D,
                    &raw.in.h0, &raw.dy})
    *t = t->to(dtype);

  ScanCase ops = raw;  // softplus_forward, the plain scan, softplus_backward
  ops.in.delta = be->empty(raw.in.delta.shape(), dtype);
  be->softplus_forward(raw.in.delta, ops.in.delta);
  Tensor saved_ops, saved_fused;
  const Tensor y_ops = run_forward(*be, ops, &saved_ops);
  ScanCase fused = raw;
  fused.in.delta_softplus = true;
  const Tensor y_fused = run_forward(*be, fused, &saved_fused);
  CHECK(same_bits(y_fused, y_ops));
  CHECK(same_bits(saved_fused, saved_ops));
  if (dims.L == 1) return;  // decoding has no backward

  Backend::ScanGrads g_ops = run_backward(*be, ops);
  const Backend::ScanGrads g_fused = run_backward(*be, fused);
  Tensor ddelta_raw = be->empty(raw.in.delta.shape(), dtype);
  be->softplus_backward(g_ops.ddelta, raw.in.delta, ddelta_raw);
  const std::pair<const char*, std::array<const Tensor*, 2>> grads[] = {
      {"ddelta", {&g_fused.ddelta, &ddelta_raw}}, {"du", {&g_fused.du, &g_ops.du}},
      {"dA", {&g_fused.dA, &g_ops.dA}},           {"dB", {&g_fused.dBm, &g_ops.dBm}},
      {"dC", {&g_fused.dCm, &g_ops.dCm}},         {"dD", {&g_fused.dD, &g_ops.dD}},
      {"dh0", {&g_fused.dh0, &g_ops.dh0}}};
  for (const auto& [what, t] : grads) {
    INFO(what);
    CHECK(same_bits(*t[0], *t[1]));
  }
}
