// The CUDA backend (cuda_backend.h): checks shapes and element types on the host (OpChecks, the
// CPU backend's checks), moves the operands to the GPU, then queues the kernel or cuBLAS call on
// the one stream. Only results the caller reads on the host (the loss, the sum of squares)
// wait for the GPU.
#include "backend/cuda/cuda_backend.h"

#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_api.h"
#include "backend/cuda/cuda_memory.h"
#include "backend/op_checks.h"
#include "kernels/counter_rng.h"
#include "kernels/attention.cuh"
#include "kernels/conv1d.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/moe.cuh"
#include "kernels/optim.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/row_ops.cuh"
#include "kernels/selective_scan.cuh"
#include "kernels/ssd.cuh"
#include "kernels/tensor_ops.cuh"
#include "kernels/token_ops.cuh"

namespace ssmtune {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {

const OpChecks checks("cuda");

// A kernel launcher as a callable (the elementwise ones have a defaulted grid-cap argument, so
// a plain function pointer would not do).
#define SSMTUNE_KERNEL_FN(launcher) [](auto... args) { kernels::launcher(args...); }

// SSMTUNE_CUDA_SYNC=1: wait for every op, so an error inside a kernel is reported by the op
// that launched it instead of by a later one (debugging; slower).
bool sync_every_op() {
  static const bool on = [] {
    const char* v = std::getenv("SSMTUNE_CUDA_SYNC");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return on;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, CudaOptions options) : options_(options) {
    cuda_check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
    memory_ = std::make_shared<CudaMemory>();
    cublas_check(cublasCreate(&blas_), "cublasCreate");
    cublas_check(cublasSetStream(blas_, memory_->stream()), "cublasSetStream");
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(memory_->stream());
    cublasDestroy(blas_);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::CUDA; }
  std::size_t peak_device_bytes() const override { return memory_->peak_bytes_in_use(); }
  std::uint64_t free_device_bytes() const override {
    std::size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
      cudaGetLastError();  // not this backend's error to report later
      return UINT64_MAX;
    }
    return free + memory_->bytes_cached();
  }

  void synchronize() override { wait("synchronize"); }

  Tensor empty(const Shape& shape, DType dtype) override {
    return Tensor::empty_on(memory_, shape, dtype);
  }
  Tensor zeros(const Shape& shape, DType dtype) override {
    Tensor t = empty(shape, dtype);
    t.fill_zero();
    return t;
  }

  // Each side stays where it lives: the decoder copies logits into a host tensor.
  void copy(const Tensor& src, Tensor& dst) override {
    checks.require(
        src.shape() == dst.shape() && src.dtype() == dst.dtype(), "copy",
        "shape/dtype mismatch " + shape_str(src.shape()) + " vs " + shape_str(dst.shape()));
    const std::size_t n = src.nbytes();
    if (!n) return;
    const bool src_dev = src.device() == Device::CUDA, dst_dev = dst.device() == Device::CUDA;
    if (!src_dev && !dst_dev) {
      std::memmove(dst.raw(), src.raw(), n);
    } else if (dst_dev && !src_dev) {
      memory_->copy_to_device(dst.device_raw(memory_), src.raw(), n);
    } else if (!dst_dev) {
      memory_->copy_to_host(dst.raw(), src.device_raw(memory_), n);
    } else {
      cuda_check(cudaMemcpyAsync(dst.device_raw(memory_), src.device_raw(memory_), n,
                                 cudaMemcpyDeviceToDevice, stream()),
                 "copy");
    }
  }

  void convert(const Tensor& src, Tensor& dst) override {
    Timer timer(*this, "elementwise");
    checks.require(src.shape() == dst.shape(), "convert",
                   "shapes differ: " + shape_str(src.shape()) + " vs " + shape_str(dst.shape()));
    checks.require(src.dtype() == DType::BF16, "convert",
                   "src must be BF16, got " + std::string(dtype_name(src.dtype())));
    kernels::from_bf16(src.numel(), static_cast<const std::uint16_t*>(src.device_raw(memory_)),
                       f32(dst, "convert", "dst"), stream());
    launch_check("from_bf16");
  }

  void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& A, const Tensor& B, double beta,
            Tensor& C) override {
    const auto [M, N, K] = checks.gemm(trans_a, trans_b, A, B, C);
    Timer timer(*this, "gemm", 2.0 * double(M) * double(N) * double(K));
    checks.require(
        M < INT_MAX && N < INT_MAX && K < INT_MAX && A.dim(1) < INT_MAX && B.dim(1) < INT_MAX,
        "gemm", "a dimension reaches 2^31 (cuBLAS takes int sizes)");
    if (M == 0 || N == 0) return;
    const float a = float(alpha), b = float(beta);
    const std::string what = shape_str(A.shape()) + (trans_a ? "^T" : "") + " x " +
                             shape_str(B.shape()) + (trans_b ? "^T" : "");
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap and
    // each row-major matrix is read as its column-major transpose (leading dim = its columns).
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    // B held in bf16 (a frozen weight): cuBLAS takes no fp32 x bf16 product, so B is widened
    // (exactly) into scratch for an fp32 product, or used as it is for a bf16 one.
    const bool b_is_bf16 = B.dtype() == DType::BF16;
    const auto* b_bits = b_is_bf16 ? static_cast<const std::uint16_t*>(B.device_raw(memory_))
                                   : nullptr;
    if (!options_.bf16_matmul) {
      std::optional<DeviceScratch> b32;  // only for a bf16 B: no pool traffic otherwise
      if (b_is_bf16) {
        b32.emplace(*memory_, floats(B.numel()));
        kernels::from_bf16(B.numel(), b_bits, b32->as<float>(), stream());
        launch_check("from_bf16");
      }
      const float* b_f32 = b_is_bf16 ? b32->as<float>() : f32(B, "gemm", "B");
      cublas_check(cublasSgemm(blas_, op_b, op_a, int(N), int(M), int(K), &a, b_f32,
                               int(B.dim(1)), f32(A, "gemm", "A"), int(A.dim(1)), &b,
                               f32(C, "gemm", "C"), int(N)),
                   "cublasSgemm " + what);
      return;
    }
    // bf16 copies of both inputs for this one product; C and the accumulation stay fp32.
    DeviceScratch a16(*memory_, std::size_t(A.numel()) * 2);
    std::optional<DeviceScratch> b16;  // only for an fp32 B
    kernels::to_bf16(A.numel(), f32(A, "gemm", "A"), a16.as<std::uint16_t>(), stream());
    if (!b_is_bf16) {
      b16.emplace(*memory_, std::size_t(B.numel()) * 2);
      kernels::to_bf16(B.numel(), f32(B, "gemm", "B"), b16->as<std::uint16_t>(), stream());
    }
    launch_check("to_bf16");
    const void* b_bf16 = b_is_bf16 ? static_cast<const void*>(b_bits) : b16->as<void>();
    cublas_check(cublasGemmEx(blas_, op_b, op_a, int(N), int(M), int(K), &a, b_bf16,
                              CUDA_R_16BF, int(B.dim(1)), a16.as<void>(), CUDA_R_16BF,
                              int(A.dim(1)), &b, f32(C, "gemm", "C"), CUDA_R_32F, int(N),
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (bf16 inputs) " + what);
  }

  void add_bias(Tensor& y, const Tensor& bias) override {
    Timer timer(*this, "elementwise");
    const std::int64_t n = bias.numel();
    checks.require(y.ndim() >= 1 && y.dim(-1) == n, "add_bias", "bias length != last dim of y");
    kernels::add_bias(n ? y.numel() / n : 0, n, f32(bias, "add_bias", "bias"),
                      f32(y, "add_bias", "y"), stream());
    launch_check("add_bias");
  }

  void bias_backward(const Tensor& dy, Tensor& dbias) override {
    Timer timer(*this, "elementwise");
    const std::int64_t n = dbias.numel(), rows = n ? dy.numel() / n : 0;
    checks.require(dy.ndim() >= 1 && dy.dim(-1) == n, "bias_backward", "dbias length != last dim");
    DeviceScratch ws(*memory_, floats(kernels::bias_backward_workspace_floats(rows, n)));
    kernels::bias_backward(rows, n, f32(dy, "bias_backward", "dy"),
                           f32(dbias, "bias_backward", "dbias"), ws.as<float>(), stream());
    launch_check("bias_backward");
  }

  void add(const Tensor& x, Tensor& y) override {
    Timer timer(*this, "elementwise");
    checks.require(x.shape() == y.shape(), "add", "shapes differ");
    kernels::add(y.numel(), f32(x, "add", "x"), f32(y, "add", "y"), stream());
    launch_check("add");
  }

  void split_columns(const Tensor& src, std::int64_t col0, Tensor& dst) override {
    copy_columns("split_columns", src, col0, dst, /*to_wide=*/false);
  }
  void merge_columns(const Tensor& src, std::int64_t col0, Tensor& dst) override {
    copy_columns("merge_columns", dst, col0, src, /*to_wide=*/true);
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y,
                       Tensor& rstd) override {
    Timer timer(*this, "rmsnorm");
    const auto [rows, D, G] = checks.rmsnorm_forward(x, w, y, rstd);
    const char* op = "rmsnorm_forward";
    kernels::rmsnorm_forward(rows, D, f32(x, op, "x"), f32(w, op, "w"), eps, f32(y, op, "y"),
                             f32(rstd, op, "rstd"), stream(), 0, G);
    launch_check(op);
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override {
    rmsnorm_backward_into(dy, x, w, rstd, dx, dw, /*accumulate_dx=*/false);
  }
  void add_rmsnorm_forward(const Tensor& x, Tensor& sum, const Tensor& w, double eps, Tensor& y,
                           Tensor& rstd) override {
    Timer timer(*this, "rmsnorm");
    const char* op = "add_rmsnorm_forward";
    checks.require(x.shape() == sum.shape(), op, "x and sum shapes differ");
    const auto [rows, D, G] = checks.rmsnorm_forward(sum, w, y, rstd);
    checks.require(G == 1, op, "a norm per group is not fused with the residual add");
    kernels::add_rmsnorm_forward(rows, D, f32(x, op, "x"), f32(sum, op, "sum"), f32(w, op, "w"),
                                 eps, f32(y, op, "y"), f32(rstd, op, "rstd"), stream());
    launch_check(op);
  }
  void rmsnorm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                            Tensor& dx, Tensor& dw) override {
    rmsnorm_backward_into(dy, x, w, rstd, dx, dw, /*accumulate_dx=*/true);
  }

  void conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& c) override {
    conv1d_into(x, w, bias, c, Tensor());
  }
  void conv1d_silu_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& c,
                           Tensor& u) override {
    checks.shape(u, x.shape(), "conv1d_silu_forward", "u");
    conv1d_into(x, w, bias, c, u);
  }
  void conv1d_backward(const Tensor& dc, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw,
                       Tensor& dbias) override {
    Timer timer(*this, "conv1d");
    const char* op = "conv1d_backward";
    const auto [B, L, E, K] = checks.conv1d_backward(dc, x, w, dx, dw, dbias);
    checks.require(K >= 1 && K <= kernels::kConv1dMaxWidth, op, "kernel width out of range");
    const bool weight_grads = dw.defined() || dbias.defined();  // none for a frozen conv
    const std::int64_t ws_floats =
        weight_grads ? kernels::conv1d_backward_workspace_floats(B, L, E, int(K)) : 0;
    DeviceScratch ws(*memory_, floats(ws_floats));
    kernels::conv1d_backward(B, L, E, int(K), f32(dc, op, "dc"), f32(x, op, "x"), f32(w, op, "w"),
                             f32(dx, op, "dx"), f32_or_null(dw, op, "dw"),
                             f32_or_null(dbias, op, "dbias"),
                             ws.as<float>(), stream());
    launch_check(op);
  }

  void silu_forward(const Tensor& x, Tensor& y) override {
    unary("silu_forward", x, y, SSMTUNE_KERNEL_FN(silu_forward));
  }
  void silu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) override {
    binary("silu_backward", dy, x, dx, SSMTUNE_KERNEL_FN(silu_backward));
  }
  void softplus_forward(const Tensor& x, Tensor& y) override {
    unary("softplus_forward", x, y, SSMTUNE_KERNEL_FN(softplus_forward));
  }
  void softplus_backward(const Tensor& dy, const Tensor& x, Tensor& dx) override {
    binary("softplus_backward", dy, x, dx, SSMTUNE_KERNEL_FN(softplus_backward));
  }
  void relu_forward(const Tensor& x, Tensor& y) override {
    unary("relu_forward", x, y, SSMTUNE_KERNEL_FN(relu_forward));
  }
  void relu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) override {
    binary("relu_backward", dy, x, dx, SSMTUNE_KERNEL_FN(relu_backward));
  }
  // Bounds beyond float's range (an infinite max) stay infinite: float(inf) is inf.
  void clamp_forward(const Tensor& x, double lo, double hi, Tensor& y) override {
    unary("clamp_forward", x, y, [lo, hi](std::int64_t n, auto xp, auto yp, cudaStream_t s) {
      kernels::clamp_forward(n, float(lo), float(hi), xp, yp, s);
    });
  }
  void clamp_backward(const Tensor& dy, const Tensor& x, double lo, double hi,
                      Tensor& dx) override {
    binary("clamp_backward", dy, x, dx,
           [lo, hi](std::int64_t n, auto dyp, auto xp, auto dxp, cudaStream_t s) {
             kernels::clamp_backward(n, float(lo), float(hi), dyp, xp, dxp, s);
           });
  }
  void gate_forward(const Tensor& y, const Tensor& z, Tensor& out) override {
    binary("gate_forward", y, z, out, SSMTUNE_KERNEL_FN(gate_forward));
  }
  void gate_backward(const Tensor& dout, const Tensor& y, const Tensor& z, Tensor& dy,
                     Tensor& dz) override {
    Timer timer(*this, "elementwise");
    const char* op = "gate_backward";
    for (const Tensor* t : std::initializer_list<const Tensor*>{&y, &z, &dy, &dz})
      checks.require(t->shape() == dout.shape(), op, "shapes differ");
    kernels::gate_backward(dout.numel(), f32(dout, op, "dout"), f32(y, op, "y"), f32(z, op, "z"),
                           f32(dy, op, "dy"), f32(dz, op, "dz"), stream());
    launch_check(op);
  }
  void ssm_A_forward(const Tensor& A_log, Tensor& A) override {
    unary("ssm_A_forward", A_log, A, SSMTUNE_KERNEL_FN(ssm_A_forward));
  }
  void ssm_A_backward(const Tensor& dA, const Tensor& A, Tensor& dA_log) override {
    binary("ssm_A_backward", dA, A, dA_log, SSMTUNE_KERNEL_FN(ssm_A_backward));
  }

  // ScanInputs::delta_softplus has no fused kernel here yet: the softplus ops run around the
  // plain scan (what the model did before the CPU backend fused it), with delta in a temporary.
  ScanInputs softplus_applied(const ScanInputs& in) {
    ScanInputs plain = in;
    plain.delta_softplus = false;
    plain.delta = empty(in.delta.shape(), in.delta.dtype());
    softplus_forward(in.delta, plain.delta);
    return plain;
  }

  // u, delta, Bm, Cm: all F32, or all BF16 (the kernels widen them as they stage them).
  void selective_scan_forward(const ScanInputs& in, Tensor& y, Tensor& h_saved,
                              Tensor& h_last) override {
    if (in.delta_softplus) return selective_scan_forward(softplus_applied(in), y, h_saved, h_last);
    Timer timer(*this, "scan_forward");
    const char* op = "selective_scan_forward";
    const cpu::ScanDims d = checks.scan(in);
    checks.scan_outputs(d, in, y, h_saved, h_last);
    const auto run = [&](auto* input) {  // input: a null pointer of the input type
      using P = decltype(input);
      kernels::selective_scan_forward(
          shape_of(d), scan_input<P>(in.u, op, "u"), scan_input<P>(in.delta, op, "delta"),
          f32(in.A, op, "A"), scan_input<P>(in.Bm, op, "Bm"), scan_input<P>(in.Cm, op, "Cm"),
          f32_or_null(in.D, op, "D"), f32_or_null(in.h0, op, "h0"), f32(y, op, "y"),
          f32(h_saved, op, "h_saved"), f32_or_null(h_last, op, "h_last"), stream());
    };
    with_scan_input_type(in, run);
    launch_check(op);
  }
  void selective_scan_backward(const ScanInputs& in, const Tensor& h_saved, const Tensor& dy,
                               ScanGrads& g) override {
    if (in.delta_softplus) {
      checks.scan_grads(checks.scan(in), in, h_saved, dy, g);  // before g.ddelta is read
      ScanGrads plain = g;
      plain.ddelta = empty(g.ddelta.shape(), g.ddelta.dtype());
      selective_scan_backward(softplus_applied(in), h_saved, dy, plain);
      softplus_backward(plain.ddelta, in.delta, g.ddelta);
      return;
    }
    Timer timer(*this, "scan_backward");
    const char* op = "selective_scan_backward";
    const cpu::ScanDims d = checks.scan(in);
    checks.scan_grads(d, in, h_saved, dy, g);
    const kernels::ScanShape s = shape_of(d);
    DeviceScratch ws(*memory_, floats(kernels::selective_scan_backward_workspace_floats(s)));
    const auto run = [&](auto* input) {
      using P = decltype(input);
      kernels::selective_scan_backward(
          s, scan_input<P>(in.u, op, "u"), scan_input<P>(in.delta, op, "delta"), f32(in.A, op, "A"),
          scan_input<P>(in.Bm, op, "Bm"), scan_input<P>(in.Cm, op, "Cm"),
          f32_or_null(in.D, op, "D"), f32(h_saved, op, "h_saved"), f32(dy, op, "dy"),
          f32(g.du, op, "du"), f32(g.ddelta, op, "ddelta"), f32(g.dA, op, "dA"),
          f32(g.dBm, op, "dBm"), f32(g.dCm, op, "dCm"), f32_or_null(g.dD, op, "dD"),
          f32_or_null(g.dh0, op, "dh0"), ws.as<float>(), stream());
    };
    with_scan_input_type(in, run);
    launch_check(op);
  }

  void ssd_forward(const SsdInputs& in, Tensor& y, Tensor& h_saved, Tensor& h_last) override {
    Timer timer(*this, "ssd_forward");
    const char* op = "ssd_forward";
    const cpu::SsdDims d = checks.ssd(in);
    checks.ssd_outputs(d, in, y, h_saved, h_last);
    const kernels::SsdShape s = ssd_shape(op, d, in.x);
    DeviceScratch ws(*memory_, floats(kernels::ssd_forward_workspace_floats(s)));
    kernels::ssd_forward(s, f32(in.x, op, "x"), f32(in.dt, op, "dt"), f32(in.A, op, "A"),
                         f32(in.Bm, op, "Bm"), f32(in.Cm, op, "Cm"), f32_or_null(in.D, op, "D"),
                         f32_or_null(in.h0, op, "h0"), f32(y, op, "y"),
                         f32(h_saved, op, "h_saved"), f32_or_null(h_last, op, "h_last"),
                         ws.as<float>(), stream());
    launch_check(op);
  }
  void ssd_backward(const SsdInputs& in, const Tensor& h_saved, const Tensor& dy,
                    SsdGrads& g) override {
    Timer timer(*this, "ssd_backward");
    const char* op = "ssd_backward";
    const cpu::SsdDims d = checks.ssd(in);
    checks.ssd_grads(d, in, h_saved, dy, g);
    const kernels::SsdShape s = ssd_shape(op, d, in.x);
    DeviceScratch ws(*memory_, floats(kernels::ssd_backward_workspace_floats(s)));
    kernels::ssd_backward(s, f32(in.x, op, "x"), f32(in.dt, op, "dt"), f32(in.A, op, "A"),
                          f32(in.Bm, op, "Bm"), f32(in.Cm, op, "Cm"), f32_or_null(in.D, op, "D"),
                          f32(h_saved, op, "h_saved"), f32(dy, op, "dy"), f32(g.dx, op, "dx"),
                          f32(g.ddt, op, "ddt"), f32(g.dA, op, "dA"), f32(g.dBm, op, "dBm"),
                          f32(g.dCm, op, "dCm"), f32_or_null(g.dD, op, "dD"),
                          f32_or_null(g.dh0, op, "dh0"), ws.as<float>(), stream());
    launch_check(op);
  }

  // key_mask moves to the GPU on first use, like any tensor an op reads (core/tensor.h).
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                         double scale, Tensor& out, Tensor& lse) override {
    Timer timer(*this, "attention");
    const char* op = "attention_forward";
    const kernels::AttentionShape s = attention_shape(op, q, k, v, key_mask);
    checks.attention_outputs({s.B, s.Lq, s.Lk, s.H, s.KV, s.hd}, q, out, lse);
    kernels::attention_forward(s, f32(q, op, "q"), f32(k, op, "k"), f32(v, op, "v"),
                               mask_ptr(key_mask), float(scale), f32(out, op, "out"),
                               f32(lse, op, "lse"), stream());
    launch_check(op);
  }
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& key_mask, double scale, const Tensor& out,
                          const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                          Tensor& dv) override {
    Timer timer(*this, "attention");
    const char* op = "attention_backward";
    const kernels::AttentionShape s = attention_shape(op, q, k, v, key_mask);
    checks.attention_grads({s.B, s.Lq, s.Lk, s.H, s.KV, s.hd}, q, k, out, lse, dout, dq, dk, dv);
    DeviceScratch ws(*memory_, floats(kernels::attention_backward_workspace_floats(s)));
    kernels::attention_backward(s, f32(q, op, "q"), f32(k, op, "k"), f32(v, op, "v"),
                                mask_ptr(key_mask), float(scale), f32(out, op, "out"),
                                f32(lse, op, "lse"), f32(dout, op, "dout"), f32(dq, op, "dq"),
                                f32(dk, op, "dk"), f32(dv, op, "dv"), ws.as<float>(), stream());
    launch_check(op);
  }

  // experts and slot move to the GPU like any tensor an op touches (core/tensor.h).
  void moe_router_forward(const Tensor& logits, std::int64_t top_k, Tensor& probs, Tensor& weights,
                          Tensor& experts) override {
    Timer timer(*this, "moe");
    const char* op = "moe_router_forward";
    const kernels::MoeRouterShape s =
        router_shape(op, checks.moe_router_forward(logits, top_k, probs, weights, experts));
    kernels::moe_router_forward(s, f32(logits, op, "logits"), f32(probs, op, "probs"),
                                f32(weights, op, "weights"), i64(experts), stream());
    launch_check(op);
  }
  void moe_router_backward(const Tensor& dweights, const Tensor& probs, const Tensor& experts,
                           const Tensor& dprobs_extra, Tensor& dlogits) override {
    Timer timer(*this, "moe");
    const char* op = "moe_router_backward";
    const kernels::MoeRouterShape s = router_shape(
        op, checks.moe_router_backward(dweights, probs, experts, dprobs_extra, dlogits));
    kernels::moe_router_backward(s, f32(dweights, op, "dweights"), f32(probs, op, "probs"),
                                 i64(experts), f32_or_null(dprobs_extra, op, "dprobs_extra"),
                                 f32(dlogits, op, "dlogits"), stream());
    launch_check(op);
  }
  void moe_dispatch(const Tensor& x, const Tensor& slot, Tensor& xs) override {
    Timer timer(*this, "moe");
    const char* op = "moe_dispatch";
    const kernels::MoeSlotShape s = slot_shape(op, slot, x, "x", xs, "xs");
    kernels::moe_dispatch(s, f32(x, op, "x"), slot_ptr(op, slot), f32(xs, op, "xs"), stream());
    launch_check(op);
  }
  void moe_dispatch_backward(const Tensor& dxs, const Tensor& slot, Tensor& dx) override {
    Timer timer(*this, "moe");
    const char* op = "moe_dispatch_backward";
    const kernels::MoeSlotShape s = slot_shape(op, slot, dx, "dx", dxs, "dxs");
    kernels::moe_dispatch_backward(s, f32(dxs, op, "dxs"), slot_ptr(op, slot), f32(dx, op, "dx"),
                                   stream());
    launch_check(op);
  }
  void moe_combine(const Tensor& ys, const Tensor& slot, const Tensor& weights,
                   Tensor& out) override {
    Timer timer(*this, "moe");
    const char* op = "moe_combine";
    const kernels::MoeSlotShape s = slot_shape(op, slot, out, "out", ys, "ys");
    checks.moe_per_choice(op, {s.rows, s.k, s.D}, weights, "weights", ys);
    kernels::moe_combine(s, f32(ys, op, "ys"), slot_ptr(op, slot), f32(weights, op, "weights"),
                         f32(out, op, "out"), stream());
    launch_check(op);
  }
  void moe_combine_backward(const Tensor& dout, const Tensor& ys, const Tensor& slot,
                            const Tensor& weights, Tensor& dys, Tensor& dweights) override {
    Timer timer(*this, "moe");
    const char* op = "moe_combine_backward";
    const kernels::MoeSlotShape s = slot_shape(op, slot, dout, "dout", ys, "ys");
    checks.shape(dys, ys.shape(), op, "dys");
    checks.moe_per_choice(op, {s.rows, s.k, s.D}, weights, "weights", ys);
    checks.moe_per_choice(op, {s.rows, s.k, s.D}, dweights, "dweights", ys);
    kernels::moe_combine_backward(s, f32(dout, op, "dout"), f32(ys, op, "ys"), slot_ptr(op, slot),
                                  f32(weights, op, "weights"), f32(dys, op, "dys"),
                                  f32(dweights, op, "dweights"), stream());
    launch_check(op);
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) override {
    Timer timer(*this, "embedding");
    const char* op = "embedding_forward";
    const std::int64_t n = ids.numel(), D = table.dim(1);
    OpChecks::ids(ids, table.dim(0));
    checks.shape(out, {n, D}, op, "out");
    const HostInts dev_ids(*this, ids);
    if (table.dtype() == DType::BF16)  // frozen weights held in bf16: widened as copied
      kernels::embedding_forward(n, D, dev_ids.get(),
                                 static_cast<const std::uint16_t*>(table.device_raw(memory_)),
                                 f32(out, op, "out"), stream());
    else
      kernels::embedding_forward(n, D, dev_ids.get(), f32(table, op, "table"), f32(out, op, "out"),
                                 stream());
    launch_check(op);
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override {
    Timer timer(*this, "embedding");
    const char* op = "embedding_backward";
    const std::int64_t n = ids.numel(), D = dtable.dim(1);
    OpChecks::ids(ids, dtable.dim(0));
    checks.shape(dout, {n, D}, op, "dout");
    const HostInts dev_ids(*this, ids);
    kernels::embedding_backward(n, D, dev_ids.get(), f32(dout, op, "dout"),
                                f32(dtable, op, "dtable"), stream());
    launch_check(op);
  }

  double cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                               std::int64_t* n_counted) override {
    Timer timer(*this, "cross_entropy");
    const char* op = "cross_entropy_forward";
    const std::int64_t rows = targets.numel(), V = logits.dim(-1);
    checks.require(logits.numel() == rows * V, op, "logits rows != targets");
    OpChecks::targets(targets, V);
    const HostInts dev_targets(*this, targets);
    // One scratch block: the double sum, the int64 count, then the kernel's workspace.
    DeviceScratch out(*memory_, 16 + std::size_t(kernels::cross_entropy_workspace_bytes(rows)));
    kernels::cross_entropy_forward(rows, V, f32(logits, op, "logits"), dev_targets.get(),
                                   out.as<double>(), out.as<std::int64_t>() + 1,
                                   out.as<char>() + 16, stream());
    launch_check(op);
    struct {
      double loss;
      std::int64_t count;
    } host{};
    memory_->copy_to_host(&host, out.as<char>(), 16);
    *n_counted = host.count;
    return host.loss;
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, double scale,
                              Tensor& dlogits) override {
    Timer timer(*this, "cross_entropy");
    const char* op = "cross_entropy_backward";
    const std::int64_t rows = targets.numel(), V = logits.dim(-1);
    checks.require(logits.numel() == rows * V && dlogits.shape() == logits.shape(), op, "shapes");
    OpChecks::targets(targets, V);
    const HostInts dev_targets(*this, targets);
    kernels::cross_entropy_backward(rows, V, f32(logits, op, "logits"), dev_targets.get(),
                                    float(scale), f32(dlogits, op, "dlogits"), stream());
    launch_check(op);
  }

  void row_norms(const Tensor& a, Tensor& norm) override {
    Timer timer(*this, "elementwise");
    const char* op = "row_norms";
    const auto [rows, cols] = checks.rows_of(op, a, {}, {&norm});
    kernels::row_norms(rows, cols, f32(a, op, "a"), f32(norm, op, "norm"), stream());
    launch_check(op);
  }
  void scale_rows(const Tensor& f, const Tensor& a, const Tensor& sub, Tensor& out) override {
    Timer timer(*this, "elementwise");
    const char* op = "scale_rows";
    const auto [rows, cols] = checks.rows_of(op, a, {&sub, &out}, {&f});
    kernels::scale_rows(rows, cols, f32(f, op, "f"), f32(a, op, "a"), f32_or_null(sub, op, "sub"),
                        f32(out, op, "out"), stream());
    launch_check(op);
  }
  void row_dots_div_add(const Tensor& a, const Tensor& b, const Tensor& d, Tensor& out) override {
    Timer timer(*this, "elementwise");
    const char* op = "row_dots_div_add";
    const auto [rows, cols] = checks.rows_of(op, a, {&b}, {&d, &out});
    kernels::row_dots_div_add(rows, cols, f32(a, op, "a"), f32(b, op, "b"), f32(d, op, "d"),
                              f32(out, op, "out"), stream());
    launch_check(op);
  }
  void div(const Tensor& a, const Tensor& b, Tensor& out) override {
    binary("div", a, b, out, SSMTUNE_KERNEL_FN(div));
  }

  double sum_squares(const Tensor& x) override {
    Timer timer(*this, "optimizer");
    const std::int64_t n = x.numel();
    DeviceScratch out(*memory_, 8 + std::size_t(kernels::sum_squares_workspace_bytes(n)));
    kernels::sum_squares(n, f32(x, "sum_squares", "x"), out.as<double>(), out.as<char>() + 8,
                         stream());
    launch_check("sum_squares");
    double host = 0;
    memory_->copy_to_host(&host, out.as<char>(), sizeof host);
    return host;
  }

  double sum_squares_of(const std::vector<Tensor>& xs) override {
    Timer timer(*this, "optimizer");
    std::int64_t workspace = 0;
    for (const Tensor& x : xs)
      workspace = std::max(workspace, kernels::sum_squares_workspace_bytes(x.numel()));
    // One double per tensor, then the workspace the launches share (they run in stream order).
    const std::size_t sums_bytes = 8 * xs.size();
    DeviceScratch out(*memory_, sums_bytes + std::size_t(workspace));
    for (std::size_t i = 0; i < xs.size(); ++i) {
      kernels::sum_squares(xs[i].numel(), f32(xs[i], "sum_squares", "x"), out.as<double>() + i,
                           out.as<char>() + sums_bytes, stream());
      launch_check("sum_squares");
    }
    std::vector<double> host(xs.size());
    if (!xs.empty()) memory_->copy_to_host(host.data(), out.as<char>(), sums_bytes);
    double sum = 0;
    for (const double v : host) sum += v;
    return sum;
  }

  void scale(Tensor& x, double alpha) override {
    Timer timer(*this, "elementwise");
    kernels::scale(x.numel(), float(alpha), f32(x, "scale", "x"), stream());
    launch_check("scale");
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override {
    binary("mul", a, b, out, SSMTUNE_KERNEL_FN(mul));
  }

  void dropout_mask(std::uint64_t key, double p, Tensor& keep_scale) override {
    Timer timer(*this, "elementwise");
    checks.require(p >= 0 && p < 1, "dropout_mask", "p in [0, 1)");
    kernels::dropout_mask(keep_scale.numel(), key, dropout_threshold(p), float(1.0 / (1.0 - p)),
                          f32(keep_scale, "dropout_mask", "keep_scale"), stream());
    launch_check("dropout_mask");
  }

  void index_add(const Tensor& values, const Tensor& index, Tensor& dst) override {
    Timer timer(*this, "elementwise");
    checks.index("index_add", values, index, dst);
    const HostInts dev_index(*this, index);
    kernels::index_add(index.numel(), f32(values, "index_add", "values"), dev_index.get(),
                       f32(dst, "index_add", "dst"), stream());
    launch_check("index_add");
  }
  void index_gather(const Tensor& src, const Tensor& index, Tensor& out) override {
    Timer timer(*this, "elementwise");
    checks.index("index_gather", out, index, src);
    const HostInts dev_index(*this, index);
    kernels::index_gather(index.numel(), f32(src, "index_gather", "src"), dev_index.get(),
                          f32(out, "index_gather", "out"), stream());
    launch_check("index_gather");
  }

  void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                    const AdamWStep& s) override {
    Timer timer(*this, "optimizer");
    const char* op = "adamw_update";
    checks.adamw(param, grad, m, v, s);
    const kernels::AdamWScalars k =
        kernels::adamw_scalars(s.lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.step);
    kernels::adamw_update(param.numel(), f32(param, op, "param"), f32(grad, op, "grad"),
                          f32(m, op, "m"), f32(v, op, "v"), k, stream());
    launch_check(op);
  }

 private:
  // The op's time (waiting for the GPU first when a profile is attached, so the time is the
  // op's own and not its launch's), and the per-op wait of SSMTUNE_CUDA_SYNC.
  class Timer {
   public:
    Timer(CudaBackend& be, const char* op, double flops = 0)
        : be_(be), op_(op), drained_(be.profile_ && be.wait(op)), timer_(be.profile_, op, flops) {}
    ~Timer() noexcept(false) {
      if (be_.profile_ || sync_every_op()) {
        if (std::uncaught_exceptions() == 0) be_.wait(op_);
      }
    }
    Timer(const Timer&) = delete;
    Timer& operator=(const Timer&) = delete;

   private:
    CudaBackend& be_;
    const char* op_;
    bool drained_;  // earlier work finished before the clock starts
    OpTimer timer_;
  };

  // rmsnorm_backward and rmsnorm_backward_add: dx overwritten or accumulated.
  void rmsnorm_backward_into(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                             Tensor& dx, Tensor& dw, bool accumulate_dx) {
    Timer timer(*this, "rmsnorm");
    const char* op = accumulate_dx ? "rmsnorm_backward_add" : "rmsnorm_backward";
    const auto [rows, D, G] = checks.rmsnorm_backward(dy, x, w, rstd, dx, dw);
    DeviceScratch ws(*memory_, floats(kernels::rmsnorm_backward_workspace_floats(rows, D)));
    kernels::rmsnorm_backward(rows, D, f32(dy, op, "dy"), f32(x, op, "x"), f32(w, op, "w"),
                              f32(rstd, op, "rstd"), f32(dx, op, "dx"), f32(dw, op, "dw"),
                              ws.as<float>(), stream(), 0, accumulate_dx, G);
    launch_check(op);
  }

  // conv1d_forward and conv1d_silu_forward: u (silu(c)) written when defined.
  void conv1d_into(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& c,
                   const Tensor& u) {
    Timer timer(*this, "conv1d");
    const char* op = "conv1d_forward";
    const auto [B, L, E, K] = checks.conv1d_forward(x, w, bias, c);
    checks.require(K >= 1 && K <= kernels::kConv1dMaxWidth, op,
                   "kernel width " + std::to_string(K) + " outside [1, " +
                       std::to_string(kernels::kConv1dMaxWidth) + "]");
    kernels::conv1d_forward(B, L, E, int(K), f32(x, op, "x"), f32(w, op, "w"),
                            f32_or_null(bias, op, "bias"), f32(c, op, "c"), f32_or_null(u, op, "u"),
                            stream());
    launch_check(op);
  }
  // A host I64 tensor (ids, labels, indices) copied to the GPU for one op.
  class HostInts {
   public:
    HostInts(CudaBackend& be, const Tensor& t)
        : scratch_(*be.memory_, std::size_t(t.numel()) * sizeof(std::int64_t)) {
      checks.require(t.dtype() == DType::I64, "copy of ids", "expected I64");
      be.memory_->upload(scratch_.as<void>(), t.raw(), std::size_t(t.numel()) * 8);
    }
    const std::int64_t* get() const { return scratch_.as<std::int64_t>(); }

   private:
    DeviceScratch scratch_;
  };

  cudaStream_t stream() const { return memory_->stream(); }
  bool wait(const char* op) {
    cuda_check(cudaStreamSynchronize(stream()), op);
    return true;
  }
  static std::size_t floats(std::int64_t n) { return std::size_t(n) * sizeof(float); }

  float* f32(const Tensor& t, const char* op, const char* name) {
    checks.require(t.defined(), op, std::string(name) + " is missing");
    checks.require(t.dtype() == DType::F32, op,
                   std::string(name) + " is " + std::string(dtype_name(t.dtype())) +
                       "; the CUDA backend computes in F32");
    return static_cast<float*>(t.device_raw(memory_));
  }
  float* f32_or_null(const Tensor& t, const char* op, const char* name) {
    return t.defined() ? f32(t, op, name) : nullptr;
  }
  // run(P{}) with P the pointer type of the scan's inputs, set by u's dtype.
  template <class F>
  static void with_scan_input_type(const ScanInputs& in, F&& run) {
    if (in.u.dtype() == DType::BF16)
      run(static_cast<const kernels::Bf16*>(nullptr));
    else
      run(static_cast<const float*>(nullptr));
  }
  // A scan input as P (const float* or const kernels::Bf16*): its dtype must be P's.
  template <class P>
  P scan_input(const Tensor& t, const char* op, const char* name) {
    if constexpr (std::is_same_v<P, const float*>) {
      return f32(t, op, name);
    } else {
      checks.require(t.defined() && t.dtype() == DType::BF16, op,
                     std::string(name) + " must be BF16 like u (u, delta, Bm, Cm share a type)");
      return static_cast<P>(t.device_raw(memory_));
    }
  }
  // The shared attention checks, then the kernels' own limit on the head dim.
  static kernels::AttentionShape attention_shape(const char* op, const Tensor& q, const Tensor& k,
                                                 const Tensor& v, const Tensor& key_mask) {
    const cpu::AttentionDims d = checks.attention(op, q, k, v, key_mask);
    checks.require(d.hd <= kernels::kAttentionMaxHeadDim, op,
                   "head dim " + std::to_string(d.hd) + " over the kernels' " +
                       std::to_string(kernels::kAttentionMaxHeadDim));
    return {d.B, d.Lq, d.Lk, d.H, d.KV, d.hd};
  }
  // On top of the shared SSD checks (which give every input x's type): F32, named before any
  // argument is converted, and the kernels' grid limit (B and H are grid dimensions).
  static kernels::SsdShape ssd_shape(const char* op, const cpu::SsdDims& d, const Tensor& x) {
    checks.require(x.dtype() == DType::F32, op,
                   "x is " + std::string(dtype_name(x.dtype())) +
                       "; the CUDA backend computes in F32");
    checks.require(d.batch <= 65535 && d.n_heads <= 65535, op,
                   "batch and heads must be at most 65535 (grid dimensions)");
    return {d.batch, d.seqlen, d.n_heads, d.head_dim, d.n_groups, d.d_state, d.chunk};
  }
  // The shared router checks, then the kernels' own limit on the number of experts.
  static kernels::MoeRouterShape router_shape(const char* op, const cpu::MoeRouterDims& d) {
    checks.require(d.X <= kernels::kMoeMaxExperts, op,
                   std::to_string(d.X) + " experts, over the kernels' " +
                       std::to_string(kernels::kMoeMaxExperts));
    return {d.rows, d.X, d.k};
  }
  // The shared slot checks; combine's grid has one block per token row.
  static kernels::MoeSlotShape slot_shape(const char* op, const Tensor& slot, const Tensor& tokens,
                                          const char* tokens_name, const Tensor& grouped,
                                          const char* grouped_name) {
    const cpu::MoeSlotDims d =
        checks.moe_slot(op, slot, tokens, tokens_name, grouped, grouped_name);
    checks.require(d.rows < INT_MAX, op, "2^31 token rows or more");
    return {d.rows, d.k, d.D};
  }
  // slot's entries are checked on the host while it lives there, before its first op moves it;
  // one already on the GPU is not read back (that would wait for the GPU in every op): the
  // kernels then skip an entry outside [0, n) or read it as NaN (kernels/moe.cuh).
  const std::int64_t* slot_ptr(const char* op, const Tensor& slot) {
    if (slot.device() == Device::CPU) checks.moe_slot_values(op, slot);
    return i64(slot);
  }
  // The device pointer of an I64 tensor the shared checks have vetted.
  std::int64_t* i64(const Tensor& t) { return static_cast<std::int64_t*>(t.device_raw(memory_)); }
  const std::int64_t* mask_ptr(const Tensor& key_mask) {
    return key_mask.defined() ? static_cast<const std::int64_t*>(key_mask.device_raw(memory_))
                              : nullptr;
  }
  static kernels::ScanShape shape_of(const cpu::ScanDims& d) {
    return {d.batch, d.seqlen, d.d_inner, d.d_state, d.chunk};
  }

  template <class F>
  void unary(const char* op, const Tensor& x, Tensor& y, F kernel) {
    Timer timer(*this, "elementwise");
    checks.require(x.shape() == y.shape(), op, "shapes differ");
    kernel(x.numel(), f32(x, op, "x"), f32(y, op, "y"), stream());
    launch_check(op);
  }
  template <class F>
  void binary(const char* op, const Tensor& a, const Tensor& b, Tensor& out, F kernel) {
    Timer timer(*this, "elementwise");
    checks.require(a.shape() == b.shape() && a.shape() == out.shape(), op, "shapes differ");
    kernel(a.numel(), f32(a, op, "a"), f32(b, op, "b"), f32(out, op, "out"), stream());
    launch_check(op);
  }

  // wide: (rows, S), narrow: (rows, n); copies narrow <-> wide[:, col0 : col0+n]
  void copy_columns(const char* op, const Tensor& wide, std::int64_t col0, const Tensor& narrow,
                    bool to_wide) {
    Timer timer(*this, "elementwise");
    checks.columns(op, wide, col0, narrow);
    const int es = int(dtype_size(wide.dtype()));
    checks.require(es == 4 || es == 8, op, "4- or 8-byte elements");
    kernels::copy_columns(wide.dim(0), wide.dim(1), col0, narrow.dim(1), to_wide,
                          wide.device_raw(memory_), narrow.device_raw(memory_), es, stream());
    launch_check(op);
  }

  CudaOptions options_;
  std::shared_ptr<CudaMemory> memory_;
  cublasHandle_t blas_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, CudaOptions options) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("--device cuda: no usable GPU: ") + cudaGetErrorString(err));
  }
  if (count == 0) throw Error("--device cuda: no usable GPU: the CUDA runtime reports 0 devices");
  if (device < 0 || device >= count)
    throw Error("--device cuda: GPU " + std::to_string(device) + " does not exist (" +
                std::to_string(count) + " found)");
  return std::make_unique<CudaBackend>(device, options);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune
