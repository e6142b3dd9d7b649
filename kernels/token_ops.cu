// Token embedding and token cross-entropy (token_ops.cuh; docs/cuda.md "Token and optimizer
// kernels"). Embedding forward: a grid-stride copy, D fastest (coalesced). Embedding backward:
// one thread per column, tokens in order: no float atomics, the twin's additions in the twin's
// order. Cross-entropy: one block per row; the block max, then the block sum of exp in double;
// the forward's per-row losses go to a workspace that one warp then adds in row order.
#include "bf16.cuh"
#include "block_reduce.cuh"
#include "grid_stride.cuh"
#include "launch.cuh"
#include "token_ops.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
// Embedding backward: 64 columns a block, so even d_model = 768 spreads over 12 SMs.
constexpr int kColumnThreads = 64;
// Cross-entropy rows: at least 8 logits a thread, at most 1024 threads (V = 50280: 1024).
constexpr std::int64_t kLogitsPerThread = 8;
constexpr int kMaxWarps = 32;

int row_threads(std::int64_t V) {
  const std::int64_t warps = (V + 32 * kLogitsPerThread - 1) / (32 * kLogitsPerThread);
  return 32 * int(warps < 1 ? 1 : warps > kMaxWarps ? kMaxWarps : warps);
}

// log(sum_v exp(x[v])) of one row of V logits, shifted by the row max, on every thread of the
// block: the twin's log_sum_exp, with expf for its fast_exp (both within 2 ulp of exp). Each
// exp is computed in float, as the twin does, and summed in double: a float sum of 50280 terms
// would lose up to ~V u relative; the double adds cost nothing next to the row's loads on
// sm_80 / sm_90 (FP64 at half the FP32 rate). Ends with a barrier after every thread's last
// read of x.   x: (V)   max_scratch, sum_scratch: blockDim.x / 32 values of shared memory
__device__ __forceinline__ double row_log_sum_exp(std::int64_t V, const float* x,
                                                  float* max_scratch, double* sum_scratch) {
  float mx = -INFINITY;
  for (std::int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
  mx = block_reduce(mx, max_scratch, -INFINITY, MaxOp{});
  double s = 0.0;
  for (std::int64_t v = threadIdx.x; v < V; v += blockDim.x) s += double(expf(x[v] - mx));
  s = block_reduce(s, sum_scratch, 0.0, SumOp{});
  return double(mx) + log(s);
}
}  // namespace

__device__ __forceinline__ float table_value(float v) { return v; }
__device__ __forceinline__ float table_value(std::uint16_t bf16) {
  return bf16_bits_to_float(bf16);
}

// Twin of cpu::embedding_forward.   ids: (n)   table: (V, D) float or bf16 bits   out: (n, D)
template <class TTable>
__global__ void embedding_forward_kernel(std::int64_t n, std::int64_t D,
                                         const std::int64_t* __restrict__ ids,
                                         const TTable* __restrict__ table,
                                         float* __restrict__ out) {
  SSMTUNE_GRID_STRIDE(i, n * D) {
    const std::int64_t t = i / D, j = i - t * D;
    out[i] = table_value(table[ids[t] * D + j]);
  }
}

// Twin of cpu::embedding_backward: thread j adds dout[t, j] into dtable[ids[t], j] for
// t = 0, 1, ... in order, so a repeated id's rows are added in token order, exactly the twin's
// additions (the same bits). Each token is one coalesced row read and one row read-modify-write
// per block.   dout: (n, D)   dtable: (V, D)
__global__ void embedding_backward_kernel(std::int64_t n, std::int64_t D,
                                          const std::int64_t* __restrict__ ids,
                                          const float* __restrict__ dout,
                                          float* __restrict__ dtable) {
  const std::int64_t j = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= D) return;
  for (std::int64_t t = 0; t < n; ++t) dtable[ids[t] * D + j] += dout[t * D + j];
}

// Pass 1 of the twin cpu::cross_entropy_forward: row_loss[r] = logsumexp(row r) - row[target],
// 0 on an ignored row (target < 0, the block's uniform early exit).   logits: (rows, V)
// targets, row_loss: (rows)   Block (32 k) per row.
__global__ void cross_entropy_row_loss_kernel(std::int64_t V, const float* __restrict__ logits,
                                              const std::int64_t* __restrict__ targets,
                                              double* __restrict__ row_loss) {
  __shared__ float max_scratch[kMaxWarps];
  __shared__ double sum_scratch[kMaxWarps];
  const std::int64_t row = blockIdx.x, target = targets[row];
  if (target < 0) {
    if (threadIdx.x == 0) row_loss[row] = 0.0;
    return;
  }
  const float* x = logits + row * V;
  const double lse = row_log_sum_exp(V, x, max_scratch, sum_scratch);
  if (threadIdx.x == 0) row_loss[row] = lse - double(x[target]);
}

// Pass 2: one warp adds the row losses in row order (an ignored row's 0.0 changes no bit) and
// counts the rows with a target.   targets, row_loss: (rows)
__global__ void cross_entropy_total_kernel(std::int64_t rows,
                                           const std::int64_t* __restrict__ targets,
                                           const double* __restrict__ row_loss,
                                           double* __restrict__ loss_sum,
                                           std::int64_t* __restrict__ n_counted) {
  const double total = warp_ordered_sum(rows, row_loss);
  std::int64_t count = 0;
  for (std::int64_t base = 0; base < rows; base += 32) {
    const std::int64_t r = base + (threadIdx.x & 31u);
    count += __popc(__ballot_sync(0xffffffffu, r < rows && targets[r] >= 0));
  }
  if (threadIdx.x == 0) {
    *loss_sum = total;
    *n_counted = count;
  }
}

// Twin of cpu::cross_entropy_backward: dx = scale exp(x - lse), then scale subtracted at the
// target, in the twin's float operations. logits and dlogits may be the same memory (no
// __restrict__): every read of the row for the max and the sum is finished at the barrier
// that ends row_log_sum_exp, and afterwards each thread reads x[v] before writing dx[v] of the
// same v.   logits, dlogits: (rows, V)   targets: (rows)   Block (32 k) per row.
__global__ void cross_entropy_backward_kernel(std::int64_t V, const float* logits,
                                              const std::int64_t* __restrict__ targets, float scale,
                                              float* dlogits) {
  __shared__ float max_scratch[kMaxWarps];
  __shared__ double sum_scratch[kMaxWarps];
  const std::int64_t row = blockIdx.x, target = targets[row];
  const float* x = logits + row * V;
  float* dx = dlogits + row * V;
  if (target < 0) {
    for (std::int64_t v = threadIdx.x; v < V; v += blockDim.x) dx[v] = 0.0f;
    return;
  }
  const float lse = float(row_log_sum_exp(V, x, max_scratch, sum_scratch));
  for (std::int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    float g = scale * expf(x[v] - lse);
    if (v == target) g -= scale;
    dx[v] = g;
  }
}

void embedding_forward(std::int64_t n, std::int64_t D, const std::int64_t* ids, const float* table,
                       float* out, cudaStream_t stream) {
  if (n <= 0 || D <= 0) return;
  SSMTUNE_LAUNCH(embedding_forward_kernel<float>, grid_stride_blocks(n * D),
                 dim3(kGridStrideThreads), 0, stream, n, D, ids, table, out);
}
void embedding_forward(std::int64_t n, std::int64_t D, const std::int64_t* ids,
                       const std::uint16_t* table_bf16, float* out, cudaStream_t stream) {
  if (n <= 0 || D <= 0) return;
  SSMTUNE_LAUNCH(embedding_forward_kernel<std::uint16_t>, grid_stride_blocks(n * D),
                 dim3(kGridStrideThreads), 0, stream, n, D, ids, table_bf16, out);
}

void embedding_backward(std::int64_t n, std::int64_t D, const std::int64_t* ids, const float* dout,
                        float* dtable, cudaStream_t stream) {
  if (n <= 0 || D <= 0) return;
  const unsigned blocks = unsigned((D + kColumnThreads - 1) / kColumnThreads);
  SSMTUNE_LAUNCH(embedding_backward_kernel, dim3(blocks), dim3(kColumnThreads), 0, stream, n, D,
                 ids, dout, dtable);
}

std::int64_t cross_entropy_workspace_bytes(std::int64_t rows) {
  return (rows > 0 ? rows : 0) * std::int64_t(sizeof(double));
}

void cross_entropy_forward(std::int64_t rows, std::int64_t V, const float* logits,
                           const std::int64_t* targets, double* loss_sum, std::int64_t* n_counted,
                           void* workspace, cudaStream_t stream) {
  if (rows < 0 || V <= 0) return;
  double* row_loss = static_cast<double*>(workspace);
  if (rows > 0)
    SSMTUNE_LAUNCH(cross_entropy_row_loss_kernel, dim3(unsigned(rows)), dim3(row_threads(V)), 0,
                   stream, V, logits, targets, row_loss);
  // Also for rows == 0, so that the outputs read 0, as the twin's.
  SSMTUNE_LAUNCH(cross_entropy_total_kernel, dim3(1), dim3(32), 0, stream, rows, targets, row_loss,
                 loss_sum, n_counted);
}

void cross_entropy_backward(std::int64_t rows, std::int64_t V, const float* logits,
                            const std::int64_t* targets, float scale, float* dlogits,
                            cudaStream_t stream) {
  if (rows <= 0 || V <= 0) return;
  SSMTUNE_LAUNCH(cross_entropy_backward_kernel, dim3(unsigned(rows)), dim3(row_threads(V)), 0,
                 stream, V, logits, targets, scale, dlogits);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
