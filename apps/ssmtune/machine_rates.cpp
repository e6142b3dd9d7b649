#include "apps/ssmtune/machine_rates.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

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

double op_seconds(const OpProfile& profile) {
  double total = 0;
  for (const auto& [name, e] : profile.ops) total += e.seconds;
  return total;
}

void print_op_table(const OpProfile& profile) {
  const double total = std::max(op_seconds(profile), 1e-12);
  std::printf("%-16s %10s %10s %8s %12s\n", "op", "calls", "seconds", "share", "GFLOP/s");
  for (const auto& [name, e] : profile.ops) {
    const std::string gflops = e.flops > 0 ? std::to_string(int(e.flops / e.seconds / 1e9)) : "";
    std::printf("%-16s %10lld %10.4f %7.1f%% %12s\n", name.c_str(), (long long)e.calls, e.seconds,
                100.0 * e.seconds / total, gflops.c_str());
  }
}

}  // namespace ssmtune
