// Frozen base weights held in bf16 (model/weight_storage.h) on the CUDA backend compiled against
// the CUDA-on-CPU emulator: the widening kernel from_bf16 (kernels/tensor_ops.cu) against its
// twin core/dtype.h bf16_to_f32 on every bf16 bit pattern, the bf16-table embedding kernel
// against cpu::embedding_forward_bf16, and the backend ops against the CPU backend.
#include <array>
#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_emu_test_util.h"
#include "kernels/tensor_ops.cuh"
#include "kernels/token_ops.cuh"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {

// Every bf16 bit pattern: zeros, subnormals, normals, infinities and NaNs of both signs.
std::vector<std::uint16_t> all_bf16() {
  std::vector<std::uint16_t> v(65536);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::uint16_t(i);
  return v;
}

std::vector<std::uint32_t> bits_of(const Tensor& f32) {
  std::vector<std::uint32_t> bits(std::size_t(f32.numel()));
  std::memcpy(bits.data(), f32.data<float>(), bits.size() * 4);
  return bits;
}

}  // namespace

TEST_CASE("emulated from_bf16 widens every bf16 bit pattern as core/dtype.h's bf16_to_f32",
          "[cuda-emu][bf16-frozen]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  const std::vector<std::uint16_t> in = all_bf16();
  Tensor ref = Tensor::empty({65536}, DType::F32);
  for (std::size_t i = 0; i < in.size(); ++i) ref.data<float>()[i] = bf16_to_f32(in[i]);
  DeviceArray<std::uint16_t> d_in(in);
  DeviceFloats d_out(65536);
  kernels::from_bf16(65536, d_in.get(), d_out.get(), nullptr);
  require_launch_ok();
  // Bits, not values: NaN payloads and signed zeros must come through too.
  REQUIRE(bits_of(d_out.to_host({65536})) == bits_of(ref));
}

TEST_CASE("emulated embedding_forward with a bf16 table matches cpu::embedding_forward_bf16",
          "[cuda-emu][bf16-frozen][token-ops]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  std::mt19937_64 rng(41);
  // One token; V < n (repeats); ragged D.
  const std::array<std::int64_t, 3> shapes[] = {{1, 1, 1}, {17, 9, 100}, {40, 13, 257}};
  for (const auto& [n, V, D] : shapes) {
    INFO("n " << n << ", V " << V << ", D " << D);
    std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
    for (auto& id : ids) id = std::int64_t(rng() % std::uint64_t(V));
    const Tensor table = random_f32({V, D}, rng, -1, 1).to(DType::BF16);
    Tensor ref = Tensor::empty({n, D}, DType::F32);
    cpu::embedding_forward_bf16<float>(
        n, D, ids.data(), static_cast<const std::uint16_t*>(table.raw()), ref.data<float>());
    const auto* t16 = static_cast<const std::uint16_t*>(table.raw());
    DeviceArray<std::int64_t> d_ids(ids);
    DeviceArray<std::uint16_t> d_table(std::vector<std::uint16_t>(t16, t16 + V * D));
    DeviceFloats d_out(n * D);
    kernels::embedding_forward(n, D, d_ids.get(), d_table.get(), d_out.get(), nullptr);
    require_launch_ok();
    require_close("out", d_out.to_host({n, D}), ref, 0, 0);  // copies of exact widenings
  }
}

TEST_CASE("the emulated CUDA backend's convert and bf16 embedding lookup match the CPU backend",
          "[cuda-emu][backend][bf16-frozen]") {
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend();
  std::mt19937_64 rng(43);
  const Tensor w16 = random_f32({37, 24}, rng, -3, 3).to(DType::BF16);
  Tensor a = cpu->empty({37, 24}, DType::F32), b = gpu->empty({37, 24}, DType::F32);
  cpu->convert(w16, a);
  gpu->convert(w16, b);
  CHECK(b.device() == Device::CUDA);
  require_close("convert", b.clone(), a, 0, 0);
  require_close("convert = Tensor::to", a, w16.to(DType::F32), 0, 0);
  Tensor ids = Tensor::empty({5}, DType::I64);
  for (std::int64_t i = 0; i < 5; ++i) ids.data<std::int64_t>()[i] = (7 * i + 3) % 37;
  Tensor ea = cpu->empty({5, 24}, DType::F32), eb = gpu->empty({5, 24}, DType::F32);
  cpu->embedding_forward(ids, w16, ea);
  gpu->embedding_forward(ids, w16, eb);
  require_close("embedding", eb.clone(), ea, 0, 0);
  Tensor wrong = cpu->empty({37, 24}, DType::F32);
  CHECK_THROWS_WITH(cpu->convert(a, wrong), Catch::Contains("src must be BF16"));
  CHECK_THROWS_WITH(gpu->convert(a, b), Catch::Contains("src must be BF16"));
}
