// ssmtune::cpu::gemm (lib/backend/cpu/gemm_cpu.h) against a double-precision triple loop, for
// every transpose combination and with row strides longer than the rows, as the projections use.
#include "backend/cpu/gemm_cpu.h"

#include <omp.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "backend/cpu/gemm_thin_cpu.h"
#include "core/dtype.h"
#include "core/error.h"

using ssmtune::cpu::gemm;

namespace {

struct Operands {
  std::int64_t M, N, K, lda, ldb, ldc;
  bool ta, tb;
  std::vector<double> A, B, C;  // stored as gemm reads them, padded to the strides
};

// Stored shapes: A (M, K) or (K, M) when ta, B (K, N) or (N, K) when tb; each row padded by 3.
Operands make_operands(bool ta, bool tb, std::int64_t M, std::int64_t N, std::int64_t K,
                       std::uint64_t seed) {
  Operands o{M, N, K, (ta ? M : K) + 3, (tb ? K : N) + 3, N + 3, ta, tb, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  o.A.resize((ta ? K : M) * o.lda);
  o.B.resize((tb ? N : K) * o.ldb);
  o.C.resize(M * o.ldc);
  for (auto* v : {&o.A, &o.B, &o.C}) std::generate(v->begin(), v->end(), [&] { return u(rng); });
  return o;
}

// Returns alpha op(A) op(B) + beta C and, in bound, sum |alpha a b| + |beta c| per element.
std::vector<double> reference(const Operands& o, double alpha, double beta,
                              std::vector<double>& bound) {
  std::vector<double> out(o.M * o.N);
  bound.assign(o.M * o.N, 0.0);
  for (std::int64_t i = 0; i < o.M; ++i)
    for (std::int64_t j = 0; j < o.N; ++j) {
      double s = 0, b = 0;
      for (std::int64_t k = 0; k < o.K; ++k) {
        const double p = (o.ta ? o.A[k * o.lda + i] : o.A[i * o.lda + k]) *
                         (o.tb ? o.B[j * o.ldb + k] : o.B[k * o.ldb + j]);
        s += p;
        b += std::abs(alpha * p);
      }
      out[i * o.N + j] = alpha * s + beta * o.C[i * o.ldc + j];
      bound[i * o.N + j] = b + std::abs(beta * o.C[i * o.ldc + j]);
    }
  return out;
}

// Runs gemm<T> on a T copy of o and returns the largest error relative to the element's bound.
template <class T>
double worst_relative_error(const Operands& o, double alpha, double beta) {
  std::vector<T> A(o.A.begin(), o.A.end()), B(o.B.begin(), o.B.end()), C(o.C.begin(), o.C.end());
  gemm<T>(o.ta, o.tb, o.M, o.N, o.K, T(alpha), A.data(), o.lda, B.data(), o.ldb, T(beta), C.data(),
          o.ldc);
  std::vector<double> bound;
  const std::vector<double> want = reference(o, alpha, beta, bound);
  double worst = 0;
  for (std::int64_t i = 0; i < o.M; ++i)
    for (std::int64_t j = 0; j < o.N; ++j)
      worst = std::max(worst,
                       std::abs(double(C[i * o.ldc + j]) - want[i * o.N + j]) / bound[i * o.N + j]);
  return worst;
}

// v rounded to bf16 (bits) and those widened back to float: a weight held in bf16 and the fp32
// values it stands for.
void round_to_bf16(const std::vector<double>& v, std::vector<std::uint16_t>& bits,
                   std::vector<float>& widened) {
  bits.resize(v.size());
  widened.resize(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    bits[i] = ssmtune::f32_to_bf16(float(v[i]));
    widened[i] = ssmtune::bf16_to_f32(bits[i]);
  }
}

}  // namespace

TEST_CASE("gemm matches a double reference for every transpose combination", "[gemm]") {
  // 67 x 45 x 130 spans several register blocks and an uneven edge in every dimension.
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta, tb);
      const Operands o = make_operands(ta, tb, 67, 45, 130, 7);
      // Error bound of a K-term dot product: ~K * eps * sum |a b|; float: 130 * 6e-8 = 8e-6.
      CHECK(worst_relative_error<float>(o, 0.5, -1.5) < 8e-6);
      CHECK(worst_relative_error<double>(o, 0.5, -1.5) < 130 * 1.2e-16);
    }
}

TEST_CASE("gemm with one row (the matrix-vector path) matches a double reference", "[gemm]") {
  // M = 1 goes to BLAS's gemv (a decoding step's projections): every transpose combination,
  // strides longer than the rows (a column of A with ta), beta 0, 1 and other.
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const double beta : {0.0, 1.0, -1.5}) {
        CAPTURE(ta, tb, beta);
        const Operands o = make_operands(ta, tb, 1, 45, 130, 9);
        CHECK(worst_relative_error<float>(o, 0.5, beta) < 8e-6);
        CHECK(worst_relative_error<double>(o, 0.5, beta) < 130 * 1.2e-16);
      }
  const float A[2] = {1, 2}, B[4] = {3, 4, 5, 6};
  float C[2] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()};
  gemm<float>(false, false, 1, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2);  // beta 0: C is not read
  CHECK(C[0] == 13.0f);
  CHECK(C[1] == 16.0f);
}

TEST_CASE("gemm with few rows or columns (LoRA's factor gradients) matches a double reference",
          "[gemm][gemm-thin]") {
  // Few rows of C with B stored (K, N), few columns with A stored (K, M): gemm_thin's two
  // routes, with A (or B) in either layout, edges that are not whole tiles (64-column strips,
  // 4-row tiles), large enough to run on several threads, beta 0 (C holds NaN), 1 and other,
  // row strides longer than the rows. The same shapes in the other layouts go to BLAS.
  struct Shape {
    std::int64_t M, N, K;
  };
  const Shape shapes[] = {{8, 300, 130}, {5, 67, 1},  {16, 1000, 17}, {300, 8, 130},
                          {67, 3, 301},  {1000, 16, 9}, {7, 5, 40},   {16, 16, 64}};
  for (const Shape& sh : shapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (const double beta : {0.0, 1.0, -1.5}) {
          CAPTURE(sh.M, sh.N, sh.K, ta, tb, beta);
          const Operands o = make_operands(ta, tb, sh.M, sh.N, sh.K, 21);
          // Error bound of a K-term sum in float: ~K * eps * sum |a b|, and two more roundings
          // (the operands' to float, the alpha and beta terms): (301 + 2) * 6e-8 = 1.8e-5.
          CHECK(worst_relative_error<float>(o, 0.5, beta) < double(sh.K + 2) * 6e-8);
          CHECK(worst_relative_error<double>(o, 0.5, beta) < double(sh.K + 2) * 1.2e-16);
          if (beta == 0.0) {  // C is not read: NaNs there are overwritten
            std::vector<float> A(o.A.begin(), o.A.end()), B(o.B.begin(), o.B.end());
            std::vector<float> C(o.C.size(), std::nanf(""));
            gemm<float>(ta, tb, o.M, o.N, o.K, 1.0f, A.data(), o.lda, B.data(), o.ldb, 0.0f,
                        C.data(), o.ldc);
            for (std::int64_t i = 0; i < o.M; ++i)
              for (std::int64_t j = 0; j < o.N; ++j) REQUIRE(std::isfinite(C[i * o.ldc + j]));
          }
        }
  CHECK(ssmtune::cpu::is_thin(true, false, 8, 768));   // dA += dU^T x
  CHECK(ssmtune::cpu::is_thin(true, false, 1536, 8));  // dB += dY^T U
  CHECK_FALSE(ssmtune::cpu::is_thin(false, true, 512, 8));         // U = x A^T: dot products
  CHECK(ssmtune::cpu::is_few_columns(false, true, 512, 8, 1536));   // U = x A^T
  CHECK(ssmtune::cpu::is_few_columns(false, false, 512, 8, 1536));  // dU = dY B
  CHECK_FALSE(ssmtune::cpu::is_few_columns(false, true, 512, 8, 48));  // short K: BLAS
}

TEST_CASE("gemm with few rows or columns gives the same bits on one thread and on several",
          "[gemm][gemm-thin]") {
  // Each element is summed in one order wherever it lies and whichever thread computes it, so a
  // run resumes bit for bit on a machine with another core count.
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& [M, N, K] : {std::tuple{8L, 768L, 512L}, {1536L, 8L, 512L}}) {
        if (!ssmtune::cpu::is_thin(ta, tb, M, N) && !ssmtune::cpu::is_few_columns(ta, tb, M, N, K))
          continue;  // BLAS's own affair
        CAPTURE(ta, tb, M, N, K);
        const Operands o = make_operands(ta, tb, M, N, K, 23);
        const std::vector<float> A(o.A.begin(), o.A.end()), B(o.B.begin(), o.B.end());
        std::vector<float> one(o.C.begin(), o.C.end()), many = one;
        const int threads = omp_get_max_threads();
        omp_set_num_threads(1);
        gemm<float>(ta, tb, M, N, K, 1.0f, A.data(), o.lda, B.data(), o.ldb, 1.0f, one.data(),
                    o.ldc);
        omp_set_num_threads(std::max(threads, 3));
        gemm<float>(ta, tb, M, N, K, 1.0f, A.data(), o.lda, B.data(), o.ldb, 1.0f, many.data(),
                    o.ldc);
        omp_set_num_threads(threads);
        REQUIRE(std::memcmp(one.data(), many.data(), one.size() * 4) == 0);
      }
}

TEST_CASE("gemm on a Mamba-sized projection matches a double reference", "[gemm]") {
  // Large enough for OpenBLAS to split the work over threads and use its packed kernels.
  const Operands o = make_operands(false, true, 256, 384, 192, 11);
  CHECK(worst_relative_error<float>(o, 1.0, 0.0) < 192 * 6e-8);
}

TEST_CASE("gemm with beta = 0 overwrites NaNs in C", "[gemm]") {
  const float A[2] = {1, 2}, B[2] = {3, 4};
  float C[1] = {std::numeric_limits<float>::quiet_NaN()};
  gemm<float>(false, false, 1, 1, 2, 1.0f, A, 2, B, 1, 0.0f, C, 1);
  CHECK(C[0] == 11.0f);
}

TEST_CASE("gemm with K = 0 scales C by beta", "[gemm]") {
  double C[4] = {1, 2, 3, 4};
  gemm<double>(false, false, 2, 2, 0, 1.0, nullptr, 0, nullptr, 2, 2.0, C, 2);
  CHECK(C[3] == 8.0);
  gemm<double>(false, false, 2, 2, 0, 1.0, nullptr, 0, nullptr, 2, 0.0, C, 2);
  CHECK(C[0] == 0.0);
}

TEST_CASE("gemm rejects a row stride shorter than the row", "[gemm]") {
  std::vector<float> A(6), B(6), C(4);
  // A is stored (2, 3) so lda must be >= 3.
  CHECK_THROWS_AS(
      gemm<float>(false, false, 2, 2, 3, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2),
      ssmtune::Error);
  CHECK_NOTHROW(
      gemm<float>(false, false, 2, 2, 3, 1.0f, A.data(), 3, B.data(), 2, 0.0f, C.data(), 2));
}

TEST_CASE("gemm with B held in bf16 gives the bits of gemm<float> on B widened",
          "[gemm][bf16-frozen]") {
  // gemm_bf16_b multiplies a bf16 weight as its exact fp32 widening: one row of A against B
  // stored (N, K) (a decoding step) reads the bf16 in dot_rows's own order, every other shape
  // widens B and calls gemm<float>. Either way the result is gemm<float>'s on the widened B,
  // bit for bit: every transpose, one row and many, beta 0 (C holds NaN), 1 and other,
  // strides longer than the rows, K not a multiple of the 16 lanes, and N = 8 (few columns:
  // dot products, is_few_columns, when A is stored (M, K)).
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& [M, N] : {std::pair{1L, 45L}, {37L, 45L}, {1L, 8L}, {37L, 8L}})
        for (const double beta : {0.0, 1.0, -1.5}) {
          CAPTURE(ta, tb, M, N, beta);
          const Operands o = make_operands(ta, tb, M, N, 130, 13);
          const std::vector<float> A(o.A.begin(), o.A.end());
          std::vector<std::uint16_t> B16;
          std::vector<float> B32;
          round_to_bf16(o.B, B16, B32);
          std::vector<float> want(o.C.begin(), o.C.end()), got = want;
          if (beta == 0.0) std::fill(got.begin(), got.end(), std::nanf(""));
          gemm<float>(ta, tb, M, o.N, o.K, 0.5f, A.data(), o.lda, B32.data(), o.ldb, float(beta),
                      want.data(), o.ldc);
          ssmtune::cpu::gemm_bf16_b(ta, tb, M, o.N, o.K, 0.5f, A.data(), o.lda, B16.data(),
                                    o.ldb, float(beta), got.data(), o.ldc);
          for (std::int64_t i = 0; i < M; ++i)
            for (std::int64_t j = 0; j < o.N; ++j) {
              CAPTURE(i, j);
              REQUIRE(std::memcmp(&got[i * o.ldc + j], &want[i * o.ldc + j], 4) == 0);
            }
        }
}

TEST_CASE("gemm with a bf16 B wider than its scratch works a block of columns at a time",
          "[gemm][bf16-frozen]") {
  // K = 1000: the 8M-float scratch holds 8388 of B's N = 20000 rows (or columns), so C comes
  // in three blocks of about even width. Each block of C is still the whole K-long sum: the
  // bits of gemm<float> on the widened B, for B stored (N, K) (forward's y = x W^T) and (K, N)
  // (backward's dx = dy W).
  // M = 3 with B stored (K, N) makes the whole product thin (gemm_thin, every block too); with
  // M = 37 BLAS runs each block.
  for (const auto& [M, N] : {std::pair{3L, 20000L}, {37L, 20000L}, {37L, 16786L}})
    for (const bool tb : {true, false}) {
      CAPTURE(M, N, tb);
      const Operands o = make_operands(false, tb, M, N, 1000, 17);
      const std::vector<float> A(o.A.begin(), o.A.end());
      std::vector<std::uint16_t> B16;
      std::vector<float> B32;
      round_to_bf16(o.B, B16, B32);
      std::vector<float> want(o.C.begin(), o.C.end()), got = want;
      gemm<float>(false, tb, o.M, o.N, o.K, 1.0f, A.data(), o.lda, B32.data(), o.ldb, 0.5f,
                  want.data(), o.ldc);
      ssmtune::cpu::gemm_bf16_b(false, tb, o.M, o.N, o.K, 1.0f, A.data(), o.lda, B16.data(), o.ldb,
                                0.5f, got.data(), o.ldc);
      REQUIRE(std::memcmp(got.data(), want.data(), got.size() * 4) == 0);
    }
}
