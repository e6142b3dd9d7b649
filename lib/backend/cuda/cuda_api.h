// The CUDA runtime and cuBLAS as the CUDA backend sees them: the real headers under nvcc's
// toolkit, the tests' CUDA-on-CPU emulator and cuBLAS shim under SSMTUNE_CUDA_EMU (the same
// backend source is compiled both ways; docs/cuda.md). Plus the checks every call goes through.
#pragma once

#include <string>

#include "core/error.h"
#include "kernels/cuda_compat.cuh"

#if defined(SSMTUNE_CUDA_EMU)
#include <cublas_emu.h>
#else
#include <cublas_v2.h>
#endif

namespace ssmtune {
inline namespace SSMTUNE_KERNEL_ABI {

// Throws Error("cuda backend: <what>: <CUDA's error>") unless err is cudaSuccess.
inline void cuda_check(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess)
    throw Error("cuda backend: " + what + ": " + cudaGetErrorName(err) + ": " +
                cudaGetErrorString(err));
}

inline void cublas_check(cublasStatus_t status, const std::string& what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error("cuda backend: " + what + ": " + cublasGetStatusString(status));
}

// After a kernel launcher: a bad launch configuration shows here, named by its kernel.
inline void launch_check(const char* kernel) {
  cuda_check(cudaGetLastError(), std::string("kernel ") + kernel);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune
