// The GPU test runner: the emulated-CUDA tests (kernels against their CPU twins, every backend
// op against the CPU backend, the training runs) built once more against the real CUDA runtime
// and cuBLAS. Without a usable GPU it says why and exits 77, which ctest reports as skipped.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "backend/cpu/blas_select.h"
#include "backend/cuda/device_info.h"

int main(int argc, char** argv) {
  ssmtune::cpu::ensure_fast_blas(argc, argv);
  const ssmtune::CudaDevices gpus = ssmtune::query_cuda_devices();
  if (gpus.count == 0) {
    std::printf("SKIP: the GPU tests need a GPU: %s\n", gpus.detail.c_str());
    return 77;
  }
  std::printf("GPU tests on %s\n", gpus.detail.c_str());
  return Catch::Session().run(argc, argv);
}
