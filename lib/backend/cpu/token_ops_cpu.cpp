// The ops at the two ends of the LM: token embedding and token cross-entropy.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_clones.h"
#include "backend/cpu/fast_exp.h"
#include "backend/cpu/ops_cpu.h"
#include "core/dtype.h"

namespace ssmtune::cpu {

template <class T>
void embedding_forward(std::int64_t n, std::int64_t D, const std::int64_t* ids, const T* table,
                       T* out) {
#pragma omp parallel for schedule(static) if (n * D >= kParallelMin)
  for (std::int64_t t = 0; t < n; ++t) std::copy_n(table + ids[t] * D, D, out + t * D);
}

template <class T>
void embedding_forward_bf16(std::int64_t n, std::int64_t D, const std::int64_t* ids,
                            const std::uint16_t* table, T* out) {
#pragma omp parallel for schedule(static) if (n * D >= kParallelMin)
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
// log(sum(exp(x))) of one row, shifted by the max for range. The generic body serves double
// (the gradient checks' precision).
template <class T> double log_sum_exp(std::int64_t V, const T* x) {
  double mx = -std::numeric_limits<double>::infinity();
  for (std::int64_t v = 0; v < V; ++v) mx = std::max(mx, double(x[v]));
  double s = 0;
  for (std::int64_t v = 0; v < V; ++v) s += double(fast_exp(x[v] - T(mx)));
  return mx + std::log(s);
}

// float rows (every training run): a row is a vocabulary's worth of logits, and these loops
// are most of the cross-entropy's time. A sequential max or sum cannot vectorise (the compiler
// may not reorder it), so both run in kLanes independent lanes, combined at the end in a fixed
// order (the result depends neither on threads nor on the CPU's vector width), and the
// functions are cloned per CPU (cpu_clones.h). The exps are summed in double, as above: a row
// of 50k terms in float would lose ~1e-5 relative.
constexpr std::int64_t kLanes = 16;

SSMTUNE_CPU_CLONES double log_sum_exp_f32(std::int64_t V, const float* x) {
  float lane_max[kLanes];
  std::fill_n(lane_max, kLanes, -std::numeric_limits<float>::infinity());
  const std::int64_t V_lanes = V - V % kLanes;
  for (std::int64_t v = 0; v < V_lanes; v += kLanes)
    for (std::int64_t l = 0; l < kLanes; ++l)
      lane_max[l] = x[v + l] > lane_max[l] ? x[v + l] : lane_max[l];  // NaN ignored, as std::max
  float mx = -std::numeric_limits<float>::infinity();
  for (std::int64_t l = 0; l < kLanes; ++l) mx = std::max(mx, lane_max[l]);
  for (std::int64_t v = V_lanes; v < V; ++v) mx = std::max(mx, x[v]);
  // The exps in float first, then widened and added: written as one loop, the mix of float
  // and double widths kept GCC from vectorising it, and every exp ran scalar.
  double lane_sum[kLanes] = {};
  for (std::int64_t v = 0; v < V_lanes; v += kLanes) {
    float e[kLanes];
    for (std::int64_t l = 0; l < kLanes; ++l) e[l] = fast_exp(x[v + l] - mx);
    for (std::int64_t l = 0; l < kLanes; ++l) lane_sum[l] += double(e[l]);
  }
  double s = 0;
  for (std::int64_t l = 0; l < kLanes; ++l) s += lane_sum[l];
  for (std::int64_t v = V_lanes; v < V; ++v) s += double(fast_exp(x[v] - mx));
  return double(mx) + std::log(s);
}

// x = scale * softmax(x) of one float row, in place: the training step's case, and one pointer
// spares the loop the overlap check that two possibly-equal ones would need.
SSMTUNE_CPU_CLONES void scaled_softmax_f32(std::int64_t V, float* x, float lse, float scale) {
  for (std::int64_t v = 0; v < V; ++v) x[v] = scale * fast_exp(x[v] - lse);
}

double row_log_sum_exp(std::int64_t V, const float* x) { return log_sum_exp_f32(V, x); }
double row_log_sum_exp(std::int64_t V, const double* x) { return log_sum_exp(V, x); }

void row_scaled_softmax(std::int64_t V, const float* x, double lse, double scale, float* dx) {
  if (dx != x) std::copy_n(x, V, dx);
  scaled_softmax_f32(V, dx, float(lse), float(scale));
}
void row_scaled_softmax(std::int64_t V, const double* x, double lse, double scale, double* dx) {
  for (std::int64_t v = 0; v < V; ++v) dx[v] = scale * std::exp(x[v] - lse);
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
    total += row_log_sum_exp(V, x) - double(x[targets[r]]);
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
    row_scaled_softmax(V, x, row_log_sum_exp(V, x), scale, dx);  // in place: x == dx is fine
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
