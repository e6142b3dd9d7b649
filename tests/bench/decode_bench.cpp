// Standalone benchmark of a decoding step's matrix-vector products alone, at the mamba-130m
// shapes (24 layers: in_proj as two halves, x_proj, dt_proj, out_proj; then the 50280 x 768
// head), each with its own fp32 weights, through ssmtune::cpu::gemm with one row (the products
// `ssmtune generate` runs); and, over the same bytes, a plain read of every weight (a sum in 16
// lanes per thread, nothing written). It tells what the decode's products cost with nothing
// else around them, and how far that is from what this machine's memory gives one read stream
// per thread: `ssmtune bench --generate`'s "floor" uses y += x (two reads and a write per
// element), which runs faster here than a single read stream does (docs/benchmarks.md).
// Not part of the test suite: performance is measured by benchmarks, never by timed unit tests
// (docs/conventions.md "Tests").
//
// Build by hand from the repository root (the flags of a Release build):
//   g++ -O3 -DNDEBUG -std=c++20 -fopenmp -Ilib -I/usr/include/x86_64-linux-gnu/openblas-openmp
//     tests/bench/decode_bench.cpp lib/backend/cpu/gemm_cpu.cpp lib/backend/cpu/gemm_thin_cpu.cpp
//     lib/backend/cpu/blas_select.cpp lib/core/host_blocks.cpp lib/core/dtype.cpp
//     -o /tmp/decode_bench
//     /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so
//     -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -ldl
//
// Usage: decode_bench [tokens [rounds]]     default: 20 tokens per round, 7 rounds
//   prints per round the products' and the plain read's ms per token and GB/s, then medians.
// Threads come from OMP_NUM_THREADS.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/cpu/blas_select.h"
#include "backend/cpu/gemm_cpu.h"

namespace {

struct Product {
  std::int64_t out, in;  // W: (out, in), y (1, out) = x (1, in) W^T
  std::vector<float> W;
};

// The products of one mamba-130m decoding step, in the order the model runs them.
std::vector<Product> decode_products() {
  const std::int64_t D = 768, E = 1536, N = 16, R = 48, V = 50280, layers = 24;
  std::vector<Product> p;
  for (std::int64_t l = 0; l < layers; ++l)
    for (const auto& [out, in] : {std::pair{E, D}, {E, D}, {R + 2 * N, E}, {E, R}, {D, E}})
      p.push_back({out, in, {}});
  p.push_back({V, D, {}});
  for (Product& q : p) {
    q.W.resize(std::size_t(q.out * q.in));
    for (std::size_t i = 0; i < q.W.size(); ++i) q.W[i] = 1e-3f * float(i % 13);
  }
  return p;
}

// Every weight read once, summed in 16 lanes per thread (vectorised, no sum across lanes in the
// loop), the threads taking contiguous halves as dot_rows does.
float read_all(const std::vector<Product>& p) {
  float total = 0;
  for (const Product& q : p) {
    const std::int64_t n = std::int64_t(q.W.size());
    const float* w = q.W.data();
#pragma omp parallel reduction(+ : total)
    {
      const std::int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
      const std::int64_t lo = n * t / T / 16 * 16, hi = t + 1 == T ? n : n * (t + 1) / T / 16 * 16;
      float acc[16] = {};
      for (std::int64_t i = lo; i + 16 <= hi; i += 16)
        for (int l = 0; l < 16; ++l) acc[l] += w[i + l];
      for (const float a : acc) total += a;
    }
  }
  return total;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  ssmtune::cpu::ensure_fast_blas(argc, argv);
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 20;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 7;
  if (tokens < 1 || rounds < 1) {
    std::fprintf(stderr, "usage: decode_bench [tokens >= 1 [rounds >= 1]]\n");
    return 2;
  }
  const std::vector<Product> p = decode_products();
  double bytes = 0;
  std::int64_t widest = 0;
  for (const Product& q : p) {
    bytes += 4.0 * double(q.W.size());
    widest = std::max({widest, q.in, q.out});
  }
  std::vector<float> x(static_cast<std::size_t>(widest), 0.5f);
  std::vector<float> y(static_cast<std::size_t>(widest));
  std::printf("%zu products, %.1f MB of fp32 weights per token, %d threads\n", p.size(),
              bytes / 1e6, omp_get_max_threads());

  const auto per_token = [&](auto&& body) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < tokens; ++t) body();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / tokens;
  };
  std::vector<double> products_s, read_s;
  float sink = 0;
  for (int r = 0; r < rounds + 1; ++r) {  // round 0 warms up (first touch, threads)
    const double a = per_token([&] {
      for (const Product& q : p)
        ssmtune::cpu::gemm<float>(false, true, 1, q.out, q.in, 1.0f, x.data(), q.in, q.W.data(),
                                  q.in, 0.0f, y.data(), q.out);
    });
    const double b = per_token([&] { sink += read_all(p); });
    if (r == 0) continue;
    products_s.push_back(a);
    read_s.push_back(b);
    std::printf("round %d  products %.2f ms/token (%.1f GB/s)  read %.2f ms/token (%.1f GB/s)\n",
                r, a * 1e3, bytes / a / 1e9, b * 1e3, bytes / b / 1e9);
  }
  const double a = median(products_s), b = median(read_s);
  std::printf("median   products %.2f ms/token (%.1f GB/s)  read %.2f ms/token (%.1f GB/s)  "
              "products / read %.2f   (%g)\n",
              a * 1e3, bytes / a / 1e9, b * 1e3, bytes / b / 1e9, a / b, double(sink + y[0]));
}
