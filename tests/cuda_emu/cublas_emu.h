// The cuBLAS calls the CUDA backend makes, answered on the CPU for the emulated tests
// (docs/cuda.md "The emulator"): cuBLAS's column-major semantics, transposes, leading
// dimensions, host or device pointer mode for alpha and beta, strided-batched products as a
// loop, GemmEx with fp32 or bf16 inputs and fp32 compute, and cuBLAS's return codes for bad
// arguments. Matrices must lie in cudaMalloc blocks, as on a GPU. Products accumulate in
// float in k order (cuBLAS's fp32 accumulation; a GPU's order differs, tests use tolerances).
// Never include cublas_v2.h next to this header.
#pragma once

#include <cstdint>

#include "cuda_emu.h"

namespace cuda_emu {

enum cublasStatus_t : int {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum cublasPointerMode_t : int { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 };
enum cublasMath_t : int { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2 };
enum cudaDataType_t : int { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t : int { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 };
enum cublasGemmAlgo_t : int { CUBLAS_GEMM_DEFAULT = -1 };

struct CublasContext;
using cublasHandle_t = CublasContext*;

cublasStatus_t cublasCreate(cublasHandle_t* handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
const char* cublasGetStatusString(cublasStatus_t status);

// C (m, n) = alpha op(A) op(B) + beta C, column-major; C is not read when beta == 0.
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc);
// batch products; matrix i starts stride_* elements after matrix i - 1.
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long stride_a, const float* B, int ldb,
                                         long long stride_b, const float* beta, float* C, int ldc,
                                         long long stride_c, int batch);
// A and B of one type (CUDA_R_32F or CUDA_R_16BF), C CUDA_R_32F, compute CUBLAS_COMPUTE_32F;
// alpha and beta are floats.
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType_t a_type, int lda, const void* B,
                            cudaDataType_t b_type, int ldb, const void* beta, void* C,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);

// Products run so far (tests check that an op went through cuBLAS).
std::int64_t cublas_calls();

}  // namespace cuda_emu

using cuda_emu::cublasComputeType_t;
using cuda_emu::cublasCreate;
using cuda_emu::cublasDestroy;
using cuda_emu::cublasGemmAlgo_t;
using cuda_emu::cublasGemmEx;
using cuda_emu::cublasGetStatusString;
using cuda_emu::cublasHandle_t;
using cuda_emu::cublasMath_t;
using cuda_emu::cublasOperation_t;
using cuda_emu::cublasPointerMode_t;
using cuda_emu::cublasSetMathMode;
using cuda_emu::cublasSetPointerMode;
using cuda_emu::cublasSetStream;
using cuda_emu::cublasSgemm;
using cuda_emu::cublasSgemmStridedBatched;
using cuda_emu::cublasStatus_t;
using cuda_emu::cudaDataType_t;
using enum cuda_emu::cublasStatus_t;
using enum cuda_emu::cublasOperation_t;
using enum cuda_emu::cublasPointerMode_t;
using enum cuda_emu::cublasMath_t;
using enum cuda_emu::cudaDataType_t;
using enum cuda_emu::cublasComputeType_t;
using enum cuda_emu::cublasGemmAlgo_t;
