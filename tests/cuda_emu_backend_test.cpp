// The CUDA backend (lib/backend/cuda) compiled against the CUDA-on-CPU emulator: every op of
// the backend interface against the CPU backend on the same random inputs (as ggml tests each
// backend op against its CPU one), the cuBLAS shim's column-major semantics, and tensor
// residency (core/tensor.h): what moves to the GPU, what comes back, and when.
#include <catch2/catch.hpp>
#include <random>
#if defined(SSMTUNE_CUDA_EMU)
#include <cublas_emu.h>
#endif

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_memory.h"
#include "cuda_emu_test_util.h"
#include "test_compare.h"

namespace {

using ssmtune::Backend;
using ssmtune::Device;
using ssmtune::DType;
using ssmtune::Shape;
using ssmtune::Tensor;
using ssmtune::testing::random_f32;
using ssmtune::testing::require_close;

struct Backends {
  std::unique_ptr<Backend> cpu = ssmtune::make_cpu_backend();
  std::unique_ptr<Backend> gpu = ssmtune::make_cuda_backend();
  std::mt19937_64 rng{7};

  // The same random values on each backend.
  struct Pair {
    Tensor cpu, gpu;
  };
  Pair random(const Shape& shape, double lo = -1, double hi = 1) {
    const Tensor host = random_f32(shape, rng, lo, hi);
    return put(host);
  }
  Pair put(const Tensor& host) {
    Pair p{cpu->empty(host.shape(), host.dtype()), gpu->empty(host.shape(), host.dtype())};
    cpu->copy(host, p.cpu);
    gpu->copy(host, p.gpu);
    return p;
  }
  Pair empty(const Shape& shape) {
    return {cpu->empty(shape, DType::F32), gpu->empty(shape, DType::F32)};
  }
};

// Float ops whose GPU twin sums in another order (cuBLAS, block reductions) agree to a few
// float ulps of the largest element times the length of the sums here (<= 64 terms):
// 64 * 6e-8 ~ 4e-6; 1e-5 leaves room. Elementwise ops run the same float expressions: 1e-6.
constexpr double kSumTol = 1e-5, kElemTol = 1e-6;

void same(const char* what, const Backends::Pair& p, double tol) {
  REQUIRE(p.gpu.device() == Device::CUDA);  // results stay on the GPU until read
  require_close(what, p.gpu.clone(), p.cpu, tol, 0);
}

Tensor ints(const std::vector<std::int64_t>& v) {
  Tensor t = Tensor::empty({std::int64_t(v.size())}, DType::I64);
  std::copy(v.begin(), v.end(), t.data<std::int64_t>());
  return t;
}

}  // namespace

#if defined(SSMTUNE_CUDA_EMU)  // the shim's own test; a GPU build has the real cuBLAS
TEST_CASE("cuBLAS shim: column-major products with transposes, leading dims and pointer modes",
          "[cuda-emu][cublas]") {
  // A: 2x3 column-major with lda 4 (rows 2..3 of each column are padding, left NaN).
  float *A, *B, *C;
  REQUIRE(cudaMalloc(&A, 12 * 4) == cudaSuccess);
  REQUIRE(cudaMalloc(&B, 6 * 4) == cudaSuccess);
  REQUIRE(cudaMalloc(&C, 4 * 4) == cudaSuccess);
  const float a[12] = {1, 4, NAN, NAN, 2, 5, NAN, NAN, 3, 6, NAN, NAN};  // [[1 2 3] [4 5 6]]
  const float b[6] = {1, 0, -1, 2, 1, 0};  // 3x2 column-major: [[1 2] [0 1] [-1 0]]
  cudaMemcpy(A, a, sizeof a, cudaMemcpyHostToDevice);
  cudaMemcpy(B, b, sizeof b, cudaMemcpyHostToDevice);
  cudaMemset(C, 0xFF, 16);  // NaN: beta = 0 must not read C
  cublasHandle_t h;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  const float one = 1, zero = 0, two = 2;
  REQUIRE(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 4, B, 3, &zero, C, 2) ==
          CUBLAS_STATUS_SUCCESS);
  float c[4];
  cudaMemcpy(c, C, sizeof c, cudaMemcpyDeviceToHost);
  // [[1 2 3] [4 5 6]] [[1 2] [0 1] [-1 0]] = [[-2 4] [-2 13]], column-major.
  CHECK(c[0] == -2);
  CHECK(c[1] == -2);
  CHECK(c[2] == 4);
  CHECK(c[3] == 13);
  // C = 2 B^T A^T + C = 2 (AB)^T + C = 2 [[-2 -2] [4 13]] + [[-2 4] [-2 13]]: transposes read
  // the same arrays the other way.
  REQUIRE(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_T, 2, 2, 3, &two, B, 3, A, 4, &one, C, 2) ==
          CUBLAS_STATUS_SUCCESS);
  cudaMemcpy(c, C, sizeof c, cudaMemcpyDeviceToHost);
  CHECK(c[0] == -6);
  CHECK(c[1] == 6);
  CHECK(c[2] == 0);
  CHECK(c[3] == 39);
  // cuBLAS's argument errors: lda below the stored rows, host operands, device alpha in host
  // pointer mode.
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 1, B, 3, &zero, C, 2) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, a, 4, B, 3, &zero, C, 2) ==
        CUBLAS_STATUS_EXECUTION_FAILED);
  cudaGetLastError();
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, A, A, 4, B, 3, &zero, C, 2) ==
        CUBLAS_STATUS_INVALID_VALUE);
  // Strided-batched: two 1x1x1 products in one call.
  REQUIRE(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, A, 1, 1, B, 1, 1,
                                    &zero, C, 1, 1, 2) == CUBLAS_STATUS_SUCCESS);
  cudaMemcpy(c, C, 8, cudaMemcpyDeviceToHost);
  CHECK(c[0] == 1 * 1);
  CHECK(c[1] == 4 * 0);
  // GemmEx with bf16 inputs, fp32 output: 1.5 * 2.0 (both exact in bf16).
  std::uint16_t* H;
  REQUIRE(cudaMalloc(&H, 4) == cudaSuccess);
  const std::uint16_t hb[2] = {0x3FC0, 0x4000};
  cudaMemcpy(H, hb, 4, cudaMemcpyHostToDevice);
  REQUIRE(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, H, CUDA_R_16BF, 1, H + 1,
                       CUDA_R_16BF, 1, &zero, C, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  cudaMemcpy(c, C, 4, cudaMemcpyDeviceToHost);
  CHECK(c[0] == 3.0f);
  cublasDestroy(h);
  for (void* p :
       {static_cast<void*>(A), static_cast<void*>(B), static_cast<void*>(C), static_cast<void*>(H)})
    cudaFree(p);
}
#endif

TEST_CASE("every op of the emulated CUDA backend matches the CPU backend", "[cuda-emu][backend]") {
  Backends b;
  const std::int64_t B = 2, L = 37, E = 40, N = 8, D = 24, V = 50, rows = B * L;

  SECTION("gemm in all four transpose combinations, alpha and beta") {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const std::int64_t M = 7, K = 33, Nc = 19;
      auto A = b.random(ta ? Shape{K, M} : Shape{M, K});
      auto Bm = b.random(tb ? Shape{Nc, K} : Shape{K, Nc});
      auto C = b.random({M, Nc});
      b.cpu->gemm(ta, tb, 0.5, A.cpu, Bm.cpu, 2.0, C.cpu);
      b.gpu->gemm(ta, tb, 0.5, A.gpu, Bm.gpu, 2.0, C.gpu);
      INFO("trans_a " << ta << ", trans_b " << tb);
      same("C", C, kSumTol);
    }
  }
  SECTION("bias, residual add, scale, mul, column splits") {
    auto y = b.random({rows, D}), bias = b.random({D}), x = b.random({rows, D});
    b.cpu->add_bias(y.cpu, bias.cpu);
    b.gpu->add_bias(y.gpu, bias.gpu);
    same("add_bias", y, kElemTol);
    auto db = b.random({D});              // accumulated into
    b.cpu->bias_backward(x.cpu, db.cpu);  // 74 rows: two chunks of the two-pass sum
    b.gpu->bias_backward(x.gpu, db.gpu);
    same("bias_backward", db, kSumTol);
    b.cpu->add(x.cpu, y.cpu);
    b.gpu->add(x.gpu, y.gpu);
    same("add", y, kElemTol);
    b.cpu->scale(y.cpu, -0.25);
    b.gpu->scale(y.gpu, -0.25);
    same("scale", y, kElemTol);
    auto prod = b.empty({rows, D});
    b.cpu->mul(x.cpu, y.cpu, prod.cpu);
    b.gpu->mul(x.gpu, y.gpu, prod.gpu);
    same("mul", prod, kElemTol);
    auto part = b.empty({rows, 5});
    b.cpu->split_columns(y.cpu, 3, part.cpu);
    b.gpu->split_columns(y.gpu, 3, part.gpu);
    same("split_columns", part, 0);
    b.cpu->merge_columns(part.cpu, 11, x.cpu);
    b.gpu->merge_columns(part.gpu, 11, x.gpu);
    same("merge_columns", x, 0);
  }
  SECTION("rmsnorm, conv1d and the activations, forward and backward") {
    auto x = b.random({rows, D}), w = b.random({D}), y = b.empty({rows, D}), rstd = b.empty({rows});
    b.cpu->rmsnorm_forward(x.cpu, w.cpu, 1e-5, y.cpu, rstd.cpu);
    b.gpu->rmsnorm_forward(x.gpu, w.gpu, 1e-5, y.gpu, rstd.gpu);
    same("rmsnorm y", y, kSumTol);
    auto dy = b.random({rows, D}), dx = b.empty({rows, D}), dw = b.random({D});
    b.cpu->rmsnorm_backward(dy.cpu, x.cpu, w.cpu, rstd.cpu, dx.cpu, dw.cpu);
    b.gpu->rmsnorm_backward(dy.gpu, x.gpu, w.gpu, rstd.gpu, dx.gpu, dw.gpu);
    same("rmsnorm dx", dx, kSumTol);
    same("rmsnorm dw", dw, kSumTol);

    // The fusions: the CUDA backend's one-pass kernels against the CPU backend's two ops.
    auto sum = b.random({rows, D}), y2 = b.empty({rows, D}), rstd2 = b.empty({rows});
    b.cpu->add_rmsnorm_forward(x.cpu, sum.cpu, w.cpu, 1e-5, y2.cpu, rstd2.cpu);
    b.gpu->add_rmsnorm_forward(x.gpu, sum.gpu, w.gpu, 1e-5, y2.gpu, rstd2.gpu);
    same("add_rmsnorm sum", sum, 0);  // one float add each
    same("add_rmsnorm y", y2, kSumTol);
    same("add_rmsnorm rstd", rstd2, kSumTol);
    auto dx_acc = b.random({rows, D}), dw2 = b.random({D});
    b.cpu->rmsnorm_backward_add(dy.cpu, x.cpu, w.cpu, rstd.cpu, dx_acc.cpu, dw2.cpu);
    b.gpu->rmsnorm_backward_add(dy.gpu, x.gpu, w.gpu, rstd.gpu, dx_acc.gpu, dw2.gpu);
    same("rmsnorm_backward_add dx", dx_acc, kSumTol);
    same("rmsnorm_backward_add dw", dw2, kSumTol);

    auto u = b.random({B, L, E}), cw = b.random({E, 4}), cb = b.random({E}), c = b.empty({B, L, E});
    b.cpu->conv1d_forward(u.cpu, cw.cpu, cb.cpu, c.cpu);
    b.gpu->conv1d_forward(u.gpu, cw.gpu, cb.gpu, c.gpu);
    same("conv1d c", c, kElemTol);
    auto c2 = b.empty({B, L, E}), su = b.empty({B, L, E});
    b.cpu->conv1d_silu_forward(u.cpu, cw.cpu, cb.cpu, c2.cpu, su.cpu);
    b.gpu->conv1d_silu_forward(u.gpu, cw.gpu, cb.gpu, c2.gpu, su.gpu);
    same("conv1d_silu c", c2, kElemTol);
    same("conv1d_silu u", su, kElemTol);
    auto dc = b.random({B, L, E}), du = b.empty({B, L, E}), dcw = b.random({E, 4}),
         dcb = b.random({E});
    b.cpu->conv1d_backward(dc.cpu, u.cpu, cw.cpu, du.cpu, dcw.cpu, dcb.cpu);
    b.gpu->conv1d_backward(dc.gpu, u.gpu, cw.gpu, du.gpu, dcw.gpu, dcb.gpu);
    same("conv1d dx", du, kElemTol);
    same("conv1d dw", dcw, kSumTol);
    same("conv1d dbias", dcb, kSumTol);

    using Fwd = void (Backend::*)(const Tensor&, Tensor&);
    using Bwd = void (Backend::*)(const Tensor&, const Tensor&, Tensor&);
    const struct {
      const char* name;
      Fwd fwd;
      Bwd bwd;
    } acts[] = {{"silu", &Backend::silu_forward, &Backend::silu_backward},
                {"softplus", &Backend::softplus_forward, &Backend::softplus_backward},
                {"relu", &Backend::relu_forward, &Backend::relu_backward}};
    for (const auto& a : acts) {
      INFO(a.name);
      auto in = b.random({rows, D}, -25, 25), out = b.empty({rows, D}), g = b.random({rows, D}),
           din = b.empty({rows, D});
      ((*b.cpu).*a.fwd)(in.cpu, out.cpu);
      ((*b.gpu).*a.fwd)(in.gpu, out.gpu);
      same("forward", out, kElemTol);
      ((*b.cpu).*a.bwd)(g.cpu, in.cpu, din.cpu);
      ((*b.gpu).*a.bwd)(g.gpu, in.gpu, din.gpu);
      same("backward", din, kElemTol);
    }
    auto z = b.random({rows, D}, -4, 4), out = b.empty({rows, D}), dyy = b.empty({rows, D}),
         dz = b.empty({rows, D});
    b.cpu->gate_forward(x.cpu, z.cpu, out.cpu);
    b.gpu->gate_forward(x.gpu, z.gpu, out.gpu);
    same("gate", out, kElemTol);
    b.cpu->gate_backward(dy.cpu, x.cpu, z.cpu, dyy.cpu, dz.cpu);
    b.gpu->gate_backward(dy.gpu, x.gpu, z.gpu, dyy.gpu, dz.gpu);
    same("gate dy", dyy, kElemTol);
    same("gate dz", dz, kElemTol);
    // Mamba-2's dt clamp, with an infinite upper bound as Mamba-2 configs have
    for (const double hi : {0.5, double(INFINITY)}) {
      auto cin = b.random({rows, D}, -1, 1), cout = b.empty({rows, D}), dc = b.empty({rows, D});
      b.cpu->clamp_forward(cin.cpu, -0.25, hi, cout.cpu);
      b.gpu->clamp_forward(cin.gpu, -0.25, hi, cout.gpu);
      same("clamp", cout, 0.0);
      b.cpu->clamp_backward(dy.cpu, cin.cpu, -0.25, hi, dc.cpu);
      b.gpu->clamp_backward(dy.gpu, cin.gpu, -0.25, hi, dc.gpu);
      same("clamp dx", dc, 0.0);
    }
    auto A_log = b.random({E, N}, 0, 2.7), A = b.empty({E, N}), dA = b.random({E, N}),
         dA_log = b.random({E, N});
    b.cpu->ssm_A_forward(A_log.cpu, A.cpu);
    b.gpu->ssm_A_forward(A_log.gpu, A.gpu);
    same("A", A, kElemTol);
    b.cpu->ssm_A_backward(dA.cpu, A.cpu, dA_log.cpu);
    b.gpu->ssm_A_backward(dA.gpu, A.gpu, dA_log.gpu);
    same("dA_log", dA_log, kElemTol);
  }
  SECTION("selective scan forward and backward with h0 and D, three chunks") {
    // delta_softplus: delta before softplus, in [-7, -2.3] so that softplus(delta) is in
    // [0.001, 0.1] as the plain scan's delta (the CUDA backend runs the softplus ops around its
    // kernel, the CPU scan its own softplus)
    for (const bool softplus : {false, true}) {
      INFO("delta_softplus " << softplus);
      auto u = b.random({B, L, E}),
           delta = softplus ? b.random({B, L, E}, -7, -2.3) : b.random({B, L, E}, 0.001, 0.1),
           A = b.random({E, N}, -8, -1), Bm = b.random({B, L, N}), Cm = b.random({B, L, N}),
           Dv = b.random({E}), h0 = b.random({B, E, N});
      Backend::ScanInputs ci{u.cpu, delta.cpu, A.cpu, Bm.cpu, Cm.cpu, Dv.cpu, h0.cpu, 16, softplus};
      Backend::ScanInputs gi{u.gpu, delta.gpu, A.gpu, Bm.gpu, Cm.gpu, Dv.gpu, h0.gpu, 16, softplus};
      auto y = b.empty({B, L, E}), hs = b.empty({B, 3, E, N}), hl = b.empty({B, E, N});
      b.cpu->selective_scan_forward(ci, y.cpu, hs.cpu, hl.cpu);
      b.gpu->selective_scan_forward(gi, y.gpu, hs.gpu, hl.gpu);
      // The scan reassociates the 37-step recurrence (cuda_emu_selective_scan_test.cpp): 2e-5.
      same("y", y, 2e-5);
      same("h_saved", hs, 2e-5);
      same("h_last", hl, 2e-5);
      auto dy = b.random({B, L, E});
      auto du = b.empty({B, L, E}), dd = b.empty({B, L, E}), dA = b.random({E, N}),
           dB = b.empty({B, L, N}), dC = b.empty({B, L, N}), dD = b.random({E}),
           dh0 = b.empty({B, E, N});
      Backend::ScanGrads cg{du.cpu, dd.cpu, dA.cpu, dB.cpu, dC.cpu, dD.cpu, dh0.cpu};
      Backend::ScanGrads gg{du.gpu, dd.gpu, dA.gpu, dB.gpu, dC.gpu, dD.gpu, dh0.gpu};
      b.cpu->selective_scan_backward(ci, hs.cpu, dy.cpu, cg);
      b.gpu->selective_scan_backward(gi, hs.gpu, dy.gpu, gg);
      for (auto [name, p] : {std::pair{"du", &du},
                             {"ddelta", &dd},
                             {"dA", &dA},
                             {"dBm", &dB},
                             {"dCm", &dC},
                             {"dD", &dD},
                             {"dh0", &dh0}})
        same(name, *p, 5e-5);
    }
  }
  SECTION("embedding, cross-entropy, sum of squares, masked entries, AdamW") {
    const Tensor ids = ints({3, 0, 49, 3, 3, 17});
    auto table = b.random({V, D}), out = b.empty({6, D});
    b.cpu->embedding_forward(ids, table.cpu, out.cpu);
    b.gpu->embedding_forward(ids, table.gpu, out.gpu);
    same("embedding", out, 0);
    auto dout = b.random({6, D}), dtable = b.random({V, D});
    b.cpu->embedding_backward(ids, dout.cpu, dtable.cpu);
    b.gpu->embedding_backward(ids, dout.gpu, dtable.gpu);
    same("dtable", dtable, kElemTol);
    const Tensor targets = ints({1, -100, 49, 0, 7, -100});
    auto logits = b.random({6, V}, -8, 8);
    std::int64_t n_cpu = 0, n_gpu = 0;
    const double l_cpu = b.cpu->cross_entropy_forward(logits.cpu, targets, &n_cpu);
    const double l_gpu = b.gpu->cross_entropy_forward(logits.gpu, targets, &n_gpu);
    CHECK(n_gpu == n_cpu);
    CHECK(n_gpu == 4);
    CHECK(l_gpu == Approx(l_cpu).epsilon(1e-6));
    b.cpu->cross_entropy_backward(logits.cpu, targets, 0.25, logits.cpu);  // in place
    b.gpu->cross_entropy_backward(logits.gpu, targets, 0.25, logits.gpu);
    same("dlogits", logits, kElemTol);
    CHECK(b.gpu->sum_squares(table.gpu) == Approx(b.cpu->sum_squares(table.cpu)).epsilon(1e-12));
    const Tensor index = ints({5, 0, 31, 1199});
    auto vals = b.random({4}), picked = b.empty({4});
    Tensor flat_cpu = table.cpu.reshape({V * D}), flat_gpu = table.gpu.reshape({V * D});
    b.cpu->index_add(vals.cpu, index, flat_cpu);
    b.gpu->index_add(vals.gpu, index, flat_gpu);
    same("index_add", table, kElemTol);
    b.cpu->index_gather(table.cpu.reshape({V * D}), index, picked.cpu);
    b.gpu->index_gather(table.gpu.reshape({V * D}), index, picked.gpu);
    same("index_gather", picked, 0);
    auto p = b.random({V, D}), g = b.random({V, D}), m = b.put(Tensor::zeros({V, D}, DType::F32)),
         v = b.put(Tensor::zeros({V, D}, DType::F32));
    for (std::int64_t step = 1; step <= 3; ++step) {
      const Backend::AdamWStep s{1e-2, 0.9, 0.999, 1e-8, 0.1, step};
      b.cpu->adamw_update(p.cpu, g.cpu, m.cpu, v.cpu, s);
      b.gpu->adamw_update(p.gpu, g.gpu, m.gpu, v.gpu, s);
    }
    same("adamw param", p, kElemTol);
    same("adamw m", m, kElemTol);
    same("adamw v", v, kElemTol);
  }
  SECTION("DoRA's row operations") {
    auto a = b.random({9, 70}), a2 = b.random({9, 70}), sub = b.random({9, 70}),
         f = b.random({9}, 0.5, 2), d = b.random({9}, 0.5, 2), norm = b.empty({9}),
         out = b.empty({9, 70}), acc = b.random({9}), q = b.empty({9});
    b.cpu->row_norms(a.cpu, norm.cpu);
    b.gpu->row_norms(a.gpu, norm.gpu);
    same("row_norms", norm, kElemTol);  // double sums: only the float rounding of the result
    b.cpu->scale_rows(f.cpu, a.cpu, sub.cpu, out.cpu);
    b.gpu->scale_rows(f.gpu, a.gpu, sub.gpu, out.gpu);
    same("scale_rows", out, kElemTol);
    b.cpu->scale_rows(f.cpu, a.cpu, Tensor(), out.cpu);
    b.gpu->scale_rows(f.gpu, a.gpu, Tensor(), out.gpu);
    same("scale_rows without sub", out, kElemTol);
    b.cpu->row_dots_div_add(a.cpu, a2.cpu, d.cpu, acc.cpu);
    b.gpu->row_dots_div_add(a.gpu, a2.gpu, d.gpu, acc.gpu);
    same("row_dots_div_add", acc, kElemTol);
    b.cpu->div(f.cpu, d.cpu, q.cpu);
    b.gpu->div(f.gpu, d.gpu, q.gpu);
    same("div", q, kElemTol);
  }
  SECTION("bad arguments get the CPU backend's errors, named for the CUDA backend") {
    auto a = b.random({3, 4}), c = b.empty({3, 3});
    CHECK_THROWS_WITH(b.gpu->gemm(false, false, 1, a.gpu, a.gpu, 0, c.gpu),
                      Catch::Contains("cuda backend: gemm: shapes (3, 4) x (3, 4) -> (3, 3)"));
    Tensor f64 = b.gpu->empty({3}, DType::F64), y = b.gpu->empty({3}, DType::F64);
    CHECK_THROWS_WITH(b.gpu->silu_forward(f64, y), Catch::Contains("computes in F32"));
    auto logits = b.random({2, V});
    std::int64_t n = 0;
    CHECK_THROWS_WITH(b.gpu->cross_entropy_forward(logits.gpu, ints({1, V}), &n),
                      Catch::Contains("label 50 at position 1 is outside the vocabulary"));
  }
}

TEST_CASE("dropout masks are the same bits on both backends for the same key",
          "[cuda-emu][backend][dropout]") {
  Backends b;
  for (const double p : {0.0, 0.1, 0.5, 0.9}) {
    for (const std::uint64_t key : {std::uint64_t(1), std::uint64_t(0xDEADBEEFCAFEF00Dull)}) {
      INFO("p " << p << " key " << key);
      auto mask = b.empty({37, 129});  // not a multiple of any block size
      b.cpu->dropout_mask(key, p, mask.cpu);
      b.gpu->dropout_mask(key, p, mask.gpu);
      REQUIRE(mask.gpu.device() == Device::CUDA);  // made on the GPU, nothing uploaded
      CHECK(ssmtune::testing::same_bits(mask.gpu.clone(), mask.cpu));
    }
  }
}

TEST_CASE("sum_squares_of reads back once and equals the loop of sum_squares, bit for bit",
          "[cuda-emu][backend]") {
  Backends b;
  std::vector<Tensor> on_cpu, on_gpu;
  for (const std::int64_t n : {1, 100, 8192, 8193, 30000}) {  // one block, several, a tail
    auto x = b.random({n});
    on_cpu.push_back(x.cpu);
    on_gpu.push_back(x.gpu);
  }
  double loop = 0;
  for (const Tensor& x : on_gpu) loop += b.gpu->sum_squares(x);
  const double batched = b.gpu->sum_squares_of(on_gpu);
  CHECK(batched == loop);
  // The CPU twin adds each block sequentially, the kernel as a tree (cuda_emu_optim_test.cpp):
  // within 1e-12 relative.
  CHECK(batched == Approx(b.cpu->sum_squares_of(on_cpu)).epsilon(1e-12));
  CHECK(b.gpu->sum_squares_of({}) == 0.0);
}

TEST_CASE("uploads through the pinned staging slots arrive intact, the source reusable at once",
          "[cuda-emu][backend]") {
  ssmtune::CudaMemory memory;
  constexpr std::size_t kSlots = ssmtune::CudaMemory::kStagingSlots;
  // Three rounds of the slots, sizes up to a whole slot, then one past it (the synchronous path).
  std::vector<std::size_t> sizes;
  for (std::size_t i = 0; i < 3 * kSlots; ++i) sizes.push_back(8 + 4096 * i);
  sizes.back() = ssmtune::CudaMemory::kStagingBytes;
  sizes.push_back(ssmtune::CudaMemory::kStagingBytes + 8);
  std::vector<void*> dst;
  std::vector<std::int64_t> host;
  for (std::size_t u = 0; u < sizes.size(); ++u) {
    dst.push_back(memory.allocate(sizes[u]));
    host.assign(sizes[u] / 8, std::int64_t(u) * 1000003);
    for (std::size_t i = 0; i < host.size(); ++i) host[i] += std::int64_t(i);
    memory.upload(dst[u], host.data(), sizes[u]);
    std::fill(host.begin(), host.end(), -1);  // the upload copied it already
  }
  for (std::size_t u = 0; u < sizes.size(); ++u) {
    INFO("upload " << u << " of " << sizes[u] << " bytes");
    std::vector<std::int64_t> back(sizes[u] / 8);
    memory.copy_to_host(back.data(), dst[u], sizes[u]);
    bool intact = true;
    for (std::size_t i = 0; i < back.size(); ++i)
      intact = intact && back[i] == std::int64_t(u) * 1000003 + std::int64_t(i);
    CHECK(intact);
    memory.release(dst[u], sizes[u]);
  }
}

TEST_CASE("bf16 matmuls round both inputs to bf16 and accumulate in fp32",
          "[cuda-emu][backend][bf16]") {
  auto cpu = ssmtune::make_cpu_backend();
  auto gpu = ssmtune::make_cuda_backend(0, ssmtune::CudaOptions{true});
  std::mt19937_64 rng(11);
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    const std::int64_t M = 9, K = 70, N = 13;
    const Tensor A = random_f32(ta ? Shape{K, M} : Shape{M, K}, rng, -1, 1);
    const Tensor B = random_f32(tb ? Shape{N, K} : Shape{K, N}, rng, -1, 1);
    const Tensor C0 = random_f32({M, N}, rng, -1, 1);
    // The reference: the CPU's fp32 product of the bf16-rounded inputs.
    Tensor ref = C0.clone(), exact = C0.clone(), got = C0.clone();
    cpu->gemm(ta, tb, 0.5, A.to(DType::BF16).to(DType::F32), B.to(DType::BF16).to(DType::F32), 1.0,
              ref);
    cpu->gemm(ta, tb, 0.5, A, B, 1.0, exact);
    gpu->gemm(ta, tb, 0.5, A.clone(), B.clone(), 1.0, got);
    INFO("trans_a " << ta << ", trans_b " << tb);
    // Same rounded inputs, fp32 sums of 70 products in another order: float rounding only.
    require_close("against rounded inputs", got.clone(), ref, 1e-5, 0);
    // Against the fp32 product: each input moves by up to 2^-9 relative (bf16's 8-bit
    // significand): about 2 * 2^-9 = 4e-3 of the largest entry, 1e-2 with room.
    require_close("against fp32", got.clone(), exact, 1e-2, 0);
  }
}

TEST_CASE("the selective scan takes bf16 inputs and computes as on their float values",
          "[cuda-emu][backend][bf16][scan]") {
  auto cpu = ssmtune::make_cpu_backend();
  auto gpu = ssmtune::make_cuda_backend();
  std::mt19937_64 rng(13);
  const std::int64_t B = 2, L = 37, E = 40, N = 8;
  // bf16 inputs and the float tensors holding exactly their values.
  const auto bf16_pair = [&](const Shape& shape, double lo, double hi) {
    const Tensor b16 = random_f32(shape, rng, lo, hi).to(DType::BF16);
    return std::pair{b16, b16.to(DType::F32)};
  };
  const auto [u16, u] = bf16_pair({B, L, E}, -1, 1);
  const auto [dt16, dt] = bf16_pair({B, L, E}, 0.001, 0.1);
  const auto [B16, Bm] = bf16_pair({B, L, N}, -1, 1);
  const auto [C16, Cm] = bf16_pair({B, L, N}, -1, 1);
  const Tensor A = random_f32({E, N}, rng, -8, -1), Dv = random_f32({E}, rng, -1, 1);
  const Tensor dy = random_f32({B, L, E}, rng, -1, 1);
  struct Out {
    Tensor y, hs, du, dd, dA, dB, dC, dD;
  };
  const auto run = [&](Backend& be, const Tensor& uu, const Tensor& dd, const Tensor& bb,
                       const Tensor& cc) {
    Out o{be.empty({B, L, E}, DType::F32), be.empty({B, 3, E, N}, DType::F32),
          be.empty({B, L, E}, DType::F32), be.empty({B, L, E}, DType::F32),
          be.zeros({E, N}, DType::F32),    be.empty({B, L, N}, DType::F32),
          be.empty({B, L, N}, DType::F32), be.zeros({E}, DType::F32)};
    const Backend::ScanInputs in{uu.clone(), dd.clone(), A.clone(), bb.clone(),
                                 cc.clone(), Dv.clone(), Tensor(),  16};
    Tensor h_last;
    be.selective_scan_forward(in, o.y, o.hs, h_last);
    Backend::ScanGrads g{o.du, o.dd, o.dA, o.dB, o.dC, o.dD, Tensor()};
    be.selective_scan_backward(in, o.hs, dy.clone(), g);
    return o;
  };
  const Out ref = run(*cpu, u, dt, Bm, Cm), f32 = run(*gpu, u, dt, Bm, Cm),
            b16 = run(*gpu, u16, dt16, B16, C16);
  const auto both = [&](const char* name, const Tensor& got, const Tensor& f, const Tensor& r) {
    INFO(name);
    require_close("bf16 inputs against float inputs of the same values", got.clone(), f.clone(),
                  0, 0);  // the kernels widen bf16 as they stage it: the same floats, the same bits
    require_close("against the CPU backend", got.clone(), r, 5e-5, 0);  // as the float scan
  };
  both("y", b16.y, f32.y, ref.y);
  both("h_saved", b16.hs, f32.hs, ref.hs);
  both("du", b16.du, f32.du, ref.du);
  both("ddelta", b16.dd, f32.dd, ref.dd);
  both("dA", b16.dA, f32.dA, ref.dA);
  both("dBm", b16.dB, f32.dB, ref.dB);
  both("dCm", b16.dC, f32.dC, ref.dC);
  both("dD", b16.dD, f32.dD, ref.dD);
  // Mixed input types are refused, naming the odd one out.
  const Backend::ScanInputs mixed{u16, dt, A.clone(), B16, C16, Dv.clone(), Tensor(), 16};
  Tensor y = gpu->empty({B, L, E}, DType::F32), hs = gpu->empty({B, 3, E, N}, DType::F32), hl;
  CHECK_THROWS_WITH(gpu->selective_scan_forward(mixed, y, hs, hl),
                    Catch::Contains("delta must be BF16 like u"));
}

TEST_CASE("tensors move to the GPU when an op uses them and back when host code reads them",
          "[cuda-emu][backend]") {
  auto gpu = ssmtune::make_cuda_backend();
  std::mt19937_64 rng(3);
  Tensor host = random_f32({4, 8}, rng, -1, 1);
  const Tensor expected = host.clone();
  Tensor view = host.rows(1, 3);  // shares the storage: follows it
  Tensor out = gpu->empty({4, 8}, DType::F32);
  REQUIRE(out.device() == Device::CUDA);
  const auto before = ssmtune::tensor_transfers();
  gpu->silu_forward(host, out);
  CHECK(host.device() == Device::CUDA);
  CHECK(view.device() == Device::CUDA);
  gpu->scale(host, 2.0);  // already there: no second move
  auto after = ssmtune::tensor_transfers();
  CHECK(after.to_device - before.to_device == 1);
  CHECK(after.bytes_to_device - before.bytes_to_device == 4 * 8 * 4);
  // Reading a view brings the whole storage back, with the op's result in it.
  CHECK(view.data<float>()[0] == 2 * expected.data<float>()[8]);
  CHECK(host.device() == Device::CPU);
  after = ssmtune::tensor_transfers();
  CHECK(after.to_host - before.to_host == 1);
  // fill_zero and copies between sides leave each tensor where it is.
  out.fill_zero();
  CHECK(out.device() == Device::CUDA);
  Tensor back = Tensor::empty({4, 8}, DType::F32);
  gpu->copy(out, back);
  CHECK(back.device() == Device::CPU);
  CHECK(out.device() == Device::CUDA);
  CHECK(back.data<float>()[31] == 0.0f);
  CHECK(ssmtune::tensor_transfers().to_host == after.to_host);
}
