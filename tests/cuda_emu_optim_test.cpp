// The optimizer kernels (kernels/optim.cu) run under the CUDA-on-CPU emulator against their CPU
// twins cpu::adamw_update and cpu::sum_squares, in every thread order of cuda_emu_test_util.h.
// AdamW: several steps (bias corrections of step 1 and later steps), weight decay on and off,
// ragged sizes. Sum of squares: sizes below, at and beyond the twin's 8192-element block,
// several blocks with a ragged last one, and n = 0.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "backend/cpu/optim_cpu.h"
#include "cuda_emu_test_util.h"
#include "kernels/optim.cuh"
#include "test_compare.h"

namespace {

using ssmtune::DType;
using ssmtune::Tensor;
using namespace ssmtune::testing;  // DeviceArray, DeviceFloats, random_f32, require_*
namespace cpu = ssmtune::cpu;
namespace kernels = ssmtune::kernels;

struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
};
const AdamWHyper kHypers[] = {{1e-3, 0.9, 0.999, 1e-8, 0.0}, {3e-2, 0.8, 0.95, 1e-6, 0.1}};

}  // namespace

TEST_CASE("emulated adamw_update matches cpu::adamw_update to the bit over several steps",
          "[cuda-emu][optim]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(41);
  for (const AdamWHyper& h : kHypers) {
    for (const std::int64_t n : {1, 31, 257, 1000, 5000}) {
      INFO("n " << n << ", lr " << h.lr << ", weight decay " << h.weight_decay);
      Tensor param = random_f32({n}, rng, -1, 1);
      Tensor m = Tensor::zeros({n}, DType::F32), v = Tensor::zeros({n}, DType::F32);
      DeviceFloats d_param(param), d_m(m), d_v(v), d_grad(n);
      for (std::int64_t step = 1; step <= 3; ++step) {
        INFO("step " << step);
        const Tensor grad = random_f32({n}, rng, -1, 1);
        REQUIRE(cudaMemcpy(d_grad.get(), grad.data<float>(), std::size_t(n) * sizeof(float),
                           cudaMemcpyHostToDevice) == cudaSuccess);
        cpu::adamw_update<float>(n, param.data<float>(), grad.data<float>(), m.data<float>(),
                                 v.data<float>(), h.lr, h.beta1, h.beta2, h.eps, h.weight_decay,
                                 step);
        const kernels::AdamWScalars s =
            kernels::adamw_scalars(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, step);
        kernels::adamw_update(n, d_param.get(), d_grad.get(), d_m.get(), d_v.get(), s, nullptr);
        require_launch_ok();
        // The same float scalars (computed by the same double expressions) and the same float
        // operations in the same order; g++ at the x86-64 baseline has no FMA to contract
        // into, so the emulated run is the twin's to the bit, step after step (a GPU build
        // would differ by FMA contraction: an ulp or so per step).
        require_close("param", d_param.to_host({n}), param, kTwinExactRtol, 0);
        require_close("m", d_m.to_host({n}), m, kTwinExactRtol, 0);
        require_close("v", d_v.to_host({n}), v, kTwinExactRtol, 0);
      }
    }
  }
}

TEST_CASE("adamw_scalars of late steps give the twin's update", "[cuda-emu][optim]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  // Steps where beta^step underflows the bias corrections toward 1 and one in between: the
  // kernel's scalars must still be the twin's, which the bitwise update checks.
  std::mt19937_64 rng(42);
  const std::int64_t n = 100;
  for (const std::int64_t step : {10, 1000, 100000}) {
    INFO("step " << step);
    Tensor param = random_f32({n}, rng, -1, 1), m = random_f32({n}, rng, -0.1, 0.1);
    Tensor v = random_f32({n}, rng, 0, 0.01);
    const Tensor grad = random_f32({n}, rng, -1, 1);
    DeviceFloats d_param(param), d_m(m), d_v(v), d_grad(grad);
    cpu::adamw_update<float>(n, param.data<float>(), grad.data<float>(), m.data<float>(),
                             v.data<float>(), 1e-3, 0.9, 0.999, 1e-8, 0.01, step);
    kernels::adamw_update(n, d_param.get(), d_grad.get(), d_m.get(), d_v.get(),
                          kernels::adamw_scalars(1e-3, 0.9, 0.999, 1e-8, 0.01, step), nullptr);
    require_launch_ok();
    require_close("param", d_param.to_host({n}), param, kTwinExactRtol, 0);  // exact: as above
  }
}

TEST_CASE("emulated sum_squares matches cpu::sum_squares", "[cuda-emu][optim]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(43);
  // Below, at and just past one 8192-element block; five blocks with a ragged last one.
  for (const std::int64_t n : {1, 1000, 8191, 8192, 8193, 4 * 8192 + 77}) {
    INFO("n " << n);
    const Tensor x = random_f32({n}, rng, -3, 3);
    const double ref = cpu::sum_squares<float>(n, x.data<float>());
    DeviceFloats d_x(x);
    DeviceArray<double> d_out(1);
    DeviceArray<unsigned char> d_work(kernels::sum_squares_workspace_bytes(n));
    kernels::sum_squares(n, d_x.get(), d_out.get(), d_work.get(), nullptr);
    require_launch_ok();
    const double got = d_out.to_host()[0];
    // double(x)^2 of a float is exact (48 significant bits), so both add the same terms, the
    // blocks in the same order; only the association inside a block differs (a tree here, a
    // sequential loop in the twin). Positive terms: relative error <= 8192 u_double = 9e-13
    // for each block sum, hence for the total; 1e-12 covers it. Measured at most 1.5e-14.
    INFO("sum " << got << ", twin " << ref);
    REQUIRE(std::fabs(got - ref) <= 1e-12 * ref);
  }
  DeviceArray<double> d_out(1);
  kernels::sum_squares(0, nullptr, d_out.get(), nullptr, nullptr);
  require_launch_ok();
  REQUIRE(d_out.to_host()[0] == 0.0);  // the twin's empty sum
}
