#include "apps/ssmtune/machine_rates.h"

#include <algorithm>
#include <chrono>

namespace ssmtune {

MachineRates measure_rates(Backend& be) {
  const auto best_of_3 = [&](auto&& op) {
    double best = 1e300;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      op();
      be.synchronize();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                                .count());
    }
    return best;
  };
  const std::int64_t n = 2048, m = std::int64_t(64) << 20;
  MachineRates r;
  {
    const Tensor a = be.zeros({n, n}, DType::F32), b = be.zeros({n, n}, DType::F32);
    Tensor c = be.zeros({n, n}, DType::F32);
    const double seconds = best_of_3([&] { be.gemm(false, false, 1.0, a, b, 0.0, c); });
    r.flops_per_s = 2.0 * double(n * n * n) / seconds;
  }
  const Tensor x = be.zeros({m}, DType::F32);
  Tensor y = be.zeros({m}, DType::F32);
  r.bytes_per_s = 12.0 * double(m) / best_of_3([&] { be.add(x, y); });
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace ssmtune
