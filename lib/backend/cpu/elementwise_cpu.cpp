// Elementwise activations of the Mamba mixer (SiLU after the conv, softplus on dt, the
// silu(z) output gate), forward and backward.
#include <cmath>

#include "backend/cpu/fast_exp.h"
#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {
template <class T> T sigmoid(T v) { return T(1) / (T(1) + fast_exp(-v)); }
// d silu(v) / dv = s * (1 + v * (1 - s)), s = sigmoid(v)
template <class T> T silu_grad(T v) {
  const T s = sigmoid(v);
  return s * (T(1) + v * (T(1) - s));
}
constexpr double kSoftplusThreshold = 20.0;
}  // namespace

template <class T> void silu_forward(std::int64_t n, const T* x, T* y) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid(x[i]);
}

template <class T> void silu_backward(std::int64_t n, const T* dy, const T* x, T* dx) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) dx[i] = dy[i] * silu_grad(x[i]);
}

template <class T> void softplus_forward(std::int64_t n, const T* x, T* y) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i)
    y[i] = x[i] > T(kSoftplusThreshold) ? x[i] : std::log1p(fast_exp(x[i]));
}

template <class T> void softplus_backward(std::int64_t n, const T* dy, const T* x, T* dx) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i)
    dx[i] = x[i] > T(kSoftplusThreshold) ? dy[i] : dy[i] * sigmoid(x[i]);
}

template <class T> void gate_forward(std::int64_t n, const T* y, const T* z, T* out) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) out[i] = y[i] * (z[i] * sigmoid(z[i]));
}

template <class T>
void gate_backward(std::int64_t n, const T* dout, const T* y, const T* z, T* dy, T* dz) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const T g = dout[i];
    dz[i] = g * y[i] * silu_grad(z[i]);
    dy[i] = g * (z[i] * sigmoid(z[i]));
  }
}

#define SSMTUNE_INSTANTIATE(T)                                                            \
  template void silu_forward<T>(std::int64_t, const T*, T*);                              \
  template void silu_backward<T>(std::int64_t, const T*, const T*, T*);                   \
  template void softplus_forward<T>(std::int64_t, const T*, T*);                          \
  template void softplus_backward<T>(std::int64_t, const T*, const T*, T*);               \
  template void gate_forward<T>(std::int64_t, const T*, const T*, T*);                    \
  template void gate_backward<T>(std::int64_t, const T*, const T*, const T*, T*, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
