// cuBLAS answered on the CPU (cublas_emu.h).
#include "cublas_emu.h"

#include <bit>
#include <cstring>

#include "cuda_emu_internal.h"

namespace cuda_emu {

struct CublasContext {
  cudaStream_t stream = nullptr;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};

namespace {

std::int64_t g_calls = 0;

// Reads element i of a matrix of `type`.
float load(const void* p, cudaDataType_t type, std::int64_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(p)[i];
  const std::uint32_t bits = std::uint32_t(static_cast<const std::uint16_t*>(p)[i]) << 16;
  return std::bit_cast<float>(bits);
}

// Columns and rows of op(X) stored in a (ld, .) column-major array must fit: ld >= rows stored.
bool ld_ok(cublasOperation_t op, int rows, int cols, int ld) {
  const int stored_rows = op == CUBLAS_OP_N ? rows : cols;
  return ld >= (stored_rows > 1 ? stored_rows : 1);
}

// Bytes spanned by a column-major (rows_stored, cols_stored) array with leading dimension ld.
std::size_t span_bytes(int rows_stored, int cols_stored, int ld, std::size_t elem) {
  if (rows_stored == 0 || cols_stored == 0) return 0;
  return (std::size_t(cols_stored - 1) * std::size_t(ld) + std::size_t(rows_stored)) * elem;
}

bool on_device(const void* p, std::size_t bytes) {
  return bytes == 0 || is_device_pointer(p, bytes);
}

struct GemmArgs {
  cublasOperation_t ta, tb;
  int m, n, k;
  float alpha, beta;
  const void* A;
  cudaDataType_t at;
  int lda;
  const void* B;
  cudaDataType_t bt;
  int ldb;
  float* C;
  int ldc;
};

cublasStatus_t check_args(const GemmArgs& g) {
  if (g.m < 0 || g.n < 0 || g.k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if ((g.ta != CUBLAS_OP_N && g.ta != CUBLAS_OP_T) || (g.tb != CUBLAS_OP_N && g.tb != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!ld_ok(g.ta, g.m, g.k, g.lda) || !ld_ok(g.tb, g.k, g.n, g.ldb) || g.ldc < (g.m > 1 ? g.m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  const std::size_t ea = g.at == CUDA_R_32F ? 4 : 2, eb = g.bt == CUDA_R_32F ? 4 : 2;
  const bool ok = on_device(g.A, g.ta == CUBLAS_OP_N ? span_bytes(g.m, g.k, g.lda, ea)
                                                     : span_bytes(g.k, g.m, g.lda, ea)) &&
                  on_device(g.B, g.tb == CUBLAS_OP_N ? span_bytes(g.k, g.n, g.ldb, eb)
                                                     : span_bytes(g.n, g.k, g.ldb, eb)) &&
                  on_device(g.C, span_bytes(g.m, g.n, g.ldc, 4));
  // A GPU would fault on a host pointer; cuBLAS reports it as a failed execution.
  if (!ok) {
    internal::fail(cudaErrorInvalidDevicePointer, "cuBLAS operand outside device memory");
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

void run_gemm(const GemmArgs& g) {
  g_calls += 1;
  for (int j = 0; j < g.n; ++j)
    for (int i = 0; i < g.m; ++i) {
      float acc = 0.0f;
      for (int p = 0; p < g.k; ++p) {
        const std::int64_t ia =
            g.ta == CUBLAS_OP_N ? i + std::int64_t(p) * g.lda : p + std::int64_t(i) * g.lda;
        const std::int64_t ib =
            g.tb == CUBLAS_OP_N ? p + std::int64_t(j) * g.ldb : j + std::int64_t(p) * g.ldb;
        acc += load(g.A, g.at, ia) * load(g.B, g.bt, ib);
      }
      float& c = g.C[i + std::int64_t(j) * g.ldc];
      c = g.beta == 0.0f ? g.alpha * acc : g.alpha * acc + g.beta * c;  // beta 0: C unread
    }
}

cublasStatus_t read_scalars(cublasHandle_t h, const void* alpha, const void* beta, float* a,
                            float* b) {
  if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  const bool device = h->pointer_mode == CUBLAS_POINTER_MODE_DEVICE;
  if (device != is_device_pointer(alpha, 4) || device != is_device_pointer(beta, 4))
    return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(a, alpha, 4);
  std::memcpy(b, beta, 4);
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

std::int64_t cublas_calls() { return g_calls; }

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new CublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!internal::valid_stream(stream)) return CUBLAS_STATUS_INVALID_VALUE;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t) {
  return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc) {
  return cublasSgemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0,
                                   beta, C, ldc, 0, 1);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long stride_a, const float* B, int ldb,
                                         long long stride_b, const float* beta, float* C, int ldc,
                                         long long stride_c, int batch) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  float a = 0, b = 0;
  if (cublasStatus_t s = read_scalars(handle, alpha, beta, &a, &b)) return s;
  for (int i = 0; i < batch; ++i) {
    const GemmArgs g{transa,
                     transb,
                     m,
                     n,
                     k,
                     a,
                     b,
                     A + i * stride_a,
                     CUDA_R_32F,
                     lda,
                     B + i * stride_b,
                     CUDA_R_32F,
                     ldb,
                     C + i * stride_c,
                     ldc};
    if (cublasStatus_t s = check_args(g)) return s;
    run_gemm(g);
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType_t a_type, int lda, const void* B,
                            cudaDataType_t b_type, int ldb, const void* beta, void* C,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool types_ok = a_type == b_type && (a_type == CUDA_R_32F || a_type == CUDA_R_16BF) &&
                        c_type == CUDA_R_32F &&
                        (compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC);
  if (!types_ok) return CUBLAS_STATUS_NOT_SUPPORTED;
  float a = 0, b = 0;
  if (cublasStatus_t s = read_scalars(handle, alpha, beta, &a, &b)) return s;
  const GemmArgs g{
      transa, transb, m, n, k, a, b, A, a_type, lda, B, b_type, ldb, static_cast<float*>(C), ldc};
  if (cublasStatus_t s = check_args(g)) return s;
  run_gemm(g);
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace cuda_emu
