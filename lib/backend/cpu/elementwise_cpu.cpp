// Elementwise activations of the Mamba mixer (SiLU after the conv, softplus on dt, the
// silu(z) output gate), forward and backward.
//
// Each op splits [0, n) into one contiguous range per OpenMP thread and runs its loop there;
// the float loops are cloned per CPU (cpu_clones.h) and call only plain arithmetic
// (fast_exp.h), so they run at the full vector width. One cloned function serves every op,
// a switch outside the loops picking the op's loop.
#include <algorithm>
#include <cmath>
#include <omp.h>

#include "backend/cpu/cpu_clones.h"
#include "backend/cpu/fast_exp.h"
#include "backend/cpu/ops_cpu.h"

namespace ssmtune::cpu {

namespace {
// d silu(v) / dv = s * (1 + v * (1 - s)), s = sigmoid(v)
template <class T> [[gnu::always_inline]] inline T silu_grad(T v) {
  const T s = fast_sigmoid(v);
  return s * (T(1) + v * (T(1) - s));
}

enum class Op { SiluForward, SiluBackward, SoftplusForward, SoftplusBackward, GateForward,
                GateBackward };

// The op's loop over [lo, hi). Inputs a, b, c and outputs o, o2 as each op names them below.
template <class T>
[[gnu::always_inline]] inline void op_range(Op op, std::int64_t lo, std::int64_t hi, const T* a,
                                            const T* b, const T* c, T* o, T* o2) {
  switch (op) {
    case Op::SiluForward:  // a = x; o = y
      for (std::int64_t i = lo; i < hi; ++i) o[i] = a[i] * fast_sigmoid(a[i]);
      break;
    case Op::SiluBackward:  // a = dy, b = x; o = dx
      for (std::int64_t i = lo; i < hi; ++i) o[i] = a[i] * silu_grad(b[i]);
      break;
    case Op::SoftplusForward:  // a = x; o = y
      for (std::int64_t i = lo; i < hi; ++i) o[i] = fast_softplus(a[i]);
      break;
    case Op::SoftplusBackward:  // a = dy, b = x; o = dx
      for (std::int64_t i = lo; i < hi; ++i) o[i] = softplus_grad(a[i], b[i]);
      break;
    case Op::GateForward:  // a = y, b = z; o = y * silu(z)
      for (std::int64_t i = lo; i < hi; ++i) o[i] = a[i] * (b[i] * fast_sigmoid(b[i]));
      break;
    case Op::GateBackward:  // a = dout, b = y, c = z; o = dy, o2 = dz
      for (std::int64_t i = lo; i < hi; ++i) {
        const T g = a[i];
        o2[i] = g * b[i] * silu_grad(c[i]);
        o[i] = g * (c[i] * fast_sigmoid(c[i]));
      }
      break;
  }
}

SSMTUNE_CPU_CLONES void op_range_f32(Op op, std::int64_t lo, std::int64_t hi, const float* a,
                                     const float* b, const float* c, float* o, float* o2) {
  op_range(op, lo, hi, a, b, c, o, o2);
}

template <class T>
void run(Op op, std::int64_t n, const T* a, const T* b, const T* c, T* o, T* o2 = nullptr) {
#pragma omp parallel if (n >= kParallelMin)
  {
    // Ranges in multiples of 64 elements, so no two threads write one cache line.
    const std::int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t per = (n / threads + 63) / 64 * 64;
    const std::int64_t lo = std::min(n, t * per), hi = std::min(n, lo + per);
    if (lo < hi) {
      if constexpr (std::is_same_v<T, float>)
        op_range_f32(op, lo, hi, a, b, c, o, o2);
      else
        op_range(op, lo, hi, a, b, c, o, o2);
    }
  }
}
}  // namespace

template <class T> void silu_forward(std::int64_t n, const T* x, T* y) {
  run<T>(Op::SiluForward, n, x, nullptr, nullptr, y);
}

template <class T> void silu_backward(std::int64_t n, const T* dy, const T* x, T* dx) {
  run<T>(Op::SiluBackward, n, dy, x, nullptr, dx);
}

template <class T> void softplus_forward(std::int64_t n, const T* x, T* y) {
  run<T>(Op::SoftplusForward, n, x, nullptr, nullptr, y);
}

template <class T> void softplus_backward(std::int64_t n, const T* dy, const T* x, T* dx) {
  run<T>(Op::SoftplusBackward, n, dy, x, nullptr, dx);
}

template <class T> void gate_forward(std::int64_t n, const T* y, const T* z, T* out) {
  run<T>(Op::GateForward, n, y, z, nullptr, out);
}

template <class T>
void gate_backward(std::int64_t n, const T* dout, const T* y, const T* z, T* dy, T* dz) {
  run<T>(Op::GateBackward, n, dout, y, z, dy, dz);
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
