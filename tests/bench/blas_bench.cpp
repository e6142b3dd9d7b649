// Standalone GEMM benchmark used to choose ssmtune's CPU BLAS (docs/cpu_blas.md has the
// results and the exact build commands). Not part of the test suite: performance is measured by
// benchmarks, never by timed unit tests (docs/conventions.md "Tests").
//
// One source, three backends picked at compile time:
//   -DBENCH_CBLAS     cblas_sgemm/cblas_dgemm of whatever is linked (OpenBLAS or BLIS)
//   -DBENCH_DNNL      oneDNN's dnnl_sgemm (float only; the double case is skipped)
//   -DBENCH_SSMTUNE   ssmtune::cpu::gemm from lib/backend/cpu/gemm_cpu.cpp + blas_select.cpp, i.e.
//                     exactly what the ssmtune binary runs (core type chosen automatically)
// Threads come from the environment (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, BLIS_NUM_THREADS),
// because each library reads them when it initialises.
//
// Build by hand from the repository root (one command; other backends: docs/cpu_blas.md):
//   g++ -O2 -std=c++20 -fopenmp -DBENCH_SSMTUNE -Ilib
//     -I/usr/include/x86_64-linux-gnu/openblas-openmp tests/bench/blas_bench.cpp
//     lib/backend/cpu/gemm_cpu.cpp lib/backend/cpu/blas_select.cpp -o /tmp/blas_bench
//     /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so
//     -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -ldl
//
// Usage: blas_bench [--runs N] [--min-time S] [--mixed] [--only NAME]
//   prints one line per case: median/min/max GFLOP/s over N samples and the relative error
//   against a double-precision reference on sampled rows.
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(BENCH_CBLAS)
#include <cblas.h>
#elif defined(BENCH_DNNL)
#include <oneapi/dnnl/dnnl.h>
#elif defined(BENCH_SSMTUNE)
#include "backend/cpu/blas_select.h"
#include "backend/cpu/gemm_cpu.h"
#else
#error "define one of BENCH_CBLAS, BENCH_DNNL, BENCH_SSMTUNE"
#endif

namespace {

// Row-major C = alpha op(A) op(B) + beta C, op(A): (M, K), op(B): (K, N), C: (M, N).
template <typename T>
bool run_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
              const T* B, int64_t ldb, T* C, int64_t ldc) {
#if defined(BENCH_CBLAS)
  const auto opa = ta ? CblasTrans : CblasNoTrans;
  const auto opb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, opa, opb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
  else
    cblas_dgemm(CblasRowMajor, opa, opb, M, N, K, 1.0, A, lda, B, ldb, 0.0, C, ldc);
  return true;
#elif defined(BENCH_DNNL)
  if constexpr (std::is_same_v<T, float>) {
    return dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C,
                      ldc) == dnnl_success;
  }
  return false;  // oneDNN has no dgemm
#else
  ssmtune::cpu::gemm<T>(ta, tb, M, N, K, T(1), A, lda, B, ldb, T(0), C, ldc);
  return true;
#endif
}

std::string backend_description() {
#if defined(BENCH_SSMTUNE)
  return ssmtune::cpu::blas_description();
#elif defined(BENCH_DNNL)
  const dnnl_version_t* v = dnnl_version();
  char buf[128];
  std::snprintf(buf, sizeof buf, "oneDNN %d.%d.%d, max ISA via ONEDNN_MAX_CPU_ISA=%s", v->major,
                v->minor, v->patch,
                std::getenv("ONEDNN_MAX_CPU_ISA") ? std::getenv("ONEDNN_MAX_CPU_ISA") : "(unset)");
  return buf;
#else
  // Look the libraries' own reporting functions up by name so one source serves both.
  using str_fn = char* (*)();
  if (auto cfg = reinterpret_cast<str_fn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    auto core = reinterpret_cast<str_fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
    return std::string(cfg()) + ", core " + core();
  }
  if (auto ver = reinterpret_cast<str_fn>(dlsym(RTLD_DEFAULT, "bli_info_get_version_str"))) {
    using id_fn = int (*)();
    using name_fn = char* (*)(int);
    auto id = reinterpret_cast<id_fn>(dlsym(RTLD_DEFAULT, "bli_arch_query_id"));
    auto name = reinterpret_cast<name_fn>(dlsym(RTLD_DEFAULT, "bli_arch_string"));
    return std::string("BLIS ") + ver() + ", arch " + (id && name ? name(id()) : "?");
  }
  return "unknown cblas";
#endif
}

struct Case {
  const char* name;
  bool ta, tb;
  int64_t M, N, K;
  bool is_double;
};

// Mamba-130m-like shapes (d_model 768, d_inner 1536, dt_rank 48, d_state 16) with 2048 tokens
// per batch. Weights use torch.nn.Linear's (out, in) layout, so forward is Y = X W^T.
const Case kCases[] = {
    {"square_1024", false, false, 1024, 1024, 1024, false},
    {"in_proj_fwd  Y=X*W^T", false, true, 2048, 3072, 768, false},
    {"in_proj_dX   dX=dY*W", false, false, 2048, 768, 3072, false},
    {"in_proj_dW   dW=dY^T*X", true, false, 3072, 768, 2048, false},
    {"out_proj_fwd Y=X*W^T", false, true, 2048, 768, 1536, false},
    {"x_proj_fwd   Y=X*W^T", false, true, 2048, 80, 1536, false},
    {"dgemm_1024", false, false, 1024, 1024, 1024, true},
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename T>
void fill(std::vector<T>& v, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::generate(v.begin(), v.end(), [&] { return T(u(rng)); });
}

// ||C - C_ref||_F / ||C_ref||_F over 32 evenly spaced rows, reference in double.
template <typename T>
double rel_error(const Case& c, const std::vector<T>& A, int64_t lda, const std::vector<T>& B,
                 int64_t ldb, const std::vector<T>& C) {
  double num = 0, den = 0;
  const int64_t step = std::max<int64_t>(1, c.M / 32);
  std::vector<double> row(c.N);
  for (int64_t i = 0; i < c.M; i += step) {
    std::fill(row.begin(), row.end(), 0.0);
    for (int64_t k = 0; k < c.K; ++k) {
      const double a = c.ta ? A[k * lda + i] : A[i * lda + k];
      for (int64_t j = 0; j < c.N; ++j)
        row[j] += a * double(c.tb ? B[j * ldb + k] : B[k * ldb + j]);
    }
    for (int64_t j = 0; j < c.N; ++j) {
      const double d = double(C[i * c.N + j]) - row[j];
      num += d * d;
      den += row[j] * row[j];
    }
  }
  return std::sqrt(num / den);
}

template <typename T>
void bench_case(const Case& c, int runs, double min_time_s) {
  // Stored shapes: A is (M, K) or (K, M) if ta; B is (K, N) or (N, K) if tb.
  const int64_t lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
  std::vector<T> A(c.M * c.K), B(c.K * c.N), C(c.M * c.N);
  fill(A, 1);
  fill(B, 2);
  if (!run_gemm<T>(c.ta, c.tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, C.data(), c.N)) {
    std::printf("%-24s skipped (backend has no such routine)\n", c.name);
    return;
  }
  const double err = rel_error(c, A, lda, B, ldb, C);
  // Calibrate the number of calls per sample so one sample lasts >= min_time_s.
  int reps = 1;
  for (;;) {
    const double t0 = now_s();
    for (int r = 0; r < reps; ++r)
      run_gemm<T>(c.ta, c.tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, C.data(), c.N);
    if (now_s() - t0 >= min_time_s / 4 || reps >= (1 << 20)) break;
    reps *= 2;
  }
  reps = std::max(1, reps * 4);
  std::vector<double> gflops;
  for (int s = 0; s < runs; ++s) {
    const double t0 = now_s();
    for (int r = 0; r < reps; ++r)
      run_gemm<T>(c.ta, c.tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, C.data(), c.N);
    const double dt = now_s() - t0;
    gflops.push_back(2.0 * c.M * c.N * c.K * reps / dt * 1e-9);
  }
  std::sort(gflops.begin(), gflops.end());
  std::printf(
      "%-24s %s%s M=%-5lld N=%-5lld K=%-5lld  median %7.1f  min %7.1f  max %7.1f GFLOP/s"
      "  relerr %.1e\n",
      c.name, c.ta ? "T" : "N", c.tb ? "T" : "N", (long long)c.M, (long long)c.N, (long long)c.K,
      gflops[gflops.size() / 2], gflops.front(), gflops.back(), err);
}

// A training step alternates GEMMs with ssmtune's own OpenMP loops (norms, activations, scan).
// If the BLAS keeps a second thread pool spinning, the two pools fight over the cores; this
// measures the alternation against the two parts alone.
void bench_mixed(int runs) {
  const int64_t M = 2048, N = 3072, K = 768;
  std::vector<float> X(M * K), W(N * K), Y(M * N), Z(M * N);
  fill(X, 1);
  fill(W, 2);
  auto gemm_part = [&] {
    run_gemm<float>(false, true, M, N, K, X.data(), K, W.data(), K, Y.data(), N);
  };
  auto omp_part = [&] {
  // SiLU over Y, the bandwidth-bound kind of pass that follows in_proj.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * N; ++i) Z[i] = Y[i] / (1.0f + std::exp(-Y[i]));
  };
  auto time_ms = [&](auto&& body, int iters) {
    std::vector<double> ms;
    for (int s = 0; s < runs; ++s) {
      const double t0 = now_s();
      for (int it = 0; it < iters; ++it) body();
      ms.push_back((now_s() - t0) * 1e3 / iters);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  gemm_part();
  omp_part();
  const double g = time_ms(gemm_part, 10), o = time_ms(omp_part, 10);
  const double both = time_ms(
      [&] {
        gemm_part();
        omp_part();
      },
      10);
  std::printf(
      "mixed (in_proj_fwd + OpenMP SiLU, omp threads %d): gemm %.2f ms, omp loop %.2f ms, "
      "alternating %.2f ms/iter (overhead %+.1f%%)\n",
      omp_get_max_threads(), g, o, both, 100.0 * (both - g - o) / (g + o));
}

}  // namespace

int main(int argc, char** argv) {
#if defined(BENCH_SSMTUNE)
  ssmtune::cpu::ensure_fast_blas(argc, argv);
#endif
  int runs = 7;
  double min_time_s = 0.3;
  bool mixed = false;
  const char* only = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--runs") && i + 1 < argc)
      runs = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--min-time") && i + 1 < argc)
      min_time_s = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--mixed"))
      mixed = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc)
      only = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--runs N] [--min-time S] [--mixed] [--only NAME]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("backend: %s\n", backend_description().c_str());
  const auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "-";
  };
  std::printf(
      "env: OMP_NUM_THREADS=%s OPENBLAS_NUM_THREADS=%s BLIS_NUM_THREADS=%s "
      "OPENBLAS_CORETYPE=%s\n",
      env("OMP_NUM_THREADS"), env("OPENBLAS_NUM_THREADS"), env("BLIS_NUM_THREADS"),
      env("OPENBLAS_CORETYPE"));
  for (const Case& c : kCases) {
    if (only && !std::strstr(c.name, only)) continue;
    if (c.is_double)
      bench_case<double>(c, runs, min_time_s);
    else
      bench_case<float>(c, runs, min_time_s);
  }
  if (mixed) bench_mixed(runs);
  return 0;
}
