// The MoE routing kernels (kernels/moe.cu) on the CUDA-on-CPU emulator against their CPU twins
// (cpu::moe_router_forward, moe_router_backward, moe_dispatch, moe_dispatch_backward,
// moe_combine, moe_combine_backward in lib/backend/cpu/moe_cpu.cpp) in every thread order; the
// same bits on every run; the emulated CUDA backend's MoE ops against the CPU backend's; and
// what the CUDA backend refuses or survives (slots out of range).
//
// Tolerances. The kernels do the twins' operations in the twins' order (the exps and their sum
// in expert order, the j loops of dispatch and combine), so on the emulator (g++ without FMA
// contraction, glibc expf) every result but dweights is the twins' bits: kTwinExactRtol, 0
// there (on a GPU 1e-6: nvcc contracts w * y + acc into an FMA and its expf is within 2 ulp).
// Experts are compared exactly: the inputs have exact ties, which both sides break by index,
// and no near ones. dweights is a double block reduction against the twin's sequential double
// sum of the same D products (exact in double: two floats' product has 48 bits); the two sums
// differ by ~D 2^-53 relative to sum |terms|, and rounding them to float then moves a result by
// one float ulp at most: 2^-23 of the largest entry (1.2e-7 normwise), 2.5e-7 with margin.
// Measured on the emulator over these cases: every result the twins' bits, dweights included.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_emu_test_util.h"
#include "kernels/moe.cuh"
#include "moe_reference.h"
#include "test_compare.h"

namespace {

using ssmtune::DType;
using ssmtune::Tensor;
using ssmtune::testing::DeviceArray;
using ssmtune::testing::DeviceFloats;
using ssmtune::testing::random_f32;
using ssmtune::testing::require_close_or_zero;
using ssmtune::testing::require_launch_ok;
using ssmtune::testing::same_bits;
using ssmtune::testing::RouterCase;
using ssmtune::testing::SlotCase;
namespace cpu = ssmtune::cpu;
namespace kernels = ssmtune::kernels;

constexpr double kExact = ssmtune::testing::kTwinExactRtol;
constexpr double kDweightsTol = 2.5e-7 + ssmtune::testing::kTwinExactRtol;

std::vector<std::int64_t> ints(const Tensor& t) {
  const std::int64_t* p = t.data<std::int64_t>();
  return {p, p + t.numel()};
}
Tensor ints_tensor(const std::vector<std::int64_t>& v, const ssmtune::Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::I64);
  std::memcpy(t.raw(), v.data(), t.nbytes());
  return t;
}
// One router case's inputs (host F32) and the twin's results. Even cases carry dprobs_extra.
struct RouterProblem {
  RouterCase c;
  Tensor logits, dweights, extra;
  Tensor probs, weights, experts, dlogits;  // the twin's
  RouterProblem(const RouterCase& c_, bool with_extra, std::mt19937_64& rng) : c(c_) {
    logits = ssmtune::testing::router_logits(c, rng).to(DType::F32);
    dweights = random_f32({c.rows, c.k}, rng, -1, 1);
    if (with_extra) extra = random_f32({c.rows, c.X}, rng, -1, 1);
    probs = Tensor::empty({c.rows, c.X}, DType::F32),
    dlogits = Tensor::empty(probs.shape(), DType::F32);
    weights = Tensor::empty({c.rows, c.k}, DType::F32),
    experts = Tensor::empty({c.rows, c.k}, DType::I64);
    const cpu::MoeRouterDims d{c.rows, c.X, c.k};
    cpu::moe_router_forward<float>(d, logits.data<float>(), probs.data<float>(),
                                   weights.data<float>(), experts.data<std::int64_t>());
    cpu::moe_router_backward<float>(
        d, dweights.data<float>(), probs.data<float>(), experts.data<std::int64_t>(),
        extra.defined() ? extra.data<float>() : nullptr, dlogits.data<float>());
  }
};

struct RouterRun {
  Tensor probs, weights, dlogits;
  std::vector<std::int64_t> experts;
};
RouterRun run_router_kernels(const RouterProblem& p) {
  const kernels::MoeRouterShape s{p.c.rows, p.c.X, p.c.k};
  DeviceFloats logits(p.logits), dweights(p.dweights), probs(p.probs.numel());
  DeviceFloats weights(p.weights.numel()), dlogits(p.probs.numel());
  DeviceFloats extra(p.extra.defined() ? p.extra : Tensor::zeros({1}, DType::F32));
  DeviceArray<std::int64_t> experts(p.experts.numel());
  kernels::moe_router_forward(s, logits.get(), probs.get(), weights.get(), experts.get(), nullptr);
  require_launch_ok();
  kernels::moe_router_backward(s, dweights.get(), probs.get(), experts.get(),
                               p.extra.defined() ? extra.get() : nullptr, dlogits.get(), nullptr);
  require_launch_ok();
  return {probs.to_host(p.probs.shape()), weights.to_host(p.weights.shape()),
          dlogits.to_host(p.probs.shape()), experts.to_host()};
}

// One dispatch/combine case's inputs (host F32, slot grouped by expert) and the twin's results.
struct SlotProblem {
  SlotCase c;
  Tensor slot, x, dxs, dx0, ys, weights, dout;
  Tensor xs, dx, out, dys, dweights;  // the twin's; dx = dx0 + the dispatch backward
  SlotProblem(const SlotCase& c_, std::mt19937_64& rng) : c(c_) {
    const std::int64_t n = c.rows * c.k;
    slot = ssmtune::testing::random_slot(c, rng);
    x = random_f32({c.rows, c.D}, rng, -1, 1), dxs = random_f32({n, c.D}, rng, -1, 1);
    dx0 = random_f32({c.rows, c.D}, rng, -1, 1), ys = random_f32({n, c.D}, rng, -1, 1);
    weights = random_f32({c.rows, c.k}, rng, 0, 1), dout = random_f32({c.rows, c.D}, rng, -1, 1);
    xs = Tensor::empty({n, c.D}, DType::F32), dx = dx0.clone();
    out = Tensor::empty({c.rows, c.D}, DType::F32), dys = Tensor::empty({n, c.D}, DType::F32);
    dweights = Tensor::empty({c.rows, c.k}, DType::F32);
    const cpu::MoeSlotDims d{c.rows, c.k, c.D};
    const std::int64_t* sl = slot.data<std::int64_t>();
    cpu::moe_dispatch<float>(d, x.data<float>(), sl, xs.data<float>());
    cpu::moe_dispatch_backward<float>(d, dxs.data<float>(), sl, dx.data<float>());
    cpu::moe_combine<float>(d, ys.data<float>(), sl, weights.data<float>(), out.data<float>());
    cpu::moe_combine_backward<float>(d, dout.data<float>(), ys.data<float>(), sl,
                                     weights.data<float>(), dys.data<float>(),
                                     dweights.data<float>());
  }
};

struct SlotRun {
  Tensor xs, dx, out, dys, dweights;
};
SlotRun run_slot_kernels(const SlotProblem& p) {
  const kernels::MoeSlotShape s{p.c.rows, p.c.k, p.c.D};
  DeviceArray<std::int64_t> slot(ints(p.slot));
  DeviceFloats x(p.x), xs(p.xs.numel()), dxs(p.dxs), dx(p.dx0), ys(p.ys), weights(p.weights);
  DeviceFloats out(p.out.numel()), dout(p.dout), dys(p.dys.numel()), dweights(p.dweights.numel());
  kernels::moe_dispatch(s, x.get(), slot.get(), xs.get(), nullptr);
  require_launch_ok();
  kernels::moe_dispatch_backward(s, dxs.get(), slot.get(), dx.get(), nullptr);
  require_launch_ok();
  kernels::moe_combine(s, ys.get(), slot.get(), weights.get(), out.get(), nullptr);
  require_launch_ok();
  kernels::moe_combine_backward(s, dout.get(), ys.get(), slot.get(), weights.get(), dys.get(),
                                dweights.get(), nullptr);
  require_launch_ok();
  return {xs.to_host(p.xs.shape()), dx.to_host(p.dx.shape()), out.to_host(p.out.shape()),
          dys.to_host(p.dys.shape()), dweights.to_host(p.dweights.shape())};
}

}  // namespace

TEST_CASE(
    "emulated MoE router kernels match cpu::moe_router_forward and backward in every "
    "thread order",
    "[cuda-emu][moe]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(61);
  bool with_extra = true;
  for (const RouterCase& c : ssmtune::testing::router_cases()) {
    INFO(c << (with_extra ? ", with" : ", without") << " dprobs_extra");
    const RouterProblem p(c, with_extra, rng);
    const RouterRun r = run_router_kernels(p);
    ssmtune::testing::require_close("probs", r.probs, p.probs, kExact, 0);
    ssmtune::testing::require_close("weights", r.weights, p.weights, kExact, 0);
    CHECK(r.experts == ints(p.experts));
    require_close_or_zero("dlogits", r.dlogits, p.dlogits, kExact);
    with_extra = !with_extra;
  }
}

TEST_CASE(
    "emulated MoE dispatch and combine kernels match their CPU twins in every thread "
    "order",
    "[cuda-emu][moe]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(62);
  for (const SlotCase& c : ssmtune::testing::slot_cases()) {
    INFO(c);
    const SlotProblem p(c, rng);
    const SlotRun r = run_slot_kernels(p);
    CHECK(same_bits(r.xs, p.xs));  // copies: the same bits on any device
    ssmtune::testing::require_close("dx", r.dx, p.dx, kExact, 0);
    ssmtune::testing::require_close("out", r.out, p.out, kExact, 0);
    ssmtune::testing::require_close("dys", r.dys, p.dys, kExact, 0);
    ssmtune::testing::require_close("dweights", r.dweights, p.dweights, kDweightsTol, 0);
  }
}

TEST_CASE("emulated MoE kernels give the same bits on every run and thread order",
          "[cuda-emu][moe]") {
  std::mt19937_64 rng(63);
  const RouterProblem rp({9, 37, 3}, true, rng);
  const SlotProblem sp({10, 16, 2, 300}, rng);  // dweights: three 128-column passes a thread
  RouterRun r0;
  SlotRun s0;
  {
    cuda_emu::ScheduleScope scope(ssmtune::testing::kSchedules.front());
    r0 = run_router_kernels(rp), s0 = run_slot_kernels(sp);
  }
  for (const cuda_emu::Schedule order : ssmtune::testing::kSchedules) {
    cuda_emu::ScheduleScope scope(order, 7);
    INFO("schedule " << cuda_emu::schedule_name(order));
    const RouterRun r = run_router_kernels(rp);
    const SlotRun s = run_slot_kernels(sp);
    CHECK(same_bits(r.probs, r0.probs));
    CHECK(same_bits(r.weights, r0.weights));
    CHECK(r.experts == r0.experts);
    CHECK(same_bits(r.dlogits, r0.dlogits));
    CHECK(same_bits(s.dx, s0.dx));
    CHECK(same_bits(s.out, s0.out));
    CHECK(same_bits(s.dweights, s0.dweights));
  }
}

TEST_CASE("the emulated CUDA backend's MoE ops match the CPU backend's",
          "[cuda-emu][backend][moe]") {
  auto cpu_be = ssmtune::make_cpu_backend();
  auto gpu_be = ssmtune::make_cuda_backend();
  std::mt19937_64 rng(64);
  for (const SlotCase& c : ssmtune::testing::slot_cases()) {
    INFO(c);
    const std::int64_t n = c.rows * c.k;
    const Tensor logits = random_f32({c.rows, c.X}, rng, -2, 2);
    const Tensor extra = random_f32({c.rows, c.X}, rng, -1, 1);
    const Tensor x = random_f32({c.rows, c.D}, rng, -1, 1);
    const Tensor ys = random_f32({n, c.D}, rng, -1, 1),
                 dout = random_f32({c.rows, c.D}, rng, -1, 1);
    const Tensor dw = random_f32({c.rows, c.k}, rng, -1, 1);
    // Each backend routes with its own router, groups by its experts (the same, checked), and
    // gets its own copies, so the GPU side moves its tensors to the device.
    struct Side {
      Tensor probs, weights, experts, slot, xs, dx, out, dys, dweights, dlogits;
    };
    auto side = [&](ssmtune::Backend& be) {
      Side s;
      s.probs = be.empty({c.rows, c.X}, DType::F32),
      s.weights = be.empty({c.rows, c.k}, DType::F32);
      s.experts = be.empty({c.rows, c.k}, DType::I64);
      be.moe_router_forward(logits.clone(), c.k, s.probs, s.weights, s.experts);
      s.slot = ssmtune::testing::group_by_expert(s.experts.clone(), c.X);  // on the host
      s.xs = be.empty({n, c.D}, DType::F32), s.dx = be.zeros({c.rows, c.D}, DType::F32);
      be.moe_dispatch(x.clone(), s.slot, s.xs);
      be.moe_dispatch_backward(s.xs, s.slot, s.dx);  // slot now on the backend's device
      s.out = be.empty({c.rows, c.D}, DType::F32);
      be.moe_combine(ys.clone(), s.slot, s.weights, s.out);
      s.dys = be.empty({n, c.D}, DType::F32), s.dweights = be.empty({c.rows, c.k}, DType::F32);
      be.moe_combine_backward(dout.clone(), ys.clone(), s.slot, s.weights, s.dys, s.dweights);
      s.dlogits = be.empty({c.rows, c.X}, DType::F32);
      be.moe_router_backward(dw.clone(), s.probs, s.experts, extra.clone(), s.dlogits);
      return s;
    };
    const Side a = side(*cpu_be), g = side(*gpu_be);
    REQUIRE(g.out.device() == ssmtune::Device::CUDA);
    REQUIRE(g.slot.device() == ssmtune::Device::CUDA);
    CHECK(ints(g.experts.clone()) == ints(a.experts));
    CHECK(same_bits(g.xs.clone(), a.xs));
    ssmtune::testing::require_close("probs", g.probs.clone(), a.probs, kExact, 0);
    ssmtune::testing::require_close("dx", g.dx.clone(), a.dx, kExact, 0);
    ssmtune::testing::require_close("out", g.out.clone(), a.out, kExact, 0);
    ssmtune::testing::require_close("dys", g.dys.clone(), a.dys, kExact, 0);
    ssmtune::testing::require_close("dweights", g.dweights.clone(), a.dweights, kDweightsTol, 0);
    require_close_or_zero("dlogits", g.dlogits.clone(), a.dlogits, kExact);
  }
}

TEST_CASE(
    "the CUDA backend's MoE ops check slots on the host, refuse over 1024 experts and "
    "F64, and a bad slot already on the GPU gives NaN rows, not a fault",
    "[cuda-emu][backend][moe]") {
  auto cpu_be = ssmtune::make_cpu_backend();
  auto gpu_be = ssmtune::make_cuda_backend();
  std::mt19937_64 rng(65);
  const std::vector<std::int64_t> good = {7, 6, 5, 4, 3, 2, 1, 0};
  std::vector<std::int64_t> bad = good;
  bad[3] = 8;  // slot[1, 1]
  const Tensor ys = random_f32({8, 3}, rng, -1, 1), w = random_f32({4, 2}, rng, 0, 1);
  Tensor out = gpu_be->empty({4, 3}, DType::F32);
  CHECK_THROWS_WITH(gpu_be->moe_combine(ys, ints_tensor(bad, {4, 2}), w, out),
                    Catch::Contains("cuda backend: moe_combine: slot[1, 1] = 8 is outside [0, 8)"));

  Tensor big = gpu_be->zeros({1, 1025}, DType::F32), probs = gpu_be->zeros({1, 1025}, DType::F32);
  Tensor w1 = gpu_be->zeros({1, 1}, DType::F32), e1 = gpu_be->zeros({1, 1}, DType::I64);
  CHECK_THROWS_WITH(gpu_be->moe_router_forward(big, 1, probs, w1, e1),
                    Catch::Contains("moe_router_forward: 1025 experts, over the kernels' 1024"));
  Tensor out64 = Tensor::zeros({4, 3}, DType::F64);
  CHECK_THROWS_WITH(
      gpu_be->moe_combine(ys.to(DType::F64), ints_tensor(good, {4, 2}), w.to(DType::F64), out64),
      Catch::Contains("the CUDA backend computes in F32"));

  // A slot put on the GPU without passing through an op is not read back: the kernels neither
  // fault nor write outside xs; the rows that use the bad entry come out NaN.
  Tensor slot_dev = gpu_be->empty({4, 2}, DType::I64);
  gpu_be->copy(ints_tensor(bad, {4, 2}), slot_dev);
  REQUIRE(slot_dev.device() == ssmtune::Device::CUDA);
  gpu_be->moe_combine(ys, slot_dev, w, out);
  Tensor xs = gpu_be->empty({8, 3}, DType::F32);
  gpu_be->moe_dispatch(random_f32({4, 3}, rng, -1, 1), slot_dev, xs);
  gpu_be->synchronize();
  Tensor ref = Tensor::empty({4, 3}, DType::F32);
  cpu_be->moe_combine(ys, ints_tensor(good, {4, 2}), w, ref);
  const Tensor got = out.clone();
  for (std::int64_t t = 0; t < 4; ++t)
    for (std::int64_t c = 0; c < 3; ++c) {
      const float v = got.data<float>()[t * 3 + c];
      if (t == 1)
        CHECK(std::isnan(v));
      else
        CHECK(v == ref.data<float>()[t * 3 + c]);
    }
}
