// The ops at the two ends of the LM: token embedding and token cross-entropy.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/fast_exp.h"
#include "backend/cpu/ops_cpu.h"
#include "core/dtype.h"

namespace ssmtune::cpu {

template <class T>
void embedding_forward(std::int64_t n, std::int64_t D, const std::int64_t* ids, const T* table,
                       T* out) {
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < n; ++t) std::copy_n(table + ids[t] * D, D, out + t * D);
}

template <class T>
void embedding_forward_bf16(std::int64_t n, std::int64_t D, const std::int64_t* ids,
                            const std::uint16_t* table, T* out) {
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < D; ++j) out[t * D + j] = T(bf16_to_f32(table[ids[t] * D + j]));
}

// Sequential over tokens: rows repeat, and a fixed order keeps the sums deterministic.
template <class T>
void embedding_backward(std::int64_t n, std::int64_t D, const std::int64_t* ids, const T* dout,
                        T* dtable) {
  for (std::int64_t t = 0; t < n; ++t) {
    T* row = dtable + ids[t] * D;
    const T* g = dout + t * D;
    for (std::int64_t j = 0; j < D; ++j) row[j] += g[j];
  }
}

namespace {
// log(sum(exp(x))) of one row, shifted by the max for range.
template <class T> double log_sum_exp(std::int64_t V, const T* x) {
  double mx = -std::numeric_limits<double>::infinity();
  for (std::int64_t v = 0; v < V; ++v) mx = std::max(mx, double(x[v]));
  double s = 0;
  for (std::int64_t v = 0; v < V; ++v) s += double(fast_exp(x[v] - T(mx)));
  return mx + std::log(s);
}
}  // namespace

template <class T>
double cross_entropy_forward(std::int64_t rows, std::int64_t V, const T* logits,
                             const std::int64_t* targets, std::int64_t* n_counted) {
  double total = 0;
  std::int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : total, count)
  for (std::int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    const T* x = logits + r * V;
    total += log_sum_exp(V, x) - double(x[targets[r]]);
    count += 1;
  }
  *n_counted = count;
  return total;
}

template <class T>
void cross_entropy_backward(std::int64_t rows, std::int64_t V, const T* logits,
                            const std::int64_t* targets, double scale, T* dlogits) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * V;
    T* dx = dlogits + r * V;
    if (targets[r] < 0) {
      std::fill_n(dx, V, T(0));
      continue;
    }
    const double lse = log_sum_exp(V, x);
    for (std::int64_t v = 0; v < V; ++v) dx[v] = T(scale) * fast_exp(x[v] - T(lse));
    dx[targets[r]] -= T(scale);
  }
}

#define SSMTUNE_INSTANTIATE(T)                                                                   \
  template void embedding_forward<T>(std::int64_t, std::int64_t, const std::int64_t*, const T*,  \
                                     T*);                                                        \
  template void embedding_forward_bf16<T>(std::int64_t, std::int64_t, const std::int64_t*,       \
                                          const std::uint16_t*, T*);                             \
  template void embedding_backward<T>(std::int64_t, std::int64_t, const std::int64_t*, const T*, \
                                      T*);                                                       \
  template double cross_entropy_forward<T>(std::int64_t, std::int64_t, const T*,                 \
                                           const std::int64_t*, std::int64_t*);                  \
  template void cross_entropy_backward<T>(std::int64_t, std::int64_t, const T*,                  \
                                          const std::int64_t*, double, T*);
SSMTUNE_INSTANTIATE(float)
SSMTUNE_INSTANTIATE(double)
#undef SSMTUNE_INSTANTIATE

}  // namespace ssmtune::cpu
