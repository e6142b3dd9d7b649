// The selective scan kernels (kernels/selective_scan.cu) run under the CUDA-on-CPU emulator
// against their CPU twins cpu::selective_scan_forward / selective_scan_backward<float>, in every
// thread order of cuda_emu_test_util.h. Shapes: one step; ragged sequences (not a multiple of
// the chunk) with several chunks; chunks shorter than, equal to and longer than the kernels'
// 64-step tile (a chunk of 100 is two tiles, which backward's pass 1 recomputes); channel counts
// that are not multiples of the 32-channel group nor of a warp's channels; N = 1, 4, 16; B > 1;
// with and without h0, D, h_last and dh0. Inputs as in a Mamba layer: delta = softplus output
// in (0.001, 0.1), A = -exp(A_log) with A_log in log(1 .. 16), u, B, C, dy in (-1, 1).
// The shapes are small because every thread is a fiber and every shuffle a switch.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <sstream>
#include <string>

#include "backend/cpu/scan_cpu.h"
#include "cuda_emu_test_util.h"
#include "kernels/selective_scan.cuh"
#include "test_compare.h"

namespace {

using ssmtune::DType;
using ssmtune::Tensor;
using ssmtune::testing::DeviceFloats;
using ssmtune::testing::random_f32;
using ssmtune::testing::require_close;
using ssmtune::testing::require_launch_ok;
using ssmtune::testing::same_bits;
namespace cpu = ssmtune::cpu;
namespace kernels = ssmtune::kernels;

struct Case {
  kernels::ScanShape s;
  bool h0, D, h_last, dh0;
};
const Case kCases[] = {
    {{1, 1, 1, 1, 64}, false, false, false, false},   // one step, one state
    {{2, 37, 33, 4, 16}, true, true, true, true},     // ragged, 3 chunks, 2 groups (33 = 32 + 1)
    {{1, 64, 5, 16, 64}, false, true, true, false},   // one chunk = one tile, N = 16
    {{1, 150, 7, 4, 100}, true, false, false, true},  // chunk of two tiles, ragged last chunk
    {{2, 20, 3, 16, 8}, true, true, false, true},     // short chunks, B > 1, N = 16
};

// A Mamba layer's scan inputs.
struct Inputs {
  Tensor u, delta, A, Bm, Cm, D, h0;
  Inputs(const kernels::ScanShape& s, std::mt19937_64& rng)
      : u(random_f32({s.B, s.L, s.E}, rng, -1, 1)),
        delta(random_f32({s.B, s.L, s.E}, rng, 0.001, 0.1)),
        A(random_f32({s.E, s.N}, rng, 0, std::log(16.0))),
        Bm(random_f32({s.B, s.L, s.N}, rng, -1, 1)),
        Cm(random_f32({s.B, s.L, s.N}, rng, -1, 1)),
        D(random_f32({s.E}, rng, -1, 1)),
        h0(random_f32({s.B, s.E, s.N}, rng, -1, 1)) {
    for (std::int64_t i = 0; i < A.numel(); ++i) A.data<float>()[i] = -std::exp(A.data<float>()[i]);
  }
};

std::string describe(const Case& c) {
  const kernels::ScanShape& s = c.s;
  std::ostringstream o;
  o << "B " << s.B << ", L " << s.L << ", E " << s.E << ", N " << s.N << ", chunk " << s.chunk
    << ", h0 " << c.h0 << ", D " << c.D << ", h_last " << c.h_last << ", dh0 " << c.dh0;
  return o.str();
}

cpu::ScanDims dims_of(const kernels::ScanShape& s) { return {s.B, s.L, s.E, s.N, s.chunk}; }

// The inputs on the device, optional ones null where the case leaves them out.
struct DeviceInputs {
  DeviceFloats u, delta, A, Bm, Cm, D, h0;
  const Case& c;
  DeviceInputs(const Inputs& in, const Case& c)
      : u(in.u), delta(in.delta), A(in.A), Bm(in.Bm), Cm(in.Cm), D(in.D), h0(in.h0), c(c) {}
  const float* D_or_null() const { return c.D ? D.get() : nullptr; }
  const float* h0_or_null() const { return c.h0 ? h0.get() : nullptr; }
};

// The gradients of a backward run, on the host.
struct Grads {
  Tensor du, ddelta, dA, dBm, dCm, dD, dh0;
};

// Runs the backward kernels with dA, dD starting from dA0, dD0 (accumulated into).
Grads backward_on_device(const Case& c, const DeviceInputs& d, const Tensor& h_saved,
                         const Tensor& dy, const Tensor& dA0, const Tensor& dD0) {
  const kernels::ScanShape& s = c.s;
  const std::int64_t BLE = s.B * s.L * s.E, BLN = s.B * s.L * s.N;
  DeviceFloats d_hs(h_saved), d_dy(dy), d_du(BLE), d_ddelta(BLE), d_dA(dA0), d_dBm(BLN), d_dCm(BLN),
      d_dD(dD0), d_dh0(s.B * s.E * s.N);
  DeviceFloats work(kernels::selective_scan_backward_workspace_floats(s));
  kernels::selective_scan_backward(
      s, d.u.get(), d.delta.get(), d.A.get(), d.Bm.get(), d.Cm.get(), d.D_or_null(), d_hs.get(),
      d_dy.get(), d_du.get(), d_ddelta.get(), d_dA.get(), d_dBm.get(), d_dCm.get(),
      c.D ? d_dD.get() : nullptr, c.dh0 ? d_dh0.get() : nullptr, work.get(), nullptr);
  require_launch_ok();
  return {d_du.to_host({s.B, s.L, s.E}),  d_ddelta.to_host({s.B, s.L, s.E}),
          d_dA.to_host({s.E, s.N}),       d_dBm.to_host({s.B, s.L, s.N}),
          d_dCm.to_host({s.B, s.L, s.N}), d_dD.to_host({s.E}),
          d_dh0.to_host({s.B, s.E, s.N})};
}

// The backward inputs of one case: the twin's saved states, dy, and nonzero dA, dD to add to.
struct BackwardCase {
  Inputs in;
  Tensor h_saved, dy, dA0, dD0;
  BackwardCase(const Case& c, std::mt19937_64& rng)
      : in(c.s, rng),
        dy(random_f32({c.s.B, c.s.L, c.s.E}, rng, -1, 1)),
        dA0(random_f32({c.s.E, c.s.N}, rng, -1, 1)),
        dD0(random_f32({c.s.E}, rng, -1, 1)) {
    const kernels::ScanShape& s = c.s;
    h_saved = Tensor::empty({s.B, s.n_chunks(), s.E, s.N}, DType::F32);
    Tensor y = Tensor::empty({s.B, s.L, s.E}, DType::F32);
    cpu::selective_scan_forward<float>(
        dims_of(s), in.u.data<float>(), in.delta.data<float>(), in.A.data<float>(),
        in.Bm.data<float>(), in.Cm.data<float>(), c.D ? in.D.data<float>() : nullptr,
        c.h0 ? in.h0.data<float>() : nullptr, y.data<float>(), h_saved.data<float>(), nullptr);
  }
};

// require_close, except that a reference of zeros (h_saved of one chunk without h0) must be
// matched exactly.
void require_close_or_zeros(const std::string& what, const Tensor& actual, const Tensor& ref,
                            double rtol) {
  const Tensor zeros = Tensor::zeros(ref.shape(), DType::F32);
  if (same_bits(ref, zeros)) {
    INFO(what << ": the reference is zeros");
    REQUIRE(same_bits(actual, zeros));
  } else {
    require_close(what, actual, ref, rtol, 0);
  }
}

}  // namespace

TEST_CASE("emulated selective scan forward kernel matches cpu::selective_scan_forward",
          "[cuda-emu][scan]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(31);
  for (const Case& c : kCases) {
    const kernels::ScanShape& s = c.s;
    INFO(describe(c));
    const Inputs in(s, rng);
    Tensor y_ref = Tensor::empty({s.B, s.L, s.E}, DType::F32);
    Tensor hs_ref = Tensor::empty({s.B, s.n_chunks(), s.E, s.N}, DType::F32);
    Tensor hl_ref = Tensor::empty({s.B, s.E, s.N}, DType::F32);
    cpu::selective_scan_forward<float>(dims_of(s), in.u.data<float>(), in.delta.data<float>(),
                                       in.A.data<float>(), in.Bm.data<float>(), in.Cm.data<float>(),
                                       c.D ? in.D.data<float>() : nullptr,
                                       c.h0 ? in.h0.data<float>() : nullptr, y_ref.data<float>(),
                                       hs_ref.data<float>(), hl_ref.data<float>());
    const DeviceInputs d(in, c);
    DeviceFloats d_y(y_ref.numel()), d_hs(hs_ref.numel()), d_hl(hl_ref.numel());
    kernels::selective_scan_forward(s, d.u.get(), d.delta.get(), d.A.get(), d.Bm.get(), d.Cm.get(),
                                    d.D_or_null(), d.h0_or_null(), d_y.get(), d_hs.get(),
                                    c.h_last ? d_hl.get() : nullptr, nullptr);
    require_launch_ok();
    // The kernel composes each state's steps by a shuffle scan (a reassociation of the twin's
    // sequential recurrence) and takes expf where the twin takes fast_exp (< 2 ulp apart). A
    // state runs through at most 150 steps of a contraction (|a_t| < 1), so its error is a few
    // ulps per step at most: 150 * 6e-8 ~ 1e-5 in the worst case, y adds 16 products on top.
    // 2e-5 relative to the largest value holds that worst case (measured: at most 1.5e-7).
    require_close("y", d_y.to_host(y_ref.shape()), y_ref, 2e-5, 0);
    require_close_or_zeros("h_saved", d_hs.to_host(hs_ref.shape()), hs_ref, 2e-5);
    if (c.h_last) require_close("h_last", d_hl.to_host(hl_ref.shape()), hl_ref, 2e-5, 0);
  }
}

TEST_CASE("emulated selective scan backward kernels match cpu::selective_scan_backward",
          "[cuda-emu][scan]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(32);
  for (const Case& c : kCases) {
    const kernels::ScanShape& s = c.s;
    INFO(describe(c));
    const BackwardCase bc(c, rng);
    const Inputs& in = bc.in;
    Grads ref{Tensor::empty({s.B, s.L, s.E}, DType::F32),
              Tensor::empty({s.B, s.L, s.E}, DType::F32),
              bc.dA0.clone(),
              Tensor::empty({s.B, s.L, s.N}, DType::F32),
              Tensor::empty({s.B, s.L, s.N}, DType::F32),
              bc.dD0.clone(),
              Tensor::empty({s.B, s.E, s.N}, DType::F32)};
    cpu::selective_scan_backward<float>(
        dims_of(s), in.u.data<float>(), in.delta.data<float>(), in.A.data<float>(),
        in.Bm.data<float>(), in.Cm.data<float>(), c.D ? in.D.data<float>() : nullptr,
        bc.h_saved.data<float>(), bc.dy.data<float>(), ref.du.data<float>(),
        ref.ddelta.data<float>(), ref.dA.data<float>(), ref.dBm.data<float>(),
        ref.dCm.data<float>(), c.D ? ref.dD.data<float>() : nullptr,
        c.dh0 ? ref.dh0.data<float>() : nullptr);
    const DeviceInputs d(in, c);
    const Grads got = backward_on_device(c, d, bc.h_saved, bc.dy, bc.dA0, bc.dD0);
    // Per element, du, ddelta and dh0 carry the adjoint through at most 150 steps of a
    // contraction and sum N <= 16 terms: 2e-5 as in forward. dBm, dCm add up to 33 channels in
    // 32-channel groups (the twin: the same groups, other order inside), dA and dD up to
    // B L = 150 steps in tiles and batch rows (the twin: sequentially); sqrt(150) u ~ 1e-6
    // typical, 150 u ~ 1e-5 worst case on the largest value: 5e-5 holds both with margin.
    // Measured: at most 3.7e-7 over all seven outputs.
    require_close("du", got.du, ref.du, 2e-5, 0);
    require_close("ddelta", got.ddelta, ref.ddelta, 2e-5, 0);
    require_close("dBm", got.dBm, ref.dBm, 5e-5, 0);
    require_close("dCm", got.dCm, ref.dCm, 5e-5, 0);
    require_close("dA", got.dA, ref.dA, 5e-5, 0);
    if (c.D) require_close("dD", got.dD, ref.dD, 5e-5, 0);
    if (c.dh0) require_close("dh0", got.dh0, ref.dh0, 2e-5, 0);
  }
}

TEST_CASE("emulated selective scan backward gives the same bits in every run and thread order",
          "[cuda-emu][scan]") {
  std::mt19937_64 rng(33);
  const Case& c = kCases[1];  // two channel groups, three chunks, every optional output
  const BackwardCase bc(c, rng);
  const DeviceInputs d(bc.in, c);
  auto run = [&](cuda_emu::Schedule order) {
    cuda_emu::ScheduleScope scope(order);
    return backward_on_device(c, d, bc.h_saved, bc.dy, bc.dA0, bc.dD0);
  };
  const Grads first = run(cuda_emu::Schedule::kShuffled);
  for (cuda_emu::Schedule order : {cuda_emu::Schedule::kShuffled, cuda_emu::Schedule::kForward,
                                   cuda_emu::Schedule::kReverse}) {
    INFO("schedule " << cuda_emu::schedule_name(order));
    const Grads again = run(order);
    CHECK(same_bits(again.du, first.du));
    CHECK(same_bits(again.ddelta, first.ddelta));
    CHECK(same_bits(again.dA, first.dA));
    CHECK(same_bits(again.dBm, first.dBm));
    CHECK(same_bits(again.dCm, first.dCm));
    CHECK(same_bits(again.dD, first.dD));
    CHECK(same_bits(again.dh0, first.dh0));
  }
}
