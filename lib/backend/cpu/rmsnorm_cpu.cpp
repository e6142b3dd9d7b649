// RMSNorm forward/backward (HF MambaRMSNorm; computed in the input's precision here since the
// CPU path is fp32 or fp64 throughout).
#include <algorithm>
#include <cmath>

#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {
constexpr std::int64_t kColumnBlock = 64;
}

// A group of a row is a run of S = D / G columns: segment `seg` = r G + g starts at seg S in
// x and at g S in w, so the rows x groups segments are a (rows G, S) matrix.
template <class T>
void rmsnorm_forward(std::int64_t rows, std::int64_t D, const T* x, const T* w, double eps,
                     T* y, T* rstd, std::int64_t G) {
  const std::int64_t S = D / G;
#pragma omp parallel for schedule(static) if (rows * D >= kParallelMin)
  for (std::int64_t seg = 0; seg < rows * G; ++seg) {
    const T* xr = x + seg * S;
    const T* wr = w + (seg % G) * S;
    T ss = 0;
    for (std::int64_t j = 0; j < S; ++j) ss += xr[j] * xr[j];
    const T s = T(1) / std::sqrt(ss / T(S) + T(eps));
    rstd[seg] = s;
    T* yr = y + seg * S;
    for (std::int64_t j = 0; j < S; ++j) yr[j] = wr[j] * (xr[j] * s);
  }
}

// With xhat = x * s and g = dy * w:  dx = s * (g - xhat * mean(g * xhat)),  dw += sum_r dy * xhat.
template <class T>
void rmsnorm_backward(std::int64_t rows, std::int64_t D, const T* dy, const T* x, const T* w,
                      const T* rstd, T* dx, T* dw, std::int64_t G) {
  const std::int64_t S = D / G;
#pragma omp parallel for schedule(static)
  for (std::int64_t seg = 0; seg < rows * G; ++seg) {
    const T* xr = x + seg * S;
    const T* dyr = dy + seg * S;
    const T* wr = w + (seg % G) * S;
    const T s = rstd[seg];
    T dot = 0;
    for (std::int64_t j = 0; j < S; ++j) dot += dyr[j] * wr[j] * xr[j] * s;
    const T mean = dot / T(S);
    T* dxr = dx + seg * S;
    for (std::int64_t j = 0; j < S; ++j) dxr[j] = s * (dyr[j] * wr[j] - xr[j] * s * mean);
  }
  const std::int64_t n_blocks = (D + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
    const std::int64_t j0 = blk * kColumnBlock, j1 = std::min(D, j0 + kColumnBlock);
    T acc[kColumnBlock] = {};
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = j0; j < j1; ++j)
        acc[j - j0] += dy[r * D + j] * x[r * D + j] * rstd[r * G + j / S];
    for (std::int64_t j = j0; j < j1; ++j) dw[j] += acc[j - j0];
  }
}

template <class T> void column_sum(std::int64_t rows, std::int64_t cols, const T* dy, T* db) {
  const std::int64_t n_blocks = (cols + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
    const std::int64_t j0 = blk * kColumnBlock, j1 = std::min(cols, j0 + kColumnBlock);
    T acc[kColumnBlock] = {};
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = j0; j < j1; ++j) acc[j - j0] += dy[r * cols + j];
    for (std::int64_t j = j0; j < j1; ++j) db[j] += acc[j - j0];
  }
}

#define SSMTUNE_INSTANTIATE(T)                                                               \
  template void rmsnorm_forward<T>(std::int64_t, std::int64_t, const T*, const T*, double, T*, \
                                   T*, std::int64_t);                                        \
  template void rmsnorm_backward<T>(std::int64_t, std::int64_t, const T*, const T*, const T*,  \
                                    const T*, T*, T*, std::int64_t);                         \
  template void column_sum<T>(std::int64_t, std::int64_t, const T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
