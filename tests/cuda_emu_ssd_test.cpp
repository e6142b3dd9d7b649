// The SSD kernels (kernels/ssd.cu) through the emulated CUDA backend against the CPU backend
// (cpu::ssd_forward / ssd_backward<float>, their twins), in every thread order, over the shapes
// of ssd_case.h (one group and several, L a multiple of the chunk and not, L < chunk, chunk 1,
// L = 1, D and h0 on and off, chunks of 64, 80 and 256 steps: several 32-row tiles of the
// forward's Y_diag), with h_last and dh0, dA and dD prefilled (accumulated into);
// the same bits on every run; and F64 inputs refused by name.
//
// Tolerance (normwise, test_compare.h): both sides compute in float32 from the same inputs but
// add in other orders (the CPU's BLAS products against the kernels' loops and tiles; the
// decays from running log-decay sums on the CPU, from double cumulative sums in the GPU's
// backward), so each output is a reordered float sum of up to q (P + N) terms of order 1, and
// each side is within ~7e-7 of fp64 at chunk 256 (cpu_ssd_test.cpp). Measured at most 2.8e-7
// over ssd_shapes() and 1.5e-6 at chunk 256 (the parameter gradients, summed
// over 520 steps); 1e-5 leaves a margin and is far below the O(1) error of a wrong index or a
// missing barrier (device memory starts as NaN, so an element never written fails too).
#include <catch2/catch.hpp>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_emu_test_util.h"
#include "ssd_case.h"
#include "test_compare.h"

namespace {

using namespace ssmtune;
using namespace ssmtune::testing;

constexpr double kTol = 1e-5;

struct SsdRun {
  SsdForward f;
  Backend::SsdGrads g;
};

// Forward then backward of one case on `be`, F32, dA and dD prefilled with 0.25; results on the
// host.
SsdRun run(Backend& be, const SsdCase& c) {
  const Backend::SsdInputs in = ssd_inputs_as(c, DType::F32);
  SsdForward f = run_ssd_forward(be, in, c.s);
  Backend::SsdGrads g = run_ssd_backward(be, in, c.s, f.h_saved, c.dy.to(DType::F32), 0.25);
  const auto host = [](Tensor& t) {
    if (t.defined()) t = t.host_readable();
  };
  for (Tensor* t : {&f.y, &f.h_saved, &f.h_last, &g.dx, &g.ddt, &g.dA, &g.dBm, &g.dCm, &g.dD,
                    &g.dh0})
    host(*t);
  return {f, g};
}

}  // namespace

TEST_CASE("emulated SSD kernels match the CPU backend's chunked SSD in every thread order",
          "[cuda-emu][ssd]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  auto cpu_be = make_cpu_backend();
  auto gpu_be = make_cuda_backend();
  std::uint64_t seed = 500;
  std::vector<SsdShape> shapes = ssd_shapes();
  for (const SsdShape& s : ssd_long_shapes()) shapes.push_back(s);
  for (const SsdShape& s : shapes) {
    INFO(s);
    const SsdCase c = make_ssd_case(s, seed++);
    const SsdRun a = run(*cpu_be, c), g = run(*gpu_be, c);
    require_close("y", g.f.y, a.f.y, kTol, 0);
    require_close_or_zero("h_saved", g.f.h_saved, a.f.h_saved, kTol);  // one chunk, no h0: 0
    require_close("h_last", g.f.h_last, a.f.h_last, kTol, 0);
    require_close("dx", g.g.dx, a.g.dx, kTol, 0);
    require_close("ddt", g.g.ddt, a.g.ddt, kTol, 0);
    require_close("dA", g.g.dA, a.g.dA, kTol, 0);
    require_close("dBm", g.g.dBm, a.g.dBm, kTol, 0);
    require_close("dCm", g.g.dCm, a.g.dCm, kTol, 0);
    if (s.with_D) require_close("dD", g.g.dD, a.g.dD, kTol, 0);
    if (s.with_h0) require_close("dh0", g.g.dh0, a.g.dh0, kTol, 0);
  }
}

TEST_CASE("emulated SSD backward gives the same bits in every thread order", "[cuda-emu][ssd]") {
  auto gpu_be = make_cuda_backend();
  const SsdShape s = ssd_shapes()[1];  // two groups, ragged last chunk
  const SsdCase c = make_ssd_case(s, 600);
  std::vector<SsdRun> runs;
  for (const cuda_emu::Schedule order : kSchedules) {
    cuda_emu::ScheduleScope scope(order);
    runs.push_back(run(*gpu_be, c));
  }
  for (const SsdRun& r : runs) {
    REQUIRE(same_bits(r.f.y, runs[0].f.y));
    REQUIRE(same_bits(r.g.dx, runs[0].g.dx));
    REQUIRE(same_bits(r.g.ddt, runs[0].g.ddt));
    REQUIRE(same_bits(r.g.dA, runs[0].g.dA));
    REQUIRE(same_bits(r.g.dBm, runs[0].g.dBm));
    REQUIRE(same_bits(r.g.dCm, runs[0].g.dCm));
    REQUIRE(same_bits(r.g.dD, runs[0].g.dD));
  }
}

TEST_CASE("the emulated CUDA backend refuses F64 SSD inputs with a message", "[cuda-emu][ssd]") {
  auto gpu_be = make_cuda_backend();
  const SsdShape s = ssd_shapes()[0];
  const SsdCase c = make_ssd_case(s, 700);  // F64, which only the CPU backend computes in
  Tensor y = gpu_be->empty({s.B, s.L, s.H, s.P}, DType::F64);
  Tensor h_saved = gpu_be->empty({s.B, s.n_chunks(), s.H, s.P, s.N}, DType::F64), h_last;
  REQUIRE_THROWS_WITH(gpu_be->ssd_forward(c.in, y, h_saved, h_last),
                      Catch::Contains("ssd_forward: x is F64; the CUDA backend computes in F32"));
}

TEST_CASE("emulated SSD forward without h_last writes the same y and h_saved", "[cuda-emu][ssd]") {
  auto gpu_be = make_cuda_backend();
  const SsdShape s = ssd_shapes()[1];
  const SsdCase c = make_ssd_case(s, 800);
  const Backend::SsdInputs in = ssd_inputs_as(c, DType::F32);
  const SsdForward with = run_ssd_forward(*gpu_be, in, s);
  Tensor y = gpu_be->empty({s.B, s.L, s.H, s.P}, DType::F32), no_last;
  Tensor h_saved = gpu_be->empty({s.B, s.n_chunks(), s.H, s.P, s.N}, DType::F32);
  gpu_be->ssd_forward(in, y, h_saved, no_last);
  REQUIRE(same_bits(y.host_readable(), with.y.host_readable()));
  REQUIRE(same_bits(h_saved.host_readable(), with.h_saved.host_readable()));
}
