// Sizes checked against the device's free memory before allocating (core/memory_budget.h), on
// the CUDA backend compiled against the CUDA-on-CPU emulator, whose device is made just too
// small (cuda_emu::set_device_memory_bytes): full fine-tuning of the fixture mamba-tiny
// (data_scripts/make_fixtures.py) is refused naming peft.full and the sizes, and fits with one
// byte more.
#include <catch2/catch.hpp>
#include <filesystem>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "cuda_emu_test_util.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/peft_model.h"

using namespace ssmtune;

namespace {

// The emulated device's size for a scope; the default again after it.
struct DeviceMemoryScope {
  explicit DeviceMemoryScope(std::size_t bytes) { cuda_emu::set_device_memory_bytes(bytes); }
  ~DeviceMemoryScope() { cuda_emu::set_device_memory_bytes(std::size_t(1) << 36); }
};

}  // namespace

TEST_CASE("full fine-tuning larger than the device's free memory is refused naming peft.full",
          "[cuda-emu][memory]") {
  const std::string dir = (std::filesystem::path(SSMTUNE_FIXTURES_DIR) / "mamba-tiny").string();
  const ModelConfig cfg = load_model_config(dir);
  PeftConfig p;
  p.full = true;
  const std::unique_ptr<Backend> be = make_cuda_backend();
  ModelWeights w = load_model_weights(dir, cfg);
  std::uint64_t n = 0;
  for_each_param(cfg, w, [&](const std::string&, Tensor& t) { n += t.numel(); });
  // The weights, their gradients and AdamW's two moments, all fp32, on the device.
  const std::size_t needed = 4 * 4 * n, in_use = cuda_emu::device_bytes_in_use();
  {
    const DeviceMemoryScope small(in_use + needed - 1);
    REQUIRE(be->free_device_bytes() == needed - 1);
    try {
      PeftModel peft(cfg, w, p, *be, 1);
      FAIL("a device one byte too small was not refused");
    } catch (const UsageError& e) {
      CHECK_THAT(e.what(), Catch::StartsWith("peft.full: " + std::to_string(n) +
                                             " trainable parameters need ") &&
                               Catch::Contains(" on the device with their gradients and AdamW "
                                               "state; ") &&
                               Catch::EndsWith(" of device memory is free"));
    }
  }
  const DeviceMemoryScope enough(in_use + needed);
  CHECK_NOTHROW(PeftModel(cfg, w, p, *be, 1));
}
