// The ops at the two ends of the LM on the GPU, float32: token embedding and token
// cross-entropy fused with the softmax over the vocabulary. CPU twins: the functions of the
// same names in ssmtune::cpu (lib/backend/cpu/token_ops_cpu.cpp). Device pointers (ids and
// targets too); work queued on `stream`. Ids must already be checked to lie in [0, V) (the
// backend checks them on the host, where they come from).
#pragma once

#include <cstdint>

#include "cuda_compat.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

// out[t] = table[ids[t]].   ids: (n)   table: (V, D)   out: (n, D)
void embedding_forward(std::int64_t n, std::int64_t D, const std::int64_t* ids,
                       const float* table, float* out, cudaStream_t stream);
// The same from a table held in bf16 (bits), each value widened as it is copied (exact).
void embedding_forward(std::int64_t n, std::int64_t D, const std::int64_t* ids,
                       const std::uint16_t* table_bf16, float* out, cudaStream_t stream);
// dtable[ids[t]] += dout[t], tokens added in token order (repeated ids: the twin's order,
// deterministic, no atomics).   dout: (n, D)   dtable: (V, D)
void embedding_backward(std::int64_t n, std::int64_t D, const std::int64_t* ids,
                        const float* dout, float* dtable, cudaStream_t stream);

// Bytes of workspace cross_entropy_forward needs for `rows` rows.
std::int64_t cross_entropy_workspace_bytes(std::int64_t rows);
// logits: (rows, V)   targets: (rows), -100 = ignored.
// loss_sum: one double on the device = sum over counted rows of logsumexp(row) - row[target],
// the rows added in row order; n_counted: one int64 on the device.
void cross_entropy_forward(std::int64_t rows, std::int64_t V, const float* logits,
                           const std::int64_t* targets, double* loss_sum,
                           std::int64_t* n_counted, void* workspace, cudaStream_t stream);
// dlogits = scale (softmax(logits) - onehot(target)), zero on ignored rows. dlogits may be
// logits itself (in place): the gradient is never materialised beside the logits.
void cross_entropy_backward(std::int64_t rows, std::int64_t V, const float* logits,
                            const std::int64_t* targets, float scale, float* dlogits,
                            cudaStream_t stream);

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
