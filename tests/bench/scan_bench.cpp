// Standalone benchmark of the CPU selective scan (lib/backend/cpu/scan_cpu.cpp), forward and
// backward, float, at one layer's shape. Not part of the test suite: performance is measured by
// benchmarks, never by timed unit tests (docs/conventions.md "Tests"). docs/benchmarks.md has
// the figures; `ssmtune bench` gives the same kernels' share of a whole training step.
//
// Build by hand from the repository root (the flags of a Release build):
//   g++ -O3 -DNDEBUG -std=c++20 -fopenmp -Ilib tests/bench/scan_bench.cpp
//     lib/backend/cpu/scan_cpu.cpp -o /tmp/scan_bench
//
// Usage: scan_bench [B L E N [chunk [runs]]]     default: 8 256 512 16 64 9 (d256's layer)
//   prints, for forward and backward, the median, min and max seconds per call over `runs`
//   calls (after one warm-up call) and the median rate in G state updates/s (B L E N per call).
// Threads come from OMP_NUM_THREADS.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "backend/cpu/scan_cpu.h"

namespace {

std::vector<float> uniform(std::size_t n, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

template <class F> void time_calls(const char* what, int runs, double updates, F&& call) {
  call();  // warm-up: first touch of the outputs, OpenMP's threads started
  std::vector<double> s;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  const double median = s[s.size() / 2];
  std::printf("%-9s median %.5f s  min %.5f  max %.5f  %.2f G updates/s\n", what, median,
              s.front(), s.back(), updates / median * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  using ssmtune::cpu::ScanDims;
  const auto arg = [&](int i, long dflt) { return argc > i ? std::atol(argv[i]) : dflt; };
  ScanDims d{arg(1, 8), arg(2, 256), arg(3, 512), arg(4, 16)};
  d.chunk = arg(5, 64);
  const int runs = int(arg(6, 9));
  const std::size_t BLE = std::size_t(d.batch * d.seqlen * d.d_inner);
  const std::size_t BLN = std::size_t(d.batch * d.seqlen * d.d_state);
  const std::size_t EN = std::size_t(d.d_inner * d.d_state);

  std::mt19937_64 rng(1);
  const auto u = uniform(BLE, rng, -1, 1), delta = uniform(BLE, rng, 0.001f, 0.1f);
  const auto A = uniform(EN, rng, -16, -1), Bm = uniform(BLN, rng, -1, 1);
  const auto Cm = uniform(BLN, rng, -1, 1), D = uniform(std::size_t(d.d_inner), rng, -1, 1);
  const auto dy = uniform(BLE, rng, -1, 1);
  std::vector<float> y(BLE), h_saved(std::size_t(d.batch * d.n_chunks()) * EN);
  std::vector<float> du(BLE), ddelta(BLE), dA(EN), dBm(BLN), dCm(BLN), dD(std::size_t(d.d_inner));

  std::printf("scan B %ld L %ld E %ld N %ld chunk %ld, %d threads, %d runs\n", long(d.batch),
              long(d.seqlen), long(d.d_inner), long(d.d_state), long(d.chunk),
              omp_get_max_threads(), runs);
  const double updates = double(BLE) * double(d.d_state);
  time_calls("forward", runs, updates, [&] {
    ssmtune::cpu::selective_scan_forward<float>(d, u.data(), delta.data(), A.data(), Bm.data(),
                                         Cm.data(), D.data(), nullptr, y.data(),
                                         h_saved.data(), nullptr);
  });
  time_calls("backward", runs, updates, [&] {
    ssmtune::cpu::selective_scan_backward<float>(d, u.data(), delta.data(), A.data(), Bm.data(),
                                          Cm.data(), D.data(), h_saved.data(), dy.data(),
                                          du.data(), ddelta.data(), dA.data(), dBm.data(),
                                          dCm.data(), dD.data(), nullptr);
  });
  double checksum = 0;  // so that no output is optimised away, and runs can be compared
  for (std::size_t i = 0; i < BLN; ++i) checksum += double(dBm[i]) + double(dCm[i]);
  std::printf("checksum dB + dC %.9g\n", checksum);
}
