#include "backend/cpu/gemm_cpu.h"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_clones.h"
#include "backend/cpu/gemm_thin_cpu.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/host_blocks.h"

namespace ssmtune::cpu {

namespace {

CBLAS_TRANSPOSE op(bool t) { return t ? CblasTrans : CblasNoTrans; }

// OpenBLAS reports bad arguments by printing a line and returning with C untouched; catch them
// here instead so a caller's mistake is an error, not a silently stale C. Called with M, N nonzero.
void check_args(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K,
                std::int64_t lda, std::int64_t ldb, std::int64_t ldc) {
  const auto fits = [](std::int64_t v) { return v >= 0 && v <= INT_MAX; };
  const std::string dims =
      " (M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + ")";
  check(fits(M) && fits(N) && fits(K) && fits(lda) && fits(ldb) && fits(ldc),
        "gemm: dimensions must be in [0, 2^31)" + dims);
  check(ldc >= N, "gemm: ldc " + std::to_string(ldc) + " shorter than a row of C" + dims);
  if (K == 0) return;  // A and B are not read
  const std::int64_t a_row = trans_a ? M : K;
  const std::int64_t b_row = trans_b ? K : N;
  check(lda >= a_row, "gemm: lda " + std::to_string(lda) + " shorter than a row of A" + dims);
  check(ldb >= b_row, "gemm: ldb " + std::to_string(ldb) + " shorter than a row of B" + dims);
}

// K == 0: op(A) op(B) is an empty sum, so C = beta * C (beta == 0 clears C, as in BLAS).
template <class T>
void scale_c(std::int64_t M, std::int64_t N, T beta, T* C, std::int64_t ldc) {
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j)
      C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
}

// A weight element as the float it stands for: fp32 as is, bf16 (bits) widened exactly.
inline float widen(float w) { return w; }
inline float widen(std::uint16_t w) { return bf16_to_f32(w); }

// C[j] = alpha <W[j, :], x> + beta C[j] for rows j in [r0, r1) of a row-major (N, K) W: each
// dot product in 16 lanes (K's tail in the first lanes). beta == 0 does not read C. Inlined
// into one clone per weight type (cpu_clones.h), so fp32 and bf16 weights take the same
// operations in the same order.
template <class W>
[[gnu::always_inline]] inline void dot_rows_body(std::int64_t r0, std::int64_t r1,
                                                 std::int64_t K, const W* Wm, std::int64_t ldw,
                                                 const float* x, float alpha, float beta,
                                                 float* C) {
  constexpr std::int64_t kLanes = 16;
  const std::int64_t K_lanes = K - K % kLanes;
  for (std::int64_t j = r0; j < r1; ++j) {
    const W* w = Wm + j * ldw;
    float acc[kLanes] = {};
    for (std::int64_t k = 0; k < K_lanes; k += kLanes)
      for (std::int64_t l = 0; l < kLanes; ++l) acc[l] += widen(w[k + l]) * x[k + l];
    // The tail in the lanes too, in the same multiply-add form: a separate scalar loop is
    // compiled differently per weight type (a fused multiply-add in one, not the other).
    for (std::int64_t l = 0; l < K - K_lanes; ++l)
      acc[l] += widen(w[K_lanes + l]) * x[K_lanes + l];
    float s = 0;
    for (std::int64_t l = 0; l < kLanes; ++l) s += acc[l];
    C[j] = beta == 0.0f ? alpha * s : alpha * s + beta * C[j];
  }
}

SSMTUNE_CPU_CLONES void dot_rows_block(std::int64_t r0, std::int64_t r1, std::int64_t K,
                                       const float* W, std::int64_t ldw, const float* x,
                                       float alpha, float beta, float* C) {
  dot_rows_body(r0, r1, K, W, ldw, x, alpha, beta, C);
}
SSMTUNE_CPU_CLONES void dot_rows_block(std::int64_t r0, std::int64_t r1, std::int64_t K,
                                       const std::uint16_t* W, std::int64_t ldw, const float* x,
                                       float alpha, float beta, float* C) {
  dot_rows_body(r0, r1, K, W, ldw, x, alpha, beta, C);
}

// C (1, N) = alpha a (1, K) W^T + beta C, W row-major (N, K) in fp32 or bf16: a decoding step's
// projection (x times a weight stored (out, in)). Rows split over the threads in blocks of 16.
template <class W>
void dot_rows(std::int64_t N, std::int64_t K, float alpha, const float* a, const W* Wm,
              std::int64_t ldw, float beta, float* C) {
  constexpr std::int64_t kRows = 16;
  const std::int64_t blocks = (N + kRows - 1) / kRows;
#pragma omp parallel for schedule(static) if (N * K >= (1 << 16))
  for (std::int64_t b = 0; b < blocks; ++b)
    dot_rows_block(b * kRows, std::min(N, (b + 1) * kRows), K, Wm, ldw, a, alpha, beta, C);
}

// C (1, N) = alpha op(A) (1, K) op(B) (K, N) + beta C as a matrix-vector product. OpenBLAS's
// gemm packs (copies) op(B) before multiplying, which for one row of A triples the memory
// traffic of what is a single pass over B (decoding reads every weight once per token); its
// gemv streams B. The row of op(A): A's row 0, or with trans_a A's column 0 (stride lda).
template <class T>
void gemv_row(bool trans_a, bool trans_b, std::int64_t N, std::int64_t K, T alpha, const T* A,
              std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C) {
  if constexpr (std::is_same_v<T, float>)
    if (trans_b && !trans_a) return dot_rows(N, K, alpha, A, B, ldb, beta, C);
  const int inc_a = trans_a ? int(lda) : 1;
  // trans_b: B is (N, K) and C = B a; otherwise B is (K, N) and C = B^T a.
  const CBLAS_TRANSPOSE t = trans_b ? CblasNoTrans : CblasTrans;
  const int rows = int(trans_b ? N : K), cols = int(trans_b ? K : N);
  // beta == 0 must not read C (it may hold anything, NaN included); BLAS's gemv scales y by
  // beta, and whether 0 * NaN clears depends on the OpenBLAS version.
  if (beta == T(0)) std::fill_n(C, N, T(0));
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemv(CblasRowMajor, t, rows, cols, alpha, B, int(ldb), A, inc_a, beta, C, 1);
  else
    cblas_dgemv(CblasRowMajor, t, rows, cols, alpha, B, int(ldb), A, inc_a, beta, C, 1);
}

// C (M, N) = alpha A (M, K) op(B) + beta C with few columns (is_few_columns): LoRA's x A^T and
// dY B, r = 8 or 16 columns over a long activation. OpenBLAS ran these at 11-14 GFLOP/s inside
// a training step (docs/benchmarks.md, "LoRA's x A^T and dY B"); here each row of C is r dot
// products of A's row with op(B)'s columns, held as r rows (B itself when trans_b, else B
// transposed once into scratch), so A is read once. Each element is summed as dot_rows sums
// it, whichever thread computes its row.
void few_columns(bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
                 const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float beta,
                 float* C, std::int64_t ldc) {
  std::vector<float> columns;
  if (!trans_b) {
    columns.resize(std::size_t(N * K));
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t n = 0; n < N; ++n) columns[std::size_t(n * K + k)] = B[k * ldb + n];
    B = columns.data();
    ldb = K;
  }
#pragma omp parallel for schedule(static) if (M * N * K >= (1 << 16))
  for (std::int64_t m = 0; m < M; ++m)
    dot_rows_block(0, N, K, B, ldb, A + m * lda, alpha, beta, C + m * ldc);
}

// The product for M > 1: few rows or columns of C over a long activation (the gradients of
// LoRA's factors) in gemm_thin, the rest in BLAS. `thin` is decided on the whole product by the
// caller, so that a block of columns of a product (gemm_bf16_b) takes the path the whole product
// would.
template <class T>
void product(bool thin, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
             std::int64_t K, T alpha, const T* A, std::int64_t lda, const T* B, std::int64_t ldb,
             T beta, T* C, std::int64_t ldc) {
  if (thin) return gemm_thin(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, op(trans_a), op(trans_b), int(M), int(N), int(K), alpha, A, int(lda),
                B, int(ldb), beta, C, int(ldc));
  else
    cblas_dgemm(CblasRowMajor, op(trans_a), op(trans_b), int(M), int(N), int(K), alpha, A, int(lda),
                B, int(ldb), beta, C, int(ldc));
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
          const T* A, std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
          std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  check_args(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (K == 0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (M == 1) {  // a row vector times a matrix: one decoding step's every projection
    gemv_row(trans_a, trans_b, N, K, alpha, A, lda, B, ldb, beta, C);
    return;
  }
  if constexpr (std::is_same_v<T, float>)
    if (is_few_columns(trans_a, trans_b, M, N, K))
      return few_columns(trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  product(is_thin(trans_a, trans_b, M, N), trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta,
          C, ldc);
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                          std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                           const double*, std::int64_t, const double*, std::int64_t, double,
                           double*, std::int64_t);

void gemm_bf16_b(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K,
                 float alpha, const float* A, std::int64_t lda, const std::uint16_t* B,
                 std::int64_t ldb, float beta, float* C, std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  check_args(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (K == 0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (M == 1 && trans_b && !trans_a) return dot_rows(N, K, alpha, A, B, ldb, beta, C);
  // Every other shape: B widened (exactly) into scratch, then the fp32 product, over blocks of
  // C's columns so that the scratch stays near kWidenFloats however large B is (a (V, D)
  // lm_head would otherwise take V x D floats). Each block of C is the whole K-long sum, as in
  // one product. The scratch is reused across steps (core/host_blocks.h).
  constexpr std::int64_t kWidenFloats = std::int64_t(8) << 20;  // 32 MiB
  const bool thin = is_thin(trans_a, trans_b, M, N);
  const bool few = is_few_columns(trans_a, trans_b, M, N, K);
  // Blocks of about even width, edges on multiples of 64 columns: none so narrow that BLAS takes
  // another path for it (OpenBLAS multiplies small matrices with other kernels, summing in
  // another order: a last block of 18 columns gave other bits), so each element of C gets the
  // whole product's sums.
  constexpr std::int64_t kColumnUnit = 64;
  const std::int64_t fits = std::max(kColumnUnit, kWidenFloats / K);
  const std::int64_t blocks = (N + fits - 1) / fits;
  const auto edge = [&](std::int64_t b) {
    return b == blocks ? N : b * N / blocks / kColumnUnit * kColumnUnit;
  };
  const std::int64_t widest = std::min(N, (N + blocks - 1) / blocks + kColumnUnit);
  const std::shared_ptr<void> block = host_block(std::size_t(widest * K) * sizeof(float));
  check(block != nullptr, "gemm: no memory left to widen a bf16 operand of " +
                              std::to_string(widest) + " x " + std::to_string(K));
  float* wide = static_cast<float*>(block.get());
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t n0 = edge(b), nb = edge(b + 1) - n0;
    if (nb == 0) continue;
    // trans_b: B's rows [n0, n0 + nb), stored (nb, K); else its columns, stored (K, nb).
    const std::int64_t rows = trans_b ? nb : K, cols = trans_b ? K : nb;
    const std::uint16_t* src = B + (trans_b ? n0 * ldb : n0);
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) wide[r * cols + c] = widen(src[r * ldb + c]);
    if (M == 1)
      gemv_row(trans_a, trans_b, nb, K, alpha, A, lda, static_cast<const float*>(wide), cols, beta,
               C + n0);
    else if (few)
      few_columns(trans_b, M, nb, K, alpha, A, lda, wide, cols, beta, C + n0, ldc);
    else
      product(thin, trans_a, trans_b, M, nb, K, alpha, A, lda, static_cast<const float*>(wide),
              cols, beta, C + n0, ldc);
  }
}

}  // namespace ssmtune::cpu
