// Causal grouped-query attention (attention.cuh), forward and backward; design in docs/cuda.md
// "Attention kernels".
//
// Mapping. A block of kWarps = 4 warps owns a tile of 32 rows (queries in forward and dq, keys
// in dk/dv) of one (batch, head); each warp owns 8 of those rows. The other side (keys, or
// queries for dk/dv) runs in tiles of 32 staged through shared memory, one per lane: lane c
// computes the dot products of its column with the warp's 8 rows (the rows read as shared-memory
// broadcasts, the column from a tile with an odd row stride, so the 32 lanes hit 32 banks). The
// products with the other operand (P v, dS k, P^T dout, dS^T q) then switch roles: the warp's
// probabilities go to shared memory, and lane l accumulates dims l, l + 32, l + 64, l + 96 of
// each of its 8 rows in registers (hd <= 128).
//
// Forward keeps per row the running max m (warp-uniform: a butterfly max over the lanes) and per
// lane a partial sum of exp(score - m), both rescaled by exp(m_old - m_new) when the max grows;
// one butterfly sum at the end gives l, then out = acc / l, lse = m + log l. Backward recomputes
// P = exp(score - lse) per tile (FlashAttention-2): Drow = rowsum(dout * out) by a small kernel
// into the workspace; dq per query tile, the key tiles in order; dk, dv per key tile, over the
// group's query heads, then the query tiles in order. The Lq queries are the last Lq of the Lk
// key positions (off = Lk - Lq keys come before query 0, 0 unless decoding after cached keys),
// so every causal bound is shifted by off: query t sees keys j <= t + off. No float atomics
// anywhere: each output element is summed by one thread in a fixed order, so two runs give the
// same bits.
#include <cmath>

#include "attention.cuh"
#include "block_reduce.cuh"
#include "launch.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 8;                 // rows per warp
constexpr int kTile = kWarps * kRows;    // rows per block = columns per tile = 32
constexpr int kDims = 4;                 // accumulator dims per lane: 32 * 4 = kAttentionMaxHeadDim
constexpr int kMaxStaticShared = 48 * 1024;
static_assert(kTile == 32, "one column of a tile per lane");
static_assert(32 * kDims == kAttentionMaxHeadDim, "lanes x dims per lane cover the head dim");

// Row stride of a tile read one row per lane: odd, so the lanes' rows start in 32 banks.
__host__ __device__ __forceinline__ int odd(std::int64_t hd) { return int(hd) | 1; }

// Offset of row (b, t, head) in (B, len, heads, hd): len = Lq for q, dout, out, dq and Lk for
// k, v, dk, dv.
__device__ __forceinline__ std::int64_t row_at(const AttentionShape& s, std::int64_t len,
                                               std::int64_t heads, std::int64_t b, std::int64_t t,
                                               std::int64_t head) {
  return ((b * len + t) * heads + head) * s.hd;
}

// Copies rows t0 .. t0 + kTile - 1 of one head of x (B, len, heads, hd) into a (kTile, stride)
// shared tile, zeros past len. Each row is hd contiguous floats: coalesced.
__device__ __forceinline__ void stage(const AttentionShape& s, std::int64_t len,
                                      std::int64_t heads, std::int64_t b, std::int64_t t0,
                                      std::int64_t head, const float* __restrict__ x, float* tile,
                                      int stride) {
  const int hd = int(s.hd);
  for (int i = threadIdx.x; i < kTile * hd; i += kThreads) {
    const int r = i / hd, e = i % hd;
    const std::int64_t t = t0 + r;
    tile[r * stride + e] = t < len ? x[row_at(s, len, heads, b, t, head) + e] : 0.0f;
  }
}

__device__ __forceinline__ bool key_kept(const AttentionShape& s, const std::int64_t* key_mask,
                                         std::int64_t b, std::int64_t j) {
  return j < s.Lk && (!key_mask || key_mask[b * s.Lk + j] != 0);
}

// P = exp(score - lse): 0 for a disallowed pair or a row with no allowed key (lse = -inf).
__device__ __forceinline__ float prob(bool allowed, float score, float lse) {
  return allowed && lse != -INFINITY ? expf(score - lse) : 0.0f;
}

template <class Kernel>
void allow_shared(Kernel kernel, std::int64_t bytes) {
  if (bytes > kMaxStaticShared)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

// Shared-memory layouts (floats), the same on host and device.
// Forward: q (kTile, hd) read by broadcast, k (kTile, odd) one row per lane, v (kTile, hd) read
// by dims, p (kWarps, kRows, kTile) the warps' probabilities.
struct ForwardSmem {
  float *q, *k, *v, *p;
  __host__ __device__ static std::int64_t floats(std::int64_t hd) {
    return kTile * (2 * hd + odd(hd)) + kWarps * kRows * kTile;
  }
  __device__ ForwardSmem(float* m, std::int64_t hd) {
    q = m, k = q + kTile * hd, v = k + kTile * odd(hd), p = v + kTile * hd;
  }
};
// dq: q, dout (kTile, hd) by broadcast; k, v (kTile, odd) one row per lane (k also by dims);
// ds (kWarps, kRows, kTile).
struct DqSmem {
  float *q, *dout, *k, *v, *ds;
  __host__ __device__ static std::int64_t floats(std::int64_t hd) {
    return kTile * (2 * hd + 2 * odd(hd)) + kWarps * kRows * kTile;
  }
  __device__ DqSmem(float* m, std::int64_t hd) {
    q = m, dout = q + kTile * hd, k = dout + kTile * hd, v = k + kTile * odd(hd);
    ds = v + kTile * odd(hd);
  }
};
// dk/dv: k, v (kTile, hd) by broadcast; q, dout (kTile, odd) one row per lane (also by dims);
// lse, drow (kTile) of the query tile; p, ds (kWarps, kRows, kTile).
struct DkvSmem {
  float *k, *v, *q, *dout, *lse, *drow, *p, *ds;
  __host__ __device__ static std::int64_t floats(std::int64_t hd) {
    return kTile * (2 * hd + 2 * odd(hd)) + 2 * kTile + 2 * kWarps * kRows * kTile;
  }
  __device__ DkvSmem(float* m, std::int64_t hd) {
    k = m, v = k + kTile * hd, q = v + kTile * hd, dout = q + kTile * odd(hd);
    lse = dout + kTile * odd(hd), drow = lse + kTile, p = drow + kTile;
    ds = p + kWarps * kRows * kTile;
  }
};

}  // namespace

// Twin of cpu::attention_forward. Grid (ceil(Lq / 32), H, B), kThreads threads; warp w owns
// queries t0 + 8w .. t0 + 8w + 7, lane c the key j0 + c of each key tile.
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(AttentionShape s, const float* __restrict__ q,
                             const float* __restrict__ k, const float* __restrict__ v,
                             const std::int64_t* __restrict__ key_mask, float scale,
                             float* __restrict__ out, float* __restrict__ lse) {
  SSMTUNE_DYNAMIC_SHARED(float, smem);
  const ForwardSmem m(smem, s.hd);
  const int hd = int(s.hd), ks = odd(s.hd);
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const std::int64_t t0 = std::int64_t(blockIdx.x) * kTile, h = blockIdx.y, b = blockIdx.z;
  const std::int64_t g = h / (s.H / s.KV), row0 = t0 + warp * kRows;  // the warp's first query
  const std::int64_t off = s.Lk - s.Lq;  // query t sits at key position t + off
  const float* qw = m.q + warp * kRows * hd;
  float* pw = m.p + warp * kRows * kTile;
  stage(s, s.Lq, s.H, b, t0, h, q, m.q, hd);

  float mx[kRows], part[kRows], acc[kRows][kDims];
  SSMTUNE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    mx[r] = -INFINITY, part[r] = 0.0f;
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) acc[r][i] = 0.0f;
  }
  // Keys up to the position of the tile's last query.
  const std::int64_t j_end = (t0 + kTile < s.Lq ? t0 + kTile : s.Lq) + off;
  for (std::int64_t j0 = 0; j0 < j_end; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous k, v tiles (and q is staged)
    stage(s, s.Lk, s.KV, b, j0, g, k, m.k, ks);
    stage(s, s.Lk, s.KV, b, j0, g, v, m.v, hd);
    __syncthreads();  // the tiles are staged
    const std::int64_t j = j0 + lane;
    const bool kept = key_kept(s, key_mask, b, j);
    float sc[kRows];
    SSMTUNE_UNROLL
    for (int r = 0; r < kRows; ++r) sc[r] = 0.0f;
    for (int e = 0; e < hd; ++e) {
      const float kv = m.k[lane * ks + e];
      SSMTUNE_UNROLL
      for (int r = 0; r < kRows; ++r) sc[r] += qw[r * hd + e] * kv;
    }
    float alpha[kRows];
    SSMTUNE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const bool allowed = kept && j <= row0 + r + off;
      const float score = allowed ? scale * sc[r] : -INFINITY;
      const float m_new = fmaxf(mx[r], warp_reduce(score, MaxOp{}));
      float p = 0.0f;
      alpha[r] = 1.0f;
      if (m_new != -INFINITY) {  // warp-uniform: every lane has the same m_new
        alpha[r] = expf(mx[r] - m_new);  // 0 while mx[r] is -inf
        p = allowed ? expf(score - m_new) : 0.0f;
        part[r] = part[r] * alpha[r] + p;
        mx[r] = m_new;
      }
      pw[r * kTile + lane] = p;
    }
    __syncwarp();  // the warp's probabilities are written
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) {
      const int e = int(lane) + 32 * i;
      if (e >= hd) continue;  // not break: the loop must unroll fully to keep acc in registers
      float a[kRows];
      SSMTUNE_UNROLL
      for (int r = 0; r < kRows; ++r) a[r] = acc[r][i] * alpha[r];
      for (int c = 0; c < kTile; ++c) {
        const float vv = m.v[c * hd + e];
        SSMTUNE_UNROLL
        for (int r = 0; r < kRows; ++r) a[r] += pw[r * kTile + c] * vv;
      }
      SSMTUNE_UNROLL
      for (int r = 0; r < kRows; ++r) acc[r][i] = a[r];
    }
  }
  SSMTUNE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    const std::int64_t t = row0 + r;
    const float l = warp_sum(part[r]);
    if (t >= s.Lq) continue;
    float* o = out + row_at(s, s.Lq, s.H, b, t, h);
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) {
      const int e = int(lane) + 32 * i;
      if (e < hd) o[e] = l > 0.0f ? acc[r][i] / l : 0.0f;
    }
    if (lane == 0) lse[(b * s.H + h) * s.Lq + t] = l > 0.0f ? mx[r] + logf(l) : -INFINITY;
  }
}

// Drow[b, h, t] = <dout_t, out_t> of head h: one warp per row, rows = B Lq H in (B, Lq, H)
// order.
__global__ void __launch_bounds__(kThreads)
    attention_drow_kernel(AttentionShape s, const float* __restrict__ out,
                          const float* __restrict__ dout, float* __restrict__ drow) {
  const unsigned lane = threadIdx.x & 31u;
  const std::int64_t i = std::int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const std::int64_t rows = s.B * s.Lq * s.H;
  if (i >= rows) return;  // warp-uniform: a whole warp leaves
  float dot = 0.0f;
  for (std::int64_t e = lane; e < s.hd; e += 32) dot += dout[i * s.hd + e] * out[i * s.hd + e];
  dot = warp_sum(dot);
  const std::int64_t b = i / (s.Lq * s.H), t = i / s.H % s.Lq, h = i % s.H;
  if (lane == 0) drow[(b * s.H + h) * s.Lq + t] = dot;
}

// Twin of the dq part of cpu::attention_backward. Grid (ceil(Lq / 32), H, B), kThreads threads;
// the forward kernel's mapping. dq = scale sum_j dS[t, j] k_j, dS = P (dP - Drow).
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(AttentionShape s, const float* __restrict__ q, const float* __restrict__ k,
                        const float* __restrict__ v, const std::int64_t* __restrict__ key_mask,
                        float scale, const float* __restrict__ lse, const float* __restrict__ dout,
                        const float* __restrict__ drow, float* __restrict__ dq) {
  SSMTUNE_DYNAMIC_SHARED(float, smem);
  const DqSmem m(smem, s.hd);
  const int hd = int(s.hd), ks = odd(s.hd);
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const std::int64_t t0 = std::int64_t(blockIdx.x) * kTile, h = blockIdx.y, b = blockIdx.z;
  const std::int64_t g = h / (s.H / s.KV), row0 = t0 + warp * kRows, off = s.Lk - s.Lq;
  const float* qw = m.q + warp * kRows * hd;
  const float* dw = m.dout + warp * kRows * hd;
  float* dsw = m.ds + warp * kRows * kTile;
  stage(s, s.Lq, s.H, b, t0, h, q, m.q, hd);
  stage(s, s.Lq, s.H, b, t0, h, dout, m.dout, hd);

  float row_lse[kRows], row_d[kRows], acc[kRows][kDims];
  SSMTUNE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    const std::int64_t t = row0 + r, at = (b * s.H + h) * s.Lq + t;
    row_lse[r] = t < s.Lq ? lse[at] : -INFINITY;  // rows past Lq take no part
    row_d[r] = t < s.Lq ? drow[at] : 0.0f;
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) acc[r][i] = 0.0f;
  }
  const std::int64_t j_end = (t0 + kTile < s.Lq ? t0 + kTile : s.Lq) + off;  // as forward
  for (std::int64_t j0 = 0; j0 < j_end; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous k, v tiles (and q, dout are staged)
    stage(s, s.Lk, s.KV, b, j0, g, k, m.k, ks);
    stage(s, s.Lk, s.KV, b, j0, g, v, m.v, ks);
    __syncthreads();  // the tiles are staged
    const std::int64_t j = j0 + lane;
    const bool kept = key_kept(s, key_mask, b, j);
    float sc[kRows], dp[kRows];
    SSMTUNE_UNROLL
    for (int r = 0; r < kRows; ++r) sc[r] = 0.0f, dp[r] = 0.0f;
    for (int e = 0; e < hd; ++e) {
      const float kv = m.k[lane * ks + e], vv = m.v[lane * ks + e];
      SSMTUNE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        sc[r] += qw[r * hd + e] * kv;
        dp[r] += dw[r * hd + e] * vv;
      }
    }
    SSMTUNE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float p = prob(kept && j <= row0 + r + off, scale * sc[r], row_lse[r]);
      dsw[r * kTile + lane] = p * (dp[r] - row_d[r]);
    }
    __syncwarp();  // the warp's dS are written
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) {
      const int e = int(lane) + 32 * i;
      if (e >= hd) continue;  // not break: the loop must unroll fully to keep acc in registers
      for (int c = 0; c < kTile; ++c) {
        const float kv = m.k[c * ks + e];
        SSMTUNE_UNROLL
        for (int r = 0; r < kRows; ++r) acc[r][i] += dsw[r * kTile + c] * kv;
      }
    }
  }
  SSMTUNE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    const std::int64_t t = row0 + r;
    if (t >= s.Lq) continue;
    float* o = dq + row_at(s, s.Lq, s.H, b, t, h);
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) {
      const int e = int(lane) + 32 * i;
      if (e < hd) o[e] = acc[r][i] * scale;
    }
  }
}

// Twin of the dk/dv part of cpu::attention_backward. Grid (ceil(Lk / 32), KV, B), kThreads
// threads; warp w owns keys j0 + 8w .. j0 + 8w + 7, lane c the query t0 + c of each query tile.
// The group's query heads in order, then the query tiles from the one holding query j0 - off,
// the first at key j0's position (queries before it see none of these keys).
// dv = sum_t P[t, j] dout_t, dk = scale sum_t dS[t, j] q_t.
// Bounds (kThreads, 1): with the default, ptxas for sm_80 capped it at 128 registers and spilled
// (dk and dv accumulators are 64 registers); the shared tiles allow 3 blocks per SM anyway.
__global__ void __launch_bounds__(kThreads, 1)
    attention_dkv_kernel(AttentionShape s, const float* __restrict__ q,
                         const float* __restrict__ k, const float* __restrict__ v,
                         const std::int64_t* __restrict__ key_mask, float scale,
                         const float* __restrict__ lse, const float* __restrict__ dout,
                         const float* __restrict__ drow, float* __restrict__ dk,
                         float* __restrict__ dv) {
  SSMTUNE_DYNAMIC_SHARED(float, smem);
  const DkvSmem m(smem, s.hd);
  const int hd = int(s.hd), ks = odd(s.hd);
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const std::int64_t j0 = std::int64_t(blockIdx.x) * kTile, g = blockIdx.y, b = blockIdx.z;
  const std::int64_t group = s.H / s.KV, key0 = j0 + warp * kRows;  // the warp's first key
  const std::int64_t off = s.Lk - s.Lq, t_first = (j0 > off ? j0 - off : 0) / kTile * kTile;
  const float* kw = m.k + warp * kRows * hd;
  const float* vw = m.v + warp * kRows * hd;
  float* pw = m.p + warp * kRows * kTile;
  float* dsw = m.ds + warp * kRows * kTile;
  stage(s, s.Lk, s.KV, b, j0, g, k, m.k, hd);
  stage(s, s.Lk, s.KV, b, j0, g, v, m.v, hd);

  bool kept[kRows];
  float dk_acc[kRows][kDims], dv_acc[kRows][kDims];
  SSMTUNE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    kept[r] = key_kept(s, key_mask, b, key0 + r);
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) dk_acc[r][i] = 0.0f, dv_acc[r][i] = 0.0f;
  }
  for (std::int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (std::int64_t t0 = t_first; t0 < s.Lq; t0 += kTile) {
      __syncthreads();  // every warp is done with the previous query tile (and k, v are staged)
      stage(s, s.Lq, s.H, b, t0, h, q, m.q, ks);
      stage(s, s.Lq, s.H, b, t0, h, dout, m.dout, ks);
      if (threadIdx.x < kTile) {
        const std::int64_t t = t0 + threadIdx.x, at = (b * s.H + h) * s.Lq + t;
        m.lse[threadIdx.x] = t < s.Lq ? lse[at] : -INFINITY;  // queries past Lq take no part
        m.drow[threadIdx.x] = t < s.Lq ? drow[at] : 0.0f;
      }
      __syncthreads();  // the query tile is staged
      const std::int64_t t = t0 + lane;
      float sc[kRows], dp[kRows];
      SSMTUNE_UNROLL
      for (int r = 0; r < kRows; ++r) sc[r] = 0.0f, dp[r] = 0.0f;
      for (int e = 0; e < hd; ++e) {
        const float qv = m.q[lane * ks + e], dov = m.dout[lane * ks + e];
        SSMTUNE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          sc[r] += qv * kw[r * hd + e];
          dp[r] += dov * vw[r * hd + e];
        }
      }
      const float row_lse = m.lse[lane], row_d = m.drow[lane];
      SSMTUNE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const float p = prob(kept[r] && key0 + r <= t + off, scale * sc[r], row_lse);
        pw[r * kTile + lane] = p;
        dsw[r * kTile + lane] = p * (dp[r] - row_d);
      }
      __syncwarp();  // the warp's P and dS are written
      SSMTUNE_UNROLL
      for (int i = 0; i < kDims; ++i) {
        const int e = int(lane) + 32 * i;
        if (e >= hd) continue;  // not break: the loop must unroll fully to keep acc in registers
        for (int c = 0; c < kTile; ++c) {
          const float qv = m.q[c * ks + e], dov = m.dout[c * ks + e];
          SSMTUNE_UNROLL
          for (int r = 0; r < kRows; ++r) {
            dv_acc[r][i] += pw[r * kTile + c] * dov;
            dk_acc[r][i] += dsw[r * kTile + c] * qv;
          }
        }
      }
    }
  }
  SSMTUNE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    const std::int64_t j = key0 + r;
    if (j >= s.Lk) continue;
    const std::int64_t at = row_at(s, s.Lk, s.KV, b, j, g);
    SSMTUNE_UNROLL
    for (int i = 0; i < kDims; ++i) {
      const int e = int(lane) + 32 * i;
      if (e < hd) dk[at + e] = dk_acc[r][i] * scale, dv[at + e] = dv_acc[r][i];
    }
  }
}

namespace {
bool valid(const AttentionShape& s) {
  return s.B > 0 && s.Lq > 0 && s.Lq <= s.Lk && s.H > 0 && s.KV > 0 && s.H % s.KV == 0 &&
         s.hd > 0 && s.hd <= kAttentionMaxHeadDim;
}
unsigned tiles(std::int64_t L) { return unsigned((L + kTile - 1) / kTile); }
}  // namespace

void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       const std::int64_t* key_mask, float scale, float* out, float* lse,
                       cudaStream_t stream) {
  if (!valid(s)) return;
  const std::int64_t bytes = ForwardSmem::floats(s.hd) * std::int64_t(sizeof(float));
  allow_shared(attention_forward_kernel, bytes);
  SSMTUNE_LAUNCH(attention_forward_kernel, dim3(tiles(s.Lq), unsigned(s.H), unsigned(s.B)),
                 dim3(kThreads), std::size_t(bytes), stream, s, q, k, v, key_mask, scale, out,
                 lse);
}

std::int64_t attention_backward_workspace_floats(const AttentionShape& s) {
  return s.B * s.H * s.Lq;
}

void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                        const std::int64_t* key_mask, float scale, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        float* workspace, cudaStream_t stream) {
  if (!valid(s)) return;
  const std::int64_t rows = s.B * s.Lq * s.H;
  SSMTUNE_LAUNCH(attention_drow_kernel, dim3(unsigned((rows + kWarps - 1) / kWarps)),
                 dim3(kThreads), 0, stream, s, out, dout, workspace);
  const std::int64_t dq_bytes = DqSmem::floats(s.hd) * std::int64_t(sizeof(float));
  allow_shared(attention_dq_kernel, dq_bytes);
  SSMTUNE_LAUNCH(attention_dq_kernel, dim3(tiles(s.Lq), unsigned(s.H), unsigned(s.B)),
                 dim3(kThreads), std::size_t(dq_bytes), stream, s, q, k, v, key_mask, scale, lse,
                 dout, workspace, dq);
  const std::int64_t kv_bytes = DkvSmem::floats(s.hd) * std::int64_t(sizeof(float));
  allow_shared(attention_dkv_kernel, kv_bytes);
  SSMTUNE_LAUNCH(attention_dkv_kernel, dim3(tiles(s.Lk), unsigned(s.KV), unsigned(s.B)),
                 dim3(kThreads), std::size_t(kv_bytes), stream, s, q, k, v, key_mask, scale, lse,
                 dout, workspace, dk, dv);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
