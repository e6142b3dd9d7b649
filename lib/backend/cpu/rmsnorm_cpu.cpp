// RMSNorm forward/backward (HF MambaRMSNorm; computed in the input's precision here since the
// CPU path is fp32 or fp64 throughout).
#include <algorithm>
#include <cmath>

#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {
constexpr std::int64_t kColumnBlock = 64;
}

template <class T>
void rmsnorm_forward(std::int64_t rows, std::int64_t D, const T* x, const T* w, double eps,
                     T* y, T* rstd) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * D;
    T ss = 0;
    for (std::int64_t j = 0; j < D; ++j) ss += xr[j] * xr[j];
    const T s = T(1) / std::sqrt(ss / T(D) + T(eps));
    rstd[r] = s;
    T* yr = y + r * D;
    for (std::int64_t j = 0; j < D; ++j) yr[j] = w[j] * (xr[j] * s);
  }
}

// With xhat = x * s and g = dy * w:  dx = s * (g - xhat * mean(g * xhat)),  dw += sum_r dy * xhat.
template <class T>
void rmsnorm_backward(std::int64_t rows, std::int64_t D, const T* dy, const T* x, const T* w,
                      const T* rstd, T* dx, T* dw) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * D;
    const T* dyr = dy + r * D;
    const T s = rstd[r];
    T dot = 0;
    for (std::int64_t j = 0; j < D; ++j) dot += dyr[j] * w[j] * xr[j] * s;
    const T mean = dot / T(D);
    T* dxr = dx + r * D;
    for (std::int64_t j = 0; j < D; ++j) dxr[j] = s * (dyr[j] * w[j] - xr[j] * s * mean);
  }
  const std::int64_t n_blocks = (D + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
    const std::int64_t j0 = blk * kColumnBlock, j1 = std::min(D, j0 + kColumnBlock);
    T acc[kColumnBlock] = {};
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = j0; j < j1; ++j) acc[j - j0] += dy[r * D + j] * x[r * D + j] * rstd[r];
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
                                   T*);                                                      \
  template void rmsnorm_backward<T>(std::int64_t, std::int64_t, const T*, const T*, const T*,  \
                                    const T*, T*, T*);                                       \
  template void column_sum<T>(std::int64_t, std::int64_t, const T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
