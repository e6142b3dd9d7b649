#include "backend/cpu/gemm_thin_cpu.h"

#include <omp.h>

#include <utility>
#include <vector>

#include "backend/cpu/cpu_clones.h"

namespace ssmtune::cpu {

namespace {

constexpr std::int64_t kLanes = 16;  // one AVX-512 register of floats, two of AVX2
constexpr std::int64_t kStrip = 64;  // columns per tile of combine_rows: four registers a row

// A matrix read through strides: element (r, c) at p[r * rs + c * cs]. op(A), op(B) and their
// transposes are all views of what the caller stores.
template <class T>
struct Strided {
  const T* p;
  std::int64_t rs, cs;
  T operator()(std::int64_t r, std::int64_t c) const { return p[r * rs + c * cs]; }
  Strided transposed() const { return {p, cs, rs}; }
};

// Where a result goes: its element (r, w) at p[r * rs + w * ws] (C itself, or C^T).
template <class T>
struct Out {
  T* p;
  std::int64_t rs, ws;
};

// beta == 0 does not read the old value (it may hold anything, NaN included).
template <class T>
inline void store(T& c, T alpha, T sum, T beta) {
  c = beta == T(0) ? alpha * sum : alpha * sum + beta * c;
}

// --- Rows of the result as combinations of source rows ---------------------------------------
// out(r, w) = alpha sum_k coef(r, k) src[k * lds + w] + beta out(r, w), the source's rows
// contiguous. Serves every shape whose long operand is read along its rows: K small (a sum of
// K outer products), few rows of C, and few columns of C read through C^T.

// Rows [r0, r0 + RT), columns [w0, w0 + wn), wn <= kStrip: RT x kStrip sums held in registers
// while k runs down the source's rows; each is summed in k order.
template <class T, int RT>
[[gnu::always_inline]] inline void combine_tile(std::int64_t r0, std::int64_t w0, std::int64_t wn,
                                                std::int64_t K, Strided<T> coef, const T* src,
                                                std::int64_t lds, T alpha, T beta, Out<T> out) {
  T acc[RT][kStrip] = {};
  if (wn == kStrip) {
    for (std::int64_t k = 0; k < K; ++k) {
      const T* s = src + k * lds + w0;
      for (int r = 0; r < RT; ++r) {
        const T c = coef(r0 + r, k);
        for (int l = 0; l < kStrip; ++l) acc[r][l] += c * s[l];
      }
    }
  } else {  // the last columns: the same sums over fewer lanes
    for (std::int64_t k = 0; k < K; ++k) {
      const T* s = src + k * lds + w0;
      for (int r = 0; r < RT; ++r) {
        const T c = coef(r0 + r, k);
        for (std::int64_t l = 0; l < wn; ++l) acc[r][l] += c * s[l];
      }
    }
  }
  for (int r = 0; r < RT; ++r)
    for (std::int64_t l = 0; l < wn; ++l)
      store(out.p[(r0 + r) * out.rs + (w0 + l) * out.ws], alpha, acc[r][l], beta);
}

template <class T>
[[gnu::always_inline]] inline void combine_block_body(std::int64_t r0, std::int64_t r1,
                                                      std::int64_t w0, std::int64_t w1,
                                                      std::int64_t K, Strided<T> coef, const T* src,
                                                      std::int64_t lds, T alpha, T beta,
                                                      Out<T> out) {
  constexpr int kRows = 4;
  for (std::int64_t w = w0; w < w1; w += kStrip) {  // a source strip, reused by every row tile
    const std::int64_t wn = std::min(kStrip, w1 - w);
    std::int64_t r = r0;
    for (; r + kRows <= r1; r += kRows)
      combine_tile<T, kRows>(r, w, wn, K, coef, src, lds, alpha, beta, out);
    for (; r < r1; ++r) combine_tile<T, 1>(r, w, wn, K, coef, src, lds, alpha, beta, out);
  }
}

SSMTUNE_CPU_CLONES void combine_block(std::int64_t r0, std::int64_t r1, std::int64_t w0,
                                      std::int64_t w1, std::int64_t K, Strided<float> coef,
                                      const float* src, std::int64_t lds, float alpha, float beta,
                                      Out<float> out) {
  combine_block_body(r0, r1, w0, w1, K, coef, src, lds, alpha, beta, out);
}
SSMTUNE_CPU_CLONES void combine_block(std::int64_t r0, std::int64_t r1, std::int64_t w0,
                                      std::int64_t w1, std::int64_t K, Strided<double> coef,
                                      const double* src, std::int64_t lds, double alpha,
                                      double beta, Out<double> out) {
  combine_block_body(r0, r1, w0, w1, K, coef, src, lds, alpha, beta, out);
}

// Blocks of 16 whole rows (written along the rows) split over the threads, or of kStrip columns
// when there are too few rows to keep every thread busy.
template <class T>
void combine_rows(std::int64_t R, std::int64_t W, std::int64_t K, Strided<T> coef, const T* src,
                  std::int64_t lds, T alpha, T beta, Out<T> out) {
  constexpr std::int64_t kBandRows = 16;
  const bool by_rows = R >= W || R >= 2 * kBandRows * omp_get_max_threads();
  const std::int64_t n = by_rows ? R : W, band = by_rows ? kBandRows : kStrip;
  const std::int64_t bands = (n + band - 1) / band;
#pragma omp parallel for schedule(static) if (R * W * K >= (1 << 15))
  for (std::int64_t b = 0; b < bands; ++b) {
    const std::int64_t lo = b * band, hi = std::min(n, lo + band);
    if (by_rows)
      combine_block(lo, hi, 0, W, K, coef, src, lds, alpha, beta, out);
    else
      combine_block(0, R, lo, hi, K, coef, src, lds, alpha, beta, out);
  }
}

// --- Elements of the result as dot products ---------------------------------------------------
// C[i, j] = alpha <a_i, b_j> + beta C[i, j], rows a_i (stride lda) and b_j (stride ldb) both
// contiguous along K: few columns of C from A's rows (U = x A^T, dU = dY B), or few rows of C
// against B stored (N, K).

// Rows [i0, i0 + TI) x columns [j0, j0 + TJ): each sum in kLanes lanes (K's tail in the first
// lanes, in the same multiply-add form), then its lanes added in order: the same operations for
// an element whatever tile it falls in.
template <class T, int TI, int TJ>
[[gnu::always_inline]] inline void dot_tile(std::int64_t i0, std::int64_t j0, std::int64_t K,
                                            const T* a, std::int64_t lda, const T* b,
                                            std::int64_t ldb, T alpha, T beta, T* C,
                                            std::int64_t ldc) {
  T acc[TI][TJ][kLanes] = {};
  const std::int64_t K_lanes = K - K % kLanes;
  for (std::int64_t k = 0; k < K_lanes; k += kLanes)
    for (int i = 0; i < TI; ++i)
      for (int j = 0; j < TJ; ++j)
        for (int l = 0; l < kLanes; ++l)
          acc[i][j][l] += a[(i0 + i) * lda + k + l] * b[(j0 + j) * ldb + k + l];
  for (int i = 0; i < TI; ++i)
    for (int j = 0; j < TJ; ++j)
      for (std::int64_t l = 0; l < K - K_lanes; ++l)
        acc[i][j][l] += a[(i0 + i) * lda + K_lanes + l] * b[(j0 + j) * ldb + K_lanes + l];
  for (int i = 0; i < TI; ++i)
    for (int j = 0; j < TJ; ++j) {
      T s = 0;
      for (int l = 0; l < kLanes; ++l) s += acc[i][j][l];
      store(C[(i0 + i) * ldc + j0 + j], alpha, s, beta);
    }
}

template <class T>
[[gnu::always_inline]] inline void dot_block_body(std::int64_t i0, std::int64_t i1, std::int64_t j0,
                                                  std::int64_t j1, std::int64_t K, const T* a,
                                                  std::int64_t lda, const T* b, std::int64_t ldb,
                                                  T alpha, T beta, T* C, std::int64_t ldc) {
  constexpr int kI = 2, kJ = 4;  // 8 sums of kLanes: 8 AVX-512 or 16 AVX2 registers
  std::int64_t i = i0;
  for (; i + kI <= i1; i += kI) {
    std::int64_t j = j0;
    for (; j + kJ <= j1; j += kJ) dot_tile<T, kI, kJ>(i, j, K, a, lda, b, ldb, alpha, beta, C, ldc);
    for (; j < j1; ++j) dot_tile<T, kI, 1>(i, j, K, a, lda, b, ldb, alpha, beta, C, ldc);
  }
  for (; i < i1; ++i) {
    std::int64_t j = j0;
    for (; j + kJ <= j1; j += kJ) dot_tile<T, 1, kJ>(i, j, K, a, lda, b, ldb, alpha, beta, C, ldc);
    for (; j < j1; ++j) dot_tile<T, 1, 1>(i, j, K, a, lda, b, ldb, alpha, beta, C, ldc);
  }
}

SSMTUNE_CPU_CLONES void dot_block(std::int64_t i0, std::int64_t i1, std::int64_t j0,
                                  std::int64_t j1, std::int64_t K, const float* a, std::int64_t lda,
                                  const float* b, std::int64_t ldb, float alpha, float beta,
                                  float* C, std::int64_t ldc) {
  dot_block_body(i0, i1, j0, j1, K, a, lda, b, ldb, alpha, beta, C, ldc);
}
SSMTUNE_CPU_CLONES void dot_block(std::int64_t i0, std::int64_t i1, std::int64_t j0,
                                  std::int64_t j1, std::int64_t K, const double* a,
                                  std::int64_t lda, const double* b, std::int64_t ldb, double alpha,
                                  double beta, double* C, std::int64_t ldc) {
  dot_block_body(i0, i1, j0, j1, K, a, lda, b, ldb, alpha, beta, C, ldc);
}

// Blocks of 16 rows of C, or of 16 columns when C has fewer rows than columns, over the threads.
template <class T>
void dot_pairs(std::int64_t M, std::int64_t N, std::int64_t K, const T* a, std::int64_t lda,
               const T* b, std::int64_t ldb, T alpha, T beta, T* C, std::int64_t ldc) {
  constexpr std::int64_t kBand = 16;
  const bool by_rows = M >= N;
  const std::int64_t n = by_rows ? M : N, bands = (n + kBand - 1) / kBand;
#pragma omp parallel for schedule(static) if (M * N * K >= (1 << 15))
  for (std::int64_t band = 0; band < bands; ++band) {
    const std::int64_t lo = band * kBand, hi = std::min(n, lo + kBand);
    if (by_rows)
      dot_block(lo, hi, 0, N, K, a, lda, b, ldb, alpha, beta, C, ldc);
    else
      dot_block(0, M, lo, hi, K, a, lda, b, ldb, alpha, beta, C, ldc);
  }
}

// x (rows, cols) with each row contiguous: x as stored when it is (cs == 1), else a copy in
// `packed` (the small operand, laid out the way a kernel reads it). Returns the rows and their
// stride.
template <class T>
std::pair<const T*, std::int64_t> contiguous_rows(std::int64_t rows, std::int64_t cols,
                                                  Strided<T> x, std::vector<T>& packed) {
  if (x.cs == 1) return {x.p, x.rs};
  packed.resize(std::size_t(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) packed[std::size_t(r * cols + c)] = x(r, c);
  return {packed.data(), cols};
}

}  // namespace

template <class T>
void gemm_thin(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
               const T* A, std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
               std::int64_t ldc) {
  // op(A) (M, K) and op(B) (K, N) as views of what is stored.
  const Strided<T> a = trans_a ? Strided<T>{A, 1, lda} : Strided<T>{A, lda, 1};
  const Strided<T> b = trans_b ? Strided<T>{B, 1, ldb} : Strided<T>{B, ldb, 1};
  const std::int64_t smallest = std::min({M, N, K});
  std::vector<T> packed;
  if (K == smallest) {
    // A sum of K outer products (y += s U B^T, dx += dU A): C's rows combine op(B)'s rows.
    const auto [src, lds] = contiguous_rows(K, N, b, packed);
    combine_rows(M, N, K, a, src, lds, alpha, beta, Out<T>{C, ldc, 1});
  } else if (M == smallest && !trans_b) {
    // Few rows of C, B stored (K, N) (dA += dU^T x): each row combines B's rows.
    combine_rows(M, N, K, a, B, ldb, alpha, beta, Out<T>{C, ldc, 1});
  } else if (M == smallest) {
    // Few rows of C, B stored (N, K): dot products of op(A)'s rows with B's.
    const auto [rows, ld] = contiguous_rows(M, K, a, packed);
    dot_pairs(M, N, K, rows, ld, B, ldb, alpha, beta, C, ldc);
  } else if (!trans_a) {
    // Few columns of C (U = x A^T, dU = dY B): dot products of A's rows with op(B)'s columns.
    const auto [cols, ld] = contiguous_rows(N, K, b.transposed(), packed);
    dot_pairs(M, N, K, A, lda, cols, ld, alpha, beta, C, ldc);
  } else {
    // Few columns of C, A stored (K, M) (dB += dY^T U): C^T = op(B)^T A, whose rows combine
    // A's rows; written through C^T.
    combine_rows(N, M, K, b.transposed(), A, lda, alpha, beta, Out<T>{C, 1, ldc});
  }
}

template void gemm_thin<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float,
                               const float*, std::int64_t, const float*, std::int64_t, float,
                               float*, std::int64_t);
template void gemm_thin<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                                const double*, std::int64_t, const double*, std::int64_t, double,
                                double*, std::int64_t);

}  // namespace ssmtune::cpu
