// Matrix products with one dimension of at most kThinDim: LoRA's rank-r factors (U = x A^T,
// y += s U B^T and their gradients, r = 8 or 16). BLAS packs both operands into panels sized
// for large products, and at rank 8 the packing and the edge handling cost as much as the
// arithmetic; here each shape is one pass over its large operand, in vector lanes, with the
// small one held in cache (measured in docs/benchmarks.md, "LoRA's thin products").
#pragma once

#include <algorithm>
#include <cstdint>

namespace ssmtune::cpu {

// Products whose smallest dimension is at most this go to gemm_thin.
constexpr std::int64_t kThinDim = 16;

inline bool is_thin(std::int64_t M, std::int64_t N, std::int64_t K) {
  return std::min({M, N, K}) <= kThinDim;
}

// gemm's contract (gemm_cpu.h: row-major C = alpha op(A) op(B) + beta C, beta == 0 does not read
// C) for shapes with is_thin(M, N, K) and M, N, K > 0; arguments already checked by gemm. Each
// element of C is summed over k in the same order whatever the thread count and wherever it
// lies in C, so splitting C's columns into blocks (gemm_bf16_b) gives the same bits.
template <class T>
void gemm_thin(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
               const T* A, std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
               std::int64_t ldc);

}  // namespace ssmtune::cpu
