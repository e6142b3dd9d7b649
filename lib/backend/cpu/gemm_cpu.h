// The CPU matrix product every projection goes through: OpenBLAS sgemm/dgemm (OpenMP build, so
// it shares ssmtune's thread pool; choice and measurements in docs/cpu_blas.md). main() must call
// ensure_fast_blas (blas_select.h) first, or OpenBLAS may run generic kernels on newer CPUs.
#pragma once

#include <cstdint>

namespace ssmtune::cpu {

// Row-major C = alpha * op(A) * op(B) + beta * C, op(X) = X^T when trans_x (BLAS xGEMM).
// op(A): (M, K), op(B): (K, N), C: (M, N). A is stored (M, K), or (K, M) when trans_a; B is
// stored (K, N), or (N, K) when trans_b; lda/ldb/ldc are the row strides as stored (>= the
// stored row length). beta == 0 overwrites C without reading it (NaNs there do not propagate).
// Mamba's Linear layers (W: (out, in), torch.nn.Linear layout, x: (tokens, in)):
//   forward  y  = x W^T       gemm(false, true,  tokens, out, in,  ...)
//   backward dx = dy W        gemm(false, false, tokens, in,  out, ...)
//            dW += dy^T x     gemm(true,  false, out,    in,  tokens, ..., beta = 1)
// One row of A goes to a matrix-vector product, few rows or columns of C over a long activation
// (the gradients of LoRA's factors) to gemm_thin (gemm_thin_cpu.h), the rest to BLAS.
// Uses omp_get_max_threads() threads; called inside an OpenMP parallel region it runs on the
// calling thread only. Throws ssmtune::Error for a stride shorter than its row or a dimension
// beyond the BLAS's 32-bit integers.
template <class T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
          const T* A, std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
          std::int64_t ldc);

// gemm<float> with B held in bf16 (bits, core/dtype.h): a frozen weight held as Hub checkpoints
// store it (docs/models.md "Weight storage"). The result is the product with B widened to fp32
// (exact); A, C and the accumulation are fp32. One row of A times a B stored (N, K), each
// projection of a decoding step, reads the bf16 directly (half the bytes of fp32, in the same
// operations and order as gemm<float> on the widened values); every other shape widens B into
// scratch of at most 32 MiB, a block of C's columns at a time, and runs gemm<float> per block.
void gemm_bf16_b(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K,
                 float alpha, const float* A, std::int64_t lda, const std::uint16_t* B,
                 std::int64_t ldb, float beta, float* C, std::int64_t ldc);

}  // namespace ssmtune::cpu
