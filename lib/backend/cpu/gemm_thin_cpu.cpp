#include "backend/cpu/gemm_thin_cpu.h"

#include <algorithm>

#include "backend/cpu/cpu_clones.h"

namespace ssmtune::cpu {

namespace {

// Both routes compute out(r, w) = alpha sum_k coef(r, k) src[k * lds + w] + beta out(r, w):
// R <= kThinDim rows of the result, each a combination of the rows of a long source whose rows
// are contiguous (few rows of C: src = B; few columns of C: the rows of C^T, src = A).

constexpr std::int64_t kStrip = 64;  // columns per tile: four AVX-512 registers a row

// A matrix read through strides, element (r, c) at p[r * rs + c * cs]: op(A) or op(B)^T as a
// view of what the caller stores.
template <class T>
struct Strided {
  const T* p;
  std::int64_t rs, cs;
  T operator()(std::int64_t r, std::int64_t c) const { return p[r * rs + c * cs]; }
};

// Where the result goes: its element (r, w) at p[r * rs + w * ws] (C itself, or C^T).
template <class T>
struct Out {
  T* p;
  std::int64_t rs, ws;
};

// Rows [r0, r0 + RT), columns [w0, w0 + wn), wn <= kStrip: the RT x kStrip sums held in
// registers while k runs down the source's rows, each summed in k order. beta == 0 does not
// read the old value (it may hold anything, NaN included).
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
    for (std::int64_t l = 0; l < wn; ++l) {
      T& o = out.p[(r0 + r) * out.rs + (w0 + l) * out.ws];
      o = beta == T(0) ? alpha * acc[r][l] : alpha * acc[r][l] + beta * o;
    }
}

// Every row, columns [w0, w1) <= kStrip: the source's strip stays in cache for the row tiles.
template <class T>
[[gnu::always_inline]] inline void combine_strip_body(std::int64_t R, std::int64_t w0,
                                                      std::int64_t w1, std::int64_t K,
                                                      Strided<T> coef, const T* src,
                                                      std::int64_t lds, T alpha, T beta,
                                                      Out<T> out) {
  constexpr int kRows = 4;
  std::int64_t r = 0;
  for (; r + kRows <= R; r += kRows)
    combine_tile<T, kRows>(r, w0, w1 - w0, K, coef, src, lds, alpha, beta, out);
  for (; r < R; ++r) combine_tile<T, 1>(r, w0, w1 - w0, K, coef, src, lds, alpha, beta, out);
}

SSMTUNE_CPU_CLONES void combine_strip(std::int64_t R, std::int64_t w0, std::int64_t w1,
                                      std::int64_t K, Strided<float> coef, const float* src,
                                      std::int64_t lds, float alpha, float beta, Out<float> out) {
  combine_strip_body(R, w0, w1, K, coef, src, lds, alpha, beta, out);
}
SSMTUNE_CPU_CLONES void combine_strip(std::int64_t R, std::int64_t w0, std::int64_t w1,
                                      std::int64_t K, Strided<double> coef, const double* src,
                                      std::int64_t lds, double alpha, double beta,
                                      Out<double> out) {
  combine_strip_body(R, w0, w1, K, coef, src, lds, alpha, beta, out);
}

// The strips split over the threads.
template <class T>
void combine_rows(std::int64_t R, std::int64_t W, std::int64_t K, Strided<T> coef, const T* src,
                  std::int64_t lds, T alpha, T beta, Out<T> out) {
  const std::int64_t strips = (W + kStrip - 1) / kStrip;
#pragma omp parallel for schedule(static) if (R * W * K >= (1 << 15))
  for (std::int64_t s = 0; s < strips; ++s)
    combine_strip(R, s * kStrip, std::min(W, (s + 1) * kStrip), K, coef, src, lds, alpha, beta,
                  out);
}

}  // namespace

template <class T>
void gemm_thin(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
               const T* A, std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C,
               std::int64_t ldc) {
  const bool few_rows = M <= kThinDim && !trans_b, few_columns = N <= kThinDim && trans_a;
  if (few_rows && (!few_columns || M <= N)) {
    // Few rows of C, B stored (K, N) (dA += dU^T x): each row combines B's rows.
    const Strided<T> a = trans_a ? Strided<T>{A, 1, lda} : Strided<T>{A, lda, 1};
    combine_rows(M, N, K, a, B, ldb, alpha, beta, Out<T>{C, ldc, 1});
  } else {
    // Few columns of C, A stored (K, M) (dB += dY^T U): C^T = op(B)^T A, whose rows combine
    // A's rows; written through C^T.
    const Strided<T> bt = trans_b ? Strided<T>{B, ldb, 1} : Strided<T>{B, 1, ldb};
    combine_rows(N, M, K, bt, A, lda, alpha, beta, Out<T>{C, 1, ldc});
  }
}

template void gemm_thin<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float,
                               const float*, std::int64_t, const float*, std::int64_t, float,
                               float*, std::int64_t);
template void gemm_thin<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                                const double*, std::int64_t, const double*, std::int64_t, double,
                                double*, std::int64_t);

}  // namespace ssmtune::cpu
