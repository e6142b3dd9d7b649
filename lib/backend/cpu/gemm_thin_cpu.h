// Matrix products with few rows or columns whose long operand is an activation read along its
// rows: the weight gradients of LoRA's factors, dA += dU^T x (r rows) and dB += dY^T U (r
// columns), r = 8 or 16. OpenBLAS packs the activation into panels for these and ran them at
// 40 to 80 GFLOP/s at the 130M and d256 shapes; here each is one pass over the activation, the
// r rows of sums held in registers, at 100 to 215 (docs/benchmarks.md, "LoRA's thin products").
// LoRA's x A^T and dY B (few columns, A stored (M, K)) are dot products (is_few_columns); U B^T
// and dU A stay with BLAS.
#pragma once

#include <cstdint>

namespace ssmtune::cpu {

// The shapes gemm_thin takes: C has at most kThinDim rows and B is stored (K, N), or at most
// kThinDim columns and A is stored (K, M) (trans_a).
constexpr std::int64_t kThinDim = 16;

inline bool is_thin(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N) {
  return (M <= kThinDim && !trans_b) || (N <= kThinDim && trans_a);
}

// The float products gemm computes as dot products instead (gemm_cpu.cpp, few_columns): at
// most kThinDim columns of C, A stored (M, K), K long enough (64) that BLAS's packing costs
// more than the dots (below, BLAS was as fast), and not already gemm_thin's.
inline bool is_few_columns(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                           std::int64_t K) {
  return M > 1 && N <= kThinDim && !trans_a && K >= 64 && !is_thin(trans_a, trans_b, M, N);
}

// gemm's contract (gemm_cpu.h: row-major C = alpha op(A) op(B) + beta C, beta == 0 does not read
// C) for shapes with is_thin and M, N, K > 0; arguments already checked by gemm. Each element of
// C is summed over k in order, the same whatever the thread count and wherever it lies in C, so
// splitting C's columns into blocks (gemm_bf16_b) gives the same bits.
template <class T>
void gemm_thin(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
               const T* A, std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
               std::int64_t ldc);

}  // namespace ssmtune::cpu
