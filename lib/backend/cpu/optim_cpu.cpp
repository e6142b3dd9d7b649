#include "backend/cpu/optim_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ssmtune::cpu {

template <class T>
double sum_squares(std::int64_t n, const T* x) {
  constexpr std::int64_t kBlock = 8192;
  const std::int64_t n_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(n_blocks, 0.0);
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    double s = 0;
    const std::int64_t end = std::min(n, (b + 1) * kBlock);
    for (std::int64_t i = b * kBlock; i < end; ++i) s += double(x[i]) * double(x[i]);
    partial[b] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

template <class T>
void adamw_update(std::int64_t n, T* param, const T* grad, T* m, T* v, double lr, double beta1,
                  double beta2, double eps, double weight_decay, std::int64_t step) {
  // Scalars computed as torch computes them (Python floats, i.e. double), then used in T.
  const T decay = T(1.0 - lr * weight_decay);
  const T w1 = T(1.0 - beta1), b2 = T(beta2), w2 = T(1.0 - beta2);
  const double bias_correction1 = 1.0 - std::pow(beta1, double(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, double(step));
  const T step_size = T(lr / bias_correction1);
  const T bc2_sqrt = T(std::sqrt(bias_correction2));
  const T eps_t = T(eps);
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const T g = grad[i];
    T p = param[i] * decay;
    const T mi = m[i] + w1 * (g - m[i]);  // lerp(m, g, 1 - beta1)
    const T vi = v[i] * b2 + w2 * g * g;
    const T denom = std::sqrt(vi) / bc2_sqrt + eps_t;
    p += -step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
  }
}

template double sum_squares<float>(std::int64_t, const float*);
template double sum_squares<double>(std::int64_t, const double*);
template void adamw_update<float>(std::int64_t, float*, const float*, float*, float*, double,
                                  double, double, double, double, std::int64_t);
template void adamw_update<double>(std::int64_t, double*, const double*, double*, double*, double,
                                   double, double, double, double, std::int64_t);

}  // namespace ssmtune::cpu
