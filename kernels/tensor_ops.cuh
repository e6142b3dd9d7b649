// The small tensor ops of the backend interface on the GPU, float32: residual adds, scaling,
// biases, the parallel adapter's ReLU, A = -exp(A_log), column splits of the fused in_proj
// output, and SDT's masked entries. CPU twins: the loops of the same names in
// lib/backend/cpu/cpu_backend.cpp. Device pointers; work queued on `stream`; memory-bound, so
// one grid-stride pass each.
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

void add(std::int64_t n, const float* x, float* y, cudaStream_t stream);  // y += x
void scale(std::int64_t n, float alpha, float* x, cudaStream_t stream);   // x *= alpha
void mul(std::int64_t n, const float* a, const float* b, float* out, cudaStream_t stream);
void relu_forward(std::int64_t n, const float* x, float* y, cudaStream_t stream);
// keep_scale[i] = keep where counter_rng.h's stream `key` keeps element i (threshold:
// dropout_threshold(p)), else 0. CPU twin: CpuBackend::dropout_mask.
void dropout_mask(std::int64_t n, std::uint64_t key, std::uint64_t threshold, float keep,
                  float* keep_scale, cudaStream_t stream);
void relu_backward(std::int64_t n, const float* dy, const float* x, float* dx, cudaStream_t stream);
// y = min(max(x, lo), hi);  dx = dy where lo <= x <= hi, else 0
void clamp_forward(std::int64_t n, float lo, float hi, const float* x, float* y,
                   cudaStream_t stream);
void clamp_backward(std::int64_t n, float lo, float hi, const float* dy, const float* x, float* dx,
                    cudaStream_t stream);
// A = -exp(A_log);  dA_log += dA A
void ssm_A_forward(std::int64_t n, const float* A_log, float* A, cudaStream_t stream);
void ssm_A_backward(std::int64_t n, const float* dA, const float* A, float* dA_log,
                    cudaStream_t stream);

// y: (rows, cols) += bias: (cols)
void add_bias(std::int64_t rows, std::int64_t cols, const float* bias, float* y,
              cudaStream_t stream);
// Floats of workspace bias_backward needs: one partial row per chunk of kBiasChunkRows rows.
constexpr std::int64_t kBiasChunkRows = 64;
std::int64_t bias_backward_workspace_floats(std::int64_t rows, std::int64_t cols);
// dbias: (cols) += column sums of dy: (rows, cols); rows summed in chunks of kBiasChunkRows
// in row order, then the chunks in order (deterministic, no atomics).
void bias_backward(std::int64_t rows, std::int64_t cols, const float* dy, float* dbias,
                   float* workspace, cudaStream_t stream);

// wide: (rows, S), narrow: (rows, n):  narrow = wide[:, col0 : col0+n] (to_wide false) or
// wide[:, col0 : col0+n] = narrow (to_wide true). elem_bytes: 4 or 8.
void copy_columns(std::int64_t rows, std::int64_t S, std::int64_t col0, std::int64_t n,
                  bool to_wide, void* wide, void* narrow, int elem_bytes, cudaStream_t stream);

// y = bf16(x), round to nearest even (NaN stays a quiet NaN): core/dtype.h's f32_to_bf16, for
// the bf16 inputs of cuBLAS products.
void to_bf16(std::int64_t n, const float* x, std::uint16_t* y, cudaStream_t stream);
// y = float(x), exact (the bf16 bits become a float's upper half): core/dtype.h's bf16_to_f32,
// for frozen base weights held in bf16.
void from_bf16(std::int64_t n, const std::uint16_t* x, float* y, cudaStream_t stream);

// index: (k) distinct flat indices (checked on the host).  dst[index[i]] += values[i]
void index_add(std::int64_t k, const float* values, const std::int64_t* index, float* dst,
               cudaStream_t stream);
// out[i] = src[index[i]]
void index_gather(std::int64_t k, const float* src, const std::int64_t* index, float* out,
                  cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
