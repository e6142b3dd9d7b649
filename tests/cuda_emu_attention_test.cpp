// The attention kernels (kernels/attention.cu) on the CUDA-on-CPU emulator against their CPU
// twins (cpu::attention_forward / attention_backward) in every thread order, the emulated CUDA
// backend's attention ops against the CPU backend's, and the same bits on every run; each with
// as many queries as keys (attention_cases()) and with fewer (attention_offset_cases(): the
// last Lq positions, Lq = 1 included, Lq not a multiple of the 32-row tile).
//
// Tolerances (normwise, test_compare.h). Both sides compute in float32 from the same inputs,
// but tile differently (the twin 64 x 64, the kernels 32 x 32) and add in other orders: the
// online softmax rescales at other points, the kernels sum each row's exp partially per lane
// then by a butterfly, and Drow is a butterfly sum. Each is a reordering of sums of <= 150
// terms (sqrt(150) u ~ 7e-7 typical, 150 u ~ 9e-6 worst) behind exp of scores of order 1.
// Measured: at most 1.3e-7 (out), 9.5e-7 (lse, absolute) and 6.0e-7 (dq, dk, dv) over
// attention_cases(), 2.6e-7, 9.5e-7 and 7.4e-7 over attention_offset_cases(); 5e-6 is ~5 times
// the largest and far below the O(1) error of a missing barrier or a wrong index (device memory
// starts as NaN, so an element never written fails too).
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "attention_reference.h"
#include "backend/backend.h"
#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_emu_test_util.h"
#include "kernels/attention.cuh"
#include "test_compare.h"

namespace {

using ssmtune::DType;
using ssmtune::Tensor;
using ssmtune::testing::AttentionCase;
using ssmtune::testing::DeviceArray;
using ssmtune::testing::DeviceFloats;
using ssmtune::testing::random_f32;
using ssmtune::testing::require_close;
using ssmtune::testing::require_close_or_zero;
using ssmtune::testing::require_launch_ok;
using ssmtune::testing::same_bits;
using ssmtune::testing::require_lse_close;
namespace cpu = ssmtune::cpu;
namespace kernels = ssmtune::kernels;

constexpr double kTol = 5e-6;

// One case's inputs (host F32) and the twin's results.
struct Problem {
  AttentionCase c;
  Tensor q, k, v, mask, dout;
  double scale;
  Tensor out, lse, dq, dk, dv;  // the CPU twin's
  Problem(const AttentionCase& c_, std::mt19937_64& rng) : c(c_) {
    q = random_f32({c.B, c.Lq(), c.H, c.hd}, rng, -1, 1);
    k = random_f32({c.B, c.L, c.KV, c.hd}, rng, -1, 1);
    v = random_f32({c.B, c.L, c.KV, c.hd}, rng, -1, 1);
    dout = random_f32({c.B, c.Lq(), c.H, c.hd}, rng, -1, 1);
    mask = ssmtune::testing::attention_mask(c);
    scale = 1.0 / std::sqrt(double(c.hd));
    out = Tensor::empty(q.shape(), DType::F32);
    lse = Tensor::empty({c.B, c.H, c.Lq()}, DType::F32);
    dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32);
    dv = Tensor::empty(k.shape(), DType::F32);
    const cpu::AttentionDims d{c.B, c.Lq(), c.L, c.H, c.KV, c.hd};
    const std::int64_t* m = mask_or_null();
    cpu::attention_forward<float>(d, q.data<float>(), k.data<float>(), v.data<float>(), m, scale,
                                  out.data<float>(), lse.data<float>());
    cpu::attention_backward<float>(d, q.data<float>(), k.data<float>(), v.data<float>(), m, scale,
                                   out.data<float>(), lse.data<float>(), dout.data<float>(),
                                   dq.data<float>(), dk.data<float>(), dv.data<float>());
  }
  const std::int64_t* mask_or_null() const {
    return mask.defined() ? mask.data<std::int64_t>() : nullptr;
  }
  std::vector<std::int64_t> mask_vector() const {
    const std::int64_t* m = mask_or_null();
    return m ? std::vector<std::int64_t>(m, m + mask.numel()) : std::vector<std::int64_t>{0};
  }
  kernels::AttentionShape shape() const { return {c.B, c.Lq(), c.L, c.H, c.KV, c.hd}; }
};

// The kernels' results for one problem.
struct KernelRun {
  Tensor out, lse, dq, dk, dv;
};
KernelRun run_kernels(const Problem& p) {
  const kernels::AttentionShape s = p.shape();
  DeviceFloats q(p.q), k(p.k), v(p.v), dout(p.dout), out(p.q.numel()), lse(p.lse.numel());
  DeviceFloats dq(p.q.numel()), dk(p.k.numel()), dv(p.k.numel());
  DeviceFloats ws(kernels::attention_backward_workspace_floats(s));
  DeviceArray<std::int64_t> mask(p.mask_vector());
  const std::int64_t* m = p.mask.defined() ? mask.get() : nullptr;
  kernels::attention_forward(s, q.get(), k.get(), v.get(), m, float(p.scale), out.get(),
                             lse.get(), nullptr);
  require_launch_ok();
  kernels::attention_backward(s, q.get(), k.get(), v.get(), m, float(p.scale), out.get(),
                              lse.get(), dout.get(), dq.get(), dk.get(), dv.get(), ws.get(),
                              nullptr);
  require_launch_ok();
  return {out.to_host(p.q.shape()), lse.to_host(p.lse.shape()), dq.to_host(p.q.shape()),
          dk.to_host(p.k.shape()), dv.to_host(p.k.shape())};
}

// The kernels against their CPU twins over `cases`, in every thread order.
void check_kernels_against_twins(const std::vector<AttentionCase>& cases, std::uint64_t seed) {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(seed);
  for (const AttentionCase& c : cases) {
    INFO(c);
    const Problem p(c, rng);
    const KernelRun r = run_kernels(p);
    require_close("out", r.out, p.out, kTol, 0);
    require_lse_close("lse", r.lse, p.lse, kTol);
    require_close_or_zero("dq", r.dq, p.dq, kTol);
    require_close_or_zero("dk", r.dk, p.dk, kTol);
    require_close_or_zero("dv", r.dv, p.dv, kTol);
  }
}

// The emulated CUDA backend's ops against the CPU backend's over `cases`.
void check_backend_against_cpu(const std::vector<AttentionCase>& cases, std::uint64_t seed) {
  auto cpu_be = ssmtune::make_cpu_backend();
  auto gpu_be = ssmtune::make_cuda_backend();
  std::mt19937_64 rng(seed);
  for (const AttentionCase& c : cases) {
    INFO(c);
    const Problem p(c, rng);
    // Each backend gets its own copies, so the GPU side moves its tensors to the device.
    struct Side {
      Tensor q, k, v, mask, dout, out, lse, dq, dk, dv;
    };
    auto side = [&](ssmtune::Backend& be) {
      Side s{p.q.clone(), p.k.clone(), p.v.clone(), p.mask.defined() ? p.mask.clone() : Tensor(),
             p.dout.clone(), be.empty(p.q.shape(), DType::F32), be.empty(p.lse.shape(), DType::F32),
             be.empty(p.q.shape(), DType::F32), be.empty(p.k.shape(), DType::F32),
             be.empty(p.k.shape(), DType::F32)};
      be.attention_forward(s.q, s.k, s.v, s.mask, p.scale, s.out, s.lse);
      be.attention_backward(s.q, s.k, s.v, s.mask, p.scale, s.out, s.lse, s.dout, s.dq, s.dk,
                            s.dv);
      return s;
    };
    const Side a = side(*cpu_be), g = side(*gpu_be);
    REQUIRE(g.out.device() == ssmtune::Device::CUDA);
    require_close("out", g.out.clone(), a.out, kTol, 0);
    require_lse_close("lse", g.lse.clone(), a.lse, kTol);
    require_close_or_zero("dq", g.dq.clone(), a.dq, kTol);
    require_close_or_zero("dk", g.dk.clone(), a.dk, kTol);
    require_close_or_zero("dv", g.dv.clone(), a.dv, kTol);
  }
}

}  // namespace

TEST_CASE("emulated attention kernels match cpu::attention_forward and backward in every "
          "thread order",
          "[cuda-emu][attention]") {
  check_kernels_against_twins(ssmtune::testing::attention_cases(), 41);
}

TEST_CASE("emulated attention kernels with fewer queries than keys match their CPU twins in "
          "every thread order",
          "[cuda-emu][attention]") {
  check_kernels_against_twins(ssmtune::testing::attention_offset_cases(), 44);
}

TEST_CASE("emulated attention kernels give the same bits on every run and thread order",
          "[cuda-emu][attention]") {
  std::mt19937_64 rng(42);
  // Several query and key tiles, groups of two heads, a padded key in the middle; as many
  // queries as keys, then 70 queries after 30 keys (query tiles straddle key tiles).
  using ssmtune::testing::KeyMask;
  for (const AttentionCase& c : {AttentionCase{2, 100, 4, 2, 40, KeyMask::kMiddleZero},
                                 AttentionCase{2, 100, 4, 2, 40, KeyMask::kMiddleZero, 30}}) {
    INFO(c);
    const Problem p(c, rng);
    KernelRun first;
    {
      cuda_emu::ScheduleScope scope(ssmtune::testing::kSchedules.front());
      first = run_kernels(p);
    }
    for (const cuda_emu::Schedule order : ssmtune::testing::kSchedules) {
      cuda_emu::ScheduleScope scope(order, 7);
      INFO("schedule " << cuda_emu::schedule_name(order));
      const KernelRun again = run_kernels(p);
      CHECK(same_bits(again.out, first.out));
      CHECK(same_bits(again.lse, first.lse));
      CHECK(same_bits(again.dq, first.dq));
      CHECK(same_bits(again.dk, first.dk));
      CHECK(same_bits(again.dv, first.dv));
    }
  }
}

TEST_CASE("the emulated CUDA backend's attention ops match the CPU backend's",
          "[cuda-emu][backend][attention]") {
  check_backend_against_cpu(ssmtune::testing::attention_cases(), 43);
}

TEST_CASE("the emulated CUDA backend's attention ops with fewer queries than keys match the "
          "CPU backend's",
          "[cuda-emu][backend][attention]") {
  check_backend_against_cpu(ssmtune::testing::attention_offset_cases(), 45);
}

TEST_CASE("the CUDA backend refuses a head dim over 128 with the shared checks' wording",
          "[cuda-emu][backend][attention]") {
  auto gpu_be = ssmtune::make_cuda_backend();
  Tensor q = gpu_be->zeros({1, 2, 1, 129}, DType::F32), out = gpu_be->zeros(q.shape(), DType::F32);
  Tensor lse = gpu_be->zeros({1, 1, 2}, DType::F32);
  CHECK_THROWS_WITH(gpu_be->attention_forward(q, q, q, Tensor(), 1.0, out, lse),
                    Catch::Contains("cuda backend: attention_forward: head dim 129"));
}

TEST_CASE("the CUDA backend refuses more queries than keys with the shared checks' wording",
          "[cuda-emu][backend][attention]") {
  auto gpu_be = ssmtune::make_cuda_backend();
  Tensor q = gpu_be->zeros({1, 3, 2, 8}, DType::F32), k = gpu_be->zeros({1, 2, 1, 8}, DType::F32);
  Tensor out = gpu_be->zeros(q.shape(), DType::F32), lse = gpu_be->zeros({1, 2, 3}, DType::F32);
  CHECK_THROWS_WITH(gpu_be->attention_forward(q, k, k, Tensor(), 1.0, out, lse),
                    Catch::Contains("cuda backend: attention_forward: q has 3 steps, more than "
                                    "the 2 of k"));
}
