// Every kernel of kernels/ (run on the CUDA-on-CPU emulator) against its CPU twin in
// lib/backend/cpu, on random inputs at several shapes, under each thread order (forward,
// reverse, shuffled; cuda_emu_test_util.h). Shapes include ragged widths (not multiples of 32
// or of the block), one row, rows with fewer elements than threads and rows with many
// elements per thread, and more than one dw chunk with a ragged last chunk.
//
// Tolerances are normwise (test_compare.h: max |error| <= rtol * max |ref|). float32 has
// u = 6e-8. The twins compute the same formulas, but reductions add in different orders (the
// CPU runs along the row; a kernel adds strided partials per thread, then a shuffle tree), so
// sums of n terms differ by about sqrt(n) u relative, n u at worst. A missing barrier, a wrong
// index or an element never written (device memory starts as NaN) gives an O(1) error instead.
#include <catch2/catch.hpp>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "cuda_emu_test_util.h"
#include "kernels/column_sum.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/rmsnorm.cuh"
#include "test_compare.h"

namespace {

using ssmtune::DType;
using ssmtune::Tensor;
using ssmtune::testing::DeviceFloats;
using ssmtune::testing::random_f32;
using ssmtune::testing::require_close;
using ssmtune::testing::require_launch_ok;
namespace cpu = ssmtune::cpu;
namespace kernels = ssmtune::kernels;

struct RowShape {
  std::int64_t rows, D;
  int threads;          // 0: the launcher's choice
  std::int64_t G = 1;   // groups normalised separately (Mamba-2's gated norm)
};

// Sums of D <= 2560 squares (forward) and products (backward dx): sqrt(2560) u ~ 3e-6
// typical, 1.5e-4 bound. Measured: at most 8.3e-7 (y at D = 2560). 5e-6 is 6 times that.
constexpr double kRowSumRtol = 5e-6;

TEST_CASE("emulated rmsnorm_forward_kernel matches cpu::rmsnorm_forward in every thread order",
          "[cuda-emu]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  // 2560: mamba-2.8b's d_model, 640 threads (20 warps: a partial second shuffle level).
  const RowShape shapes[] = {{1, 1, 0},    {1, 31, 0},  {3, 33, 32},     {5, 100, 0},
                             {7, 257, 64}, {4, 768, 0}, {2, 1000, 1024}, {6, 1000, 32},
                             {3, 2560, 0}, {3, 96, 0, 4},   {5, 1000, 32, 8}};
  std::mt19937_64 rng(11);
  for (const RowShape& s : shapes) {
    INFO("rows " << s.rows << ", D " << s.D << ", threads " << s.threads << ", groups " << s.G);
    const Tensor x = random_f32({s.rows, s.D}, rng, -2, 2);
    const Tensor w = random_f32({s.D}, rng, 0.5, 1.5);
    const double eps = 1e-5;
    Tensor y_ref = Tensor::empty({s.rows, s.D}, DType::F32);
    Tensor rstd_ref = Tensor::empty({s.rows, s.G}, DType::F32);
    cpu::rmsnorm_forward<float>(s.rows, s.D, x.data<float>(), w.data<float>(), eps,
                                y_ref.data<float>(), rstd_ref.data<float>(), s.G);

    DeviceFloats d_x(x), d_w(w), d_y(s.rows * s.D), d_rstd(s.rows * s.G);
    kernels::rmsnorm_forward(s.rows, s.D, d_x.get(), d_w.get(), eps, d_y.get(), d_rstd.get(),
                             nullptr, s.threads, s.G);
    require_launch_ok();
    require_close("y", d_y.to_host({s.rows, s.D}), y_ref, kRowSumRtol, 0);
    require_close("rstd", d_rstd.to_host({s.rows, s.G}), rstd_ref, kRowSumRtol, 0);
  }
}

TEST_CASE("emulated rmsnorm backward kernels match cpu::rmsnorm_backward in every thread order",
          "[cuda-emu]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  static_assert(kernels::kRmsnormDwChunkRows == 64, "the shapes below assume 64-row dw chunks");
  // 64 rows: one full chunk; 65: a second chunk of one row; 130, 200: three and four chunks.
  const RowShape shapes[] = {{1, 1, 0},    {1, 31, 0},     {3, 33, 32},  {64, 768, 0},
                             {65, 100, 0}, {130, 257, 64}, {200, 40, 32}, {70, 96, 0, 4},
                             {3, 100, 32, 5}};
  std::mt19937_64 rng(12);
  for (const RowShape& s : shapes) {
    INFO("rows " << s.rows << ", D " << s.D << ", threads " << s.threads << ", groups " << s.G);
    const Tensor x = random_f32({s.rows, s.D}, rng, -2, 2);
    const Tensor dy = random_f32({s.rows, s.D}, rng, -1, 1);
    const Tensor w = random_f32({s.D}, rng, 0.5, 1.5);
    const Tensor dw0 = random_f32({s.D}, rng, -1, 1);  // dw accumulates onto this
    Tensor y = Tensor::empty({s.rows, s.D}, DType::F32);
    Tensor rstd = Tensor::empty({s.rows, s.G}, DType::F32);
    cpu::rmsnorm_forward<float>(s.rows, s.D, x.data<float>(), w.data<float>(), 1e-5,
                                y.data<float>(), rstd.data<float>(), s.G);
    Tensor dx_ref = Tensor::empty({s.rows, s.D}, DType::F32);
    Tensor dw_ref = dw0.clone();
    cpu::rmsnorm_backward<float>(s.rows, s.D, dy.data<float>(), x.data<float>(), w.data<float>(),
                                 rstd.data<float>(), dx_ref.data<float>(), dw_ref.data<float>(),
                                 s.G);

    DeviceFloats d_dy(dy), d_x(x), d_w(w), d_rstd(rstd), d_dw(dw0), d_dx(s.rows * s.D);
    DeviceFloats d_work(kernels::rmsnorm_backward_workspace_floats(s.rows, s.D));
    kernels::rmsnorm_backward(s.rows, s.D, d_dy.get(), d_x.get(), d_w.get(), d_rstd.get(),
                              d_dx.get(), d_dw.get(), d_work.get(), nullptr, s.threads, false,
                              s.G);
    require_launch_ok();
    require_close("dx", d_dx.to_host({s.rows, s.D}), dx_ref, kRowSumRtol, 0);
    // dw sums <= 200 rows (plus the initial value) in chunked vs sequential order:
    // sqrt(200) u ~ 1e-6 typical; measured at most 4.3e-7 (rows 130). 5e-6 is 10 times that.
    require_close("dw", d_dw.to_host({s.D}), dw_ref, 5e-6, 0);
  }
}

TEST_CASE("emulated column_sum_kernel matches cpu::column_sum to the bit", "[cuda-emu]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  const std::int64_t shapes[][2] = {{1, 1}, {3, 300}, {70, 257}};
  std::mt19937_64 rng(13);
  for (const auto& [rows, cols] : shapes) {
    INFO("rows " << rows << ", cols " << cols);
    const Tensor src = random_f32({rows, cols}, rng, -1, 1);
    const Tensor dst0 = random_f32({cols}, rng, -1, 1);
    Tensor ref = dst0.clone();
    cpu::column_sum<float>(rows, cols, src.data<float>(), ref.data<float>());
    DeviceFloats d_src(src), d_dst(dst0);
    kernels::column_sum(rows, cols, d_src.get(), d_dst.get(), nullptr);
    require_launch_ok();
    // Both add the rows of a column in row order, then add the sum to dst: the same float
    // operations in the same order (no product to fuse into an FMA), so exact.
    require_close("dst", d_dst.to_host({cols}), ref, 0, 0);
  }
}

// One elementwise op under test: runs the kernel and the twin on the same inputs.
using Ptrs = const std::vector<float*>&;
struct ElementwiseCase {
  const char* name;
  int n_inputs, n_outputs;
  void (*kernel)(std::int64_t n, Ptrs in, Ptrs out, int max_blocks);
  void (*twin)(std::int64_t n, Ptrs in, Ptrs out);
};

const ElementwiseCase kElementwiseCases[] = {
    {"silu_forward", 1, 1,
     [](std::int64_t n, Ptrs i, Ptrs o, int mb) {
       kernels::silu_forward(n, i[0], o[0], nullptr, mb);
     },
     [](std::int64_t n, Ptrs i, Ptrs o) { cpu::silu_forward<float>(n, i[0], o[0]); }},
    {"silu_backward", 2, 1,
     [](std::int64_t n, Ptrs i, Ptrs o, int mb) {
       kernels::silu_backward(n, i[0], i[1], o[0], nullptr, mb);
     },
     [](std::int64_t n, Ptrs i, Ptrs o) { cpu::silu_backward<float>(n, i[0], i[1], o[0]); }},
    {"softplus_forward", 1, 1,
     [](std::int64_t n, Ptrs i, Ptrs o, int mb) {
       kernels::softplus_forward(n, i[0], o[0], nullptr, mb);
     },
     [](std::int64_t n, Ptrs i, Ptrs o) { cpu::softplus_forward<float>(n, i[0], o[0]); }},
    {"softplus_backward", 2, 1,
     [](std::int64_t n, Ptrs i, Ptrs o, int mb) {
       kernels::softplus_backward(n, i[0], i[1], o[0], nullptr, mb);
     },
     [](std::int64_t n, Ptrs i, Ptrs o) { cpu::softplus_backward<float>(n, i[0], i[1], o[0]); }},
    {"gate_forward", 2, 1,
     [](std::int64_t n, Ptrs i, Ptrs o, int mb) {
       kernels::gate_forward(n, i[0], i[1], o[0], nullptr, mb);
     },
     [](std::int64_t n, Ptrs i, Ptrs o) { cpu::gate_forward<float>(n, i[0], i[1], o[0]); }},
    {"gate_backward", 3, 2,
     [](std::int64_t n, Ptrs i, Ptrs o, int mb) {
       kernels::gate_backward(n, i[0], i[1], i[2], o[0], o[1], nullptr, mb);
     },
     [](std::int64_t n, Ptrs i, Ptrs o) {
       cpu::gate_backward<float>(n, i[0], i[1], i[2], o[0], o[1]);
     }},
};

TEST_CASE("emulated elementwise kernels match their cpu twins in every thread order",
          "[cuda-emu]") {
  const cuda_emu::Schedule order = GENERATE(from_range(ssmtune::testing::kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  // {n, max_blocks}: one element, ragged multiples of the 256-thread block, and a grid capped
  // at 3 blocks so the grid-stride loop runs 7 passes with a ragged last one.
  const std::int64_t shapes[][2] = {{1, kernels::kElementwiseMaxBlocks},
                                    {255, kernels::kElementwiseMaxBlocks},
                                    {257, kernels::kElementwiseMaxBlocks},
                                    {1000, kernels::kElementwiseMaxBlocks},
                                    {5000, 3}};
  std::mt19937_64 rng(14);
  for (const ElementwiseCase& op : kElementwiseCases) {
    for (const auto& [n, max_blocks] : shapes) {
      INFO(op.name << ", n " << n << ", max_blocks " << max_blocks);
      // [-30, 30] covers sigmoid's saturation and both sides of softplus's threshold at 20,
      // which the first two elements of every input hit exactly and just above.
      std::vector<Tensor> in;
      for (int k = 0; k < op.n_inputs; ++k) {
        in.push_back(random_f32({n}, rng, -30, 30));
        if (n >= 2) in[k].data<float>()[0] = 20.0f, in[k].data<float>()[1] = 20.001f;
      }
      std::vector<Tensor> ref;
      std::vector<float*> in_host, ref_host, in_dev, out_dev;
      std::vector<std::unique_ptr<DeviceFloats>> bufs;
      for (Tensor& t : in) {
        in_host.push_back(t.data<float>());
        bufs.push_back(std::make_unique<DeviceFloats>(t));
        in_dev.push_back(bufs.back()->get());
      }
      for (int k = 0; k < op.n_outputs; ++k) {
        ref.push_back(Tensor::empty({n}, DType::F32));
        ref_host.push_back(ref.back().data<float>());
        bufs.push_back(std::make_unique<DeviceFloats>(n));
        out_dev.push_back(bufs.back()->get());
      }
      op.twin(n, in_host, ref_host);
      op.kernel(n, in_dev, out_dev, int(max_blocks));
      require_launch_ok();
      // One exp, log1p and division per element, each off by an ulp or two (the host's
      // expf/log1pf here, CUDA's on a GPU, the twin's Cephes exp). Measured: at most 3.5e-7 of
      // the largest output (silu_backward). 2e-6 (16 ulp of the largest value) is 6 times
      // that; 1e-7 absolute for outputs that are all tiny (n = 1).
      for (int k = 0; k < op.n_outputs; ++k)
        require_close("output " + std::to_string(k), bufs[op.n_inputs + k]->to_host({n}), ref[k],
                      2e-6, 1e-7);
    }
  }
}

}  // namespace
