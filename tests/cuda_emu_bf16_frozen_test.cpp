// Frozen base weights held in bf16 (model/weight_storage.h) on the CUDA backend compiled against
// the CUDA-on-CPU emulator: the widening kernel from_bf16 (kernels/tensor_ops.cu) against its
// twin core/dtype.h bf16_to_f32 on every bf16 bit pattern, the bf16-table embedding kernel
// against cpu::embedding_forward_bf16, the backend ops against the CPU backend, and LoRA on the
// bf16-held fixtures mamba-tiny and jamba-tiny (data_scripts/make_fixtures.py,
// make_jamba_fixtures.py) against the CPU backend on the same weights.
#include <array>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/cuda_backend.h"
#include "cuda_emu_test_util.h"
#include "io/safetensors.h"
#include "kernels/tensor_ops.cuh"
#include "kernels/token_ops.cuh"
#include "model/causal_lm.h"
#include "peft/peft_model.h"
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

TEST_CASE("gemm takes a bf16 weight as B on both backends, as the fp32 product of its widening",
          "[cuda-emu][backend][bf16-frozen][gemm]") {
  auto cpu = make_cpu_backend();
  std::mt19937_64 rng(47);
  for (const bool bf16_matmul : {false, true}) {
    auto gpu = make_cuda_backend(0, CudaOptions{bf16_matmul});
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      for (const std::int64_t M : {1, 9}) {  // one row: a decoding step's product
        INFO("bf16 matmul " << bf16_matmul << ", trans_a " << ta << ", trans_b " << tb << ", M "
                            << M);
        const std::int64_t K = 70, N = 13;
        const Tensor A = random_f32(ta ? Shape{K, M} : Shape{M, K}, rng, -1, 1);
        const Tensor B16 = random_f32(tb ? Shape{N, K} : Shape{K, N}, rng, -1, 1).to(DType::BF16);
        const Tensor C0 = random_f32({M, N}, rng, -1, 1);
        Tensor want = C0.clone(), cpu_got = C0.clone(), gpu_got = C0.clone();
        cpu->gemm(ta, tb, 0.5, A, B16.to(DType::F32), 1.0, want);
        cpu->gemm(ta, tb, 0.5, A, B16, 1.0, cpu_got);
        gpu->gemm(ta, tb, 0.5, A.clone(), B16.clone(), 1.0, gpu_got);
        // The CPU's bf16 path is its fp32 product on the widened B, same operations.
        require_close("cpu", cpu_got, want, 0, 0);
        // fp32 sums of 70 products in cuBLAS's order: float rounding only; with bf16 matmuls A
        // is rounded to bf16 too (2^-9 relative, as "bf16 matmuls round both inputs").
        require_close("cuda", gpu_got.clone(), want, bf16_matmul ? 1e-2 : 1e-5, 0);
      }
    }
  }
  Tensor A64 = cpu->zeros({2, 3}, DType::F64), C64 = cpu->zeros({2, 2}, DType::F64);
  const Tensor B16 = cpu->zeros({3, 2}, DType::F32).to(DType::BF16);
  CHECK_THROWS_WITH(cpu->gemm(false, false, 1.0, A64, B16, 0.0, C64),
                    Catch::Contains("mixed element types"));
}

TEST_CASE("LoRA on bf16-held frozen weights: the emulated CUDA backend matches the CPU backend",
          "[cuda-emu][bf16-frozen][lora][jamba]") {
  const std::filesystem::path fixtures(SSMTUNE_FIXTURES_DIR);
  for (const char* model : {"mamba-tiny", "jamba-tiny"}) {
    DYNAMIC_SECTION(model) {
      const std::string dir = (fixtures / model).string();
      const ModelConfig cfg = load_model_config(dir);
      const auto ref = SafetensorsFile::open(fixtures / model / "reference.safetensors");
      const Tensor ids = ref.tensor("input_ids"), targets = shift_labels(ref.tensor("labels"));
      PeftConfig p;
      p.lora = LoraConfig{};
      p.lora->targets = cfg.is_jamba() ? std::vector<std::string>{"q_proj", "in_proj", "down_proj"}
                                       : std::vector<std::string>{"in_proj", "out_proj"};
      p.lora->rank = 2;
      struct Pass {
        Tensor logits;
        double loss = 0;
        std::vector<Tensor> grads;
      };
      const auto run = [&](Backend& be) {
        ModelWeights w = load_model_weights(dir, cfg, DType::BF16);
        PeftModel peft(cfg, w, p, be, 1);
        // B = 0 at init would leave dA zero: give B values so every gradient is exercised.
        for (TrainableParam& t : peft.trainables()) {
          std::mt19937_64 rng(t.value.numel());
          be.copy(random_f32(t.value.shape(), rng, -0.1, 0.1), t.value);
        }
        CausalLM lm(cfg, peft.weights(), be, 4);
        lm.set_hook(peft.hook());
        peft.zero_grads();
        lm.forward(ids);
        Pass out{lm.logits().clone(), lm.loss(targets).objective, {}};
        lm.backward(targets, peft.base_grads());
        for (const TrainableParam& t : peft.trainables()) out.grads.push_back(t.grad.clone());
        return out;
      };
      auto cpu = make_cpu_backend();
      auto gpu = make_cuda_backend();
      const Pass want = run(*cpu), got = run(*gpu);
      // float32 on both, sums in other orders (cuBLAS, block reductions, the parallel scan):
      // 1e-5 of the scale for activations and the loss, 1e-4 for gradients (as
      // cuda_emu_jamba_test.cpp).
      require_close("logits", got.logits, want.logits, 1e-5, 0);
      CHECK(got.loss == Approx(want.loss).epsilon(1e-5));
      REQUIRE(got.grads.size() == want.grads.size());
      for (std::size_t i = 0; i < got.grads.size(); ++i)
        require_close("grad " + std::to_string(i), got.grads[i], want.grads[i], 1e-4, 0);
    }
  }
}
