// The conv1d kernels (kernels/conv1d.cu) run under the CUDA-on-CPU emulator against their CPU
// twins cpu::conv1d_forward / conv1d_backward (and cpu::silu_forward for the fused SiLU), in
// every thread order of cuda_emu_test_util.h. Shapes: the widths 2, 3 and 4 (and 1), ragged
// channel counts (not multiples of 32 or of a block), one-token sequences, and more rows than
// one dw chunk (kConv1dDwChunkRows) and than one grid of blocks.
#include <catch2/catch.hpp>
#include <random>

#include "backend/cpu/ops_cpu.h"
#include "cuda_emu_test_util.h"
#include "kernels/conv1d.cuh"
#include "test_compare.h"

namespace {

using ssmtune::DType;
using ssmtune::Tensor;
using ssmtune::testing::DeviceFloats;
using ssmtune::testing::random_f32;
using ssmtune::testing::require_close;
using ssmtune::testing::require_launch_ok;
namespace cpu = ssmtune::cpu;
namespace kernels = ssmtune::kernels;

struct ConvShape {
  std::int64_t B, L, E;
  int K;
  bool bias;
};
const ConvShape kShapes[] = {{1, 1, 1, 4, true},   {2, 5, 33, 2, true},    {3, 9, 70, 3, false},
                             {2, 70, 40, 4, true}, {1, 130, 300, 4, true}, {4, 3, 17, 1, true}};

}  // namespace

TEST_CASE("emulated conv1d forward kernel (and fused SiLU) matches cpu::conv1d_forward",
          "[cuda-emu][conv1d]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(21);
  for (const ConvShape& s : kShapes) {
    INFO("B " << s.B << ", L " << s.L << ", E " << s.E << ", K " << s.K << ", bias " << s.bias);
    const Tensor x = random_f32({s.B, s.L, s.E}, rng, -2, 2);
    const Tensor w = random_f32({s.E, s.K}, rng, -1, 1);
    const Tensor bias = random_f32({s.E}, rng, -1, 1);
    Tensor c_ref = Tensor::empty(x.shape(), DType::F32),
           u_ref = Tensor::empty(x.shape(), DType::F32);
    cpu::conv1d_forward<float>(s.B, s.L, s.E, s.K, x.data<float>(), w.data<float>(),
                               s.bias ? bias.data<float>() : nullptr, c_ref.data<float>());
    cpu::silu_forward<float>(x.numel(), c_ref.data<float>(), u_ref.data<float>());
    DeviceFloats d_x(x), d_w(w), d_b(bias), d_c(x.numel()), d_u(x.numel());
    kernels::conv1d_forward(s.B, s.L, s.E, s.K, d_x.get(), d_w.get(), s.bias ? d_b.get() : nullptr,
                            d_c.get(), d_u.get(), nullptr);
    require_launch_ok();
    // Both add the bias and then the K <= 4 taps in the same order, so the emulated run is
    // exact; on a GPU nvcc's FMA contraction moves a few ulps (u = 6e-8): 1e-6 relative to the
    // largest output covers that with margin.
    require_close("c", d_c.to_host(x.shape()), c_ref, 1e-6, 0);
    require_close("u", d_u.to_host(x.shape()), u_ref, 1e-6, 0);
  }
}

TEST_CASE("emulated conv1d backward kernels match cpu::conv1d_backward", "[cuda-emu][conv1d]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(22);
  for (const ConvShape& s : kShapes) {
    INFO("B " << s.B << ", L " << s.L << ", E " << s.E << ", K " << s.K << ", bias " << s.bias);
    const Tensor dc = random_f32({s.B, s.L, s.E}, rng, -1, 1);
    const Tensor x = random_f32({s.B, s.L, s.E}, rng, -2, 2);
    const Tensor w = random_f32({s.E, s.K}, rng, -1, 1);
    const Tensor dw0 = random_f32({s.E, s.K}, rng, -1, 1);  // accumulated into: not zero
    const Tensor db0 = random_f32({s.E}, rng, -1, 1);
    Tensor dx_ref = Tensor::empty(x.shape(), DType::F32);
    Tensor dw_ref = dw0.clone(), db_ref = db0.clone();
    cpu::conv1d_backward<float>(s.B, s.L, s.E, s.K, dc.data<float>(), x.data<float>(),
                                w.data<float>(), dx_ref.data<float>(), dw_ref.data<float>(),
                                s.bias ? db_ref.data<float>() : nullptr);
    DeviceFloats d_dc(dc), d_x(x), d_w(w), d_dx(x.numel()), d_dw(dw0), d_db(db0);
    DeviceFloats d_work(kernels::conv1d_backward_workspace_floats(s.B, s.L, s.E, s.K));
    kernels::conv1d_backward(s.B, s.L, s.E, s.K, d_dc.get(), d_x.get(), d_w.get(), d_dx.get(),
                             d_dw.get(), s.bias ? d_db.get() : nullptr, d_work.get(), nullptr);
    require_launch_ok();
    require_close("dx", d_dx.to_host(x.shape()), dx_ref, 1e-6, 0);
    // dw, dbias: sums over B L <= 520 rows, chunked (64 rows, then the chunks) here and
    // sequential in the twin: sqrt(520) u ~ 3e-6 relative typical; 2e-5 leaves a margin.
    require_close("dw", d_dw.to_host({s.E, s.K}), dw_ref, 2e-5, 0);
    require_close("dbias", d_db.to_host({s.E}), db_ref, 2e-5, 0);

    // A frozen conv weight: dw null (the bias's gradient still formed when there is one).
    DeviceFloats d_dx2(x.numel()), d_db2(db0);
    kernels::conv1d_backward(s.B, s.L, s.E, s.K, d_dc.get(), d_x.get(), d_w.get(), d_dx2.get(),
                             nullptr, s.bias ? d_db2.get() : nullptr, d_work.get(), nullptr);
    require_launch_ok();
    require_close("dx, dw null", d_dx2.to_host(x.shape()), dx_ref, 1e-6, 0);
    require_close("dbias, dw null", d_db2.to_host({s.E}), s.bias ? db_ref : db0, 2e-5, 0);
  }
}
