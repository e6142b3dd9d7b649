// Selective scan (selective_scan.cuh), forward and backward; design in docs/cuda.md
// "Selective scan kernels".
//
// Mapping. u, delta, dy, y are channel-last (B, L, E), so a block owns a group of kGroup = 32
// neighbouring channels of one batch row: grid (B, ceil(E / kGroup)), kWarps warps, and every
// time step of the group is a 128-byte row that the block stages into shared memory whole
// (coalesced). Bm, Cm (B, L, N) rows of a tile are one contiguous run. Warp w scans channels
// w * kChannelsPerWarp + j (j < kChannelsPerWarp) one after another; inside a warp lane l owns
// the kItems consecutive steps l * kItems + i of a tile of kTile = 32 kItems steps. The
// recurrence h_t = a_t h_{t-1} + b_t is a scan with the affine operator (first, then second) =
// (a2 a1, a2 b1 + b2): each lane composes its own steps, a shuffle scan (__shfl_up_sync) runs
// across the lanes, and the composite of the whole tile carries the state to the next tile.
// The default chunk (64 steps) is one tile, so a chunk needs one warp scan per (channel, state)
// and no block-wide scan, hence no barrier inside the scan.
//
// The sequence runs tile by tile; tiles never cross a chunk boundary, so the state at each
// chunk start (h_saved, the CPU twin's layout) is the carry between two tiles. Backward walks
// the chunks in reverse: a chunk of several tiles first has its tile-start states recomputed
// into the workspace (pass 1), then the tiles run in reverse (pass 2): the states of the tile
// recomputed by the forward scan, the adjoint g_{t-1} = a_t (g_t + dy_t C_t) by a reverse
// shuffle scan, and the gradients from both. No float atomics: dBm and dCm (sums over
// channels) get one partial per channel group, dA and dD (sums over batch and time) one per
// batch row, all added in a fixed order by column_sum.
#include "block_reduce.cuh"
#include "column_sum.cuh"
#include "launch.cuh"
#include "selective_scan.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kChannelsPerWarp = 4;
constexpr int kGroup = kWarps * kChannelsPerWarp;  // the twin's kChannelBlock, 128-byte rows
constexpr int kItems = 2;                          // consecutive steps per lane
constexpr int kTile = 32 * kItems;                 // = the default chunk
// Row stride of the (step, channel) tiles: odd, so the lanes of a warp, kItems rows apart,
// fall into different banks (two-way conflicts at most).
constexpr int kGroupStride = kGroup + 1;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxStaticShared = 48 * 1024;

__host__ __device__ __forceinline__ int odd_stride(std::int64_t N) { return int(N) | 1; }

// h -> a h + b.
struct Affine {
  float a, b;
};
__device__ __forceinline__ Affine identity() { return {1.0f, 0.0f}; }
// The map that applies `first`, then `second`.
__device__ __forceinline__ Affine then(Affine first, Affine second) {
  return {second.a * first.a, second.a * first.b + second.b};
}
__device__ __forceinline__ Affine shfl_up(Affine x, unsigned delta) {
  return {__shfl_up_sync(kFullMask, x.a, delta), __shfl_up_sync(kFullMask, x.b, delta)};
}
__device__ __forceinline__ Affine shfl_down(Affine x, unsigned delta) {
  return {__shfl_down_sync(kFullMask, x.a, delta), __shfl_down_sync(kFullMask, x.b, delta)};
}
__device__ __forceinline__ Affine shfl(Affine x, int lane) {
  return {__shfl_sync(kFullMask, x.a, lane), __shfl_sync(kFullMask, x.b, lane)};
}

// Forward-time scan over the warp: lane l gets the steps of lanes 0 .. l-1 (exclusive; lane 0
// the identity) in `before`, and every lane the whole warp's map in `total`.
__device__ __forceinline__ void warp_scan_forward(Affine x, unsigned lane, Affine& before,
                                                  Affine& total) {
  for (unsigned d = 1; d < 32; d <<= 1) {
    const Affine earlier = shfl_up(x, d);
    if (lane >= d) x = then(earlier, x);
  }
  before = shfl_up(x, 1);
  if (lane == 0) before = identity();
  total = shfl(x, 31);
}

// Reverse-time scan: lane l gets the maps of lanes l+1 .. 31 (applied latest first; lane 31 the
// identity) in `after`, and every lane the whole warp's map in `total`.
__device__ __forceinline__ void warp_scan_reverse(Affine x, unsigned lane, Affine& after,
                                                  Affine& total) {
  for (unsigned d = 1; d < 32; d <<= 1) {
    const Affine later = shfl_down(x, d);
    if (lane + d < 32) x = then(later, x);
  }
  after = shfl_down(x, 1);
  if (lane == 31) after = identity();
  total = shfl(x, 0);
}

// Shared-memory layout (floats), the same on host and device. Tiles of steps x channels have
// row stride kGroupStride, tiles of steps x states row stride odd_stride(N); group states
// (kGroup, N) are the (E, N) rows of the group, contiguous as in h_saved.
struct ForwardSmem {
  float *u, *delta, *y, *Bm, *Cm, *h;
  __host__ __device__ static std::int64_t floats(std::int64_t N) {
    return 3 * kTile * kGroupStride + 2 * kTile * odd_stride(N) + kGroup * N;
  }
  __device__ ForwardSmem(float* p, std::int64_t N) {
    u = p, delta = u + kTile * kGroupStride, y = delta + kTile * kGroupStride;
    Bm = y + kTile * kGroupStride, Cm = Bm + kTile * odd_stride(N), h = Cm + kTile * odd_stride(N);
  }
};

struct BackwardSmem {
  float *u, *delta, *dy, *du, *ddelta, *Bm, *Cm, *dBm, *dCm, *red_B, *red_C, *h, *g, *dA;
  __host__ __device__ static std::int64_t floats(std::int64_t N) {
    return 5 * kTile * kGroupStride + 4 * kTile * odd_stride(N) + 2 * kWarps * kTile +
           3 * kGroup * N;
  }
  __device__ BackwardSmem(float* p, std::int64_t N) {
    const int cs = kTile * kGroupStride, ns = kTile * odd_stride(N);
    u = p, delta = u + cs, dy = delta + cs, du = dy + cs, ddelta = du + cs;
    Bm = ddelta + cs, Cm = Bm + ns, dBm = Cm + ns, dCm = dBm + ns;
    red_B = dCm + ns, red_C = red_B + kWarps * kTile;
    h = red_C + kWarps * kTile, g = h + kGroup * N, dA = g + kGroup * N;
  }
};

// Where a block is: batch row b, channels [e0, e0 + n_ch).
struct Group {
  std::int64_t b, e0;
  int n_ch;
};
__device__ __forceinline__ Group this_group(const ScanShape& s) {
  const std::int64_t e0 = std::int64_t(blockIdx.y) * kGroup;
  return {std::int64_t(blockIdx.x), e0, int(s.E - e0 < kGroup ? s.E - e0 : kGroup)};
}

// ScanShape::n_chunks is host-only.
__device__ __forceinline__ std::int64_t chunks_of(const ScanShape& s) {
  return (s.L + s.chunk - 1) / s.chunk;
}

// A tile: steps [t0, t0 + len) of one chunk.
struct Tile {
  std::int64_t t0;
  int len;
};
__device__ __forceinline__ Tile tile_at(const ScanShape& s, std::int64_t t0) {
  const std::int64_t chunk_end = (t0 / s.chunk + 1) * s.chunk;
  const std::int64_t end = chunk_end < s.L ? chunk_end : s.L;
  return {t0, int(end - t0 < kTile ? end - t0 : kTile)};
}

// tile[t, c] = src[b, t0 + t, e0 + c]: threads walk c fastest, a warp reads whole rows.
// src: (B, L, E)   tile: (kTile, kGroupStride)
// The staged tiles are float whatever the inputs are: a bf16 input is widened as it is staged.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(Bf16 v) {
  const std::uint32_t bits = std::uint32_t(v.bits) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

template <class T>
__device__ __forceinline__ void stage_channels(const ScanShape& s, const Group& g, const Tile& tl,
                                               const T* __restrict__ src, float* tile) {
  for (int i = threadIdx.x; i < tl.len * kGroup; i += blockDim.x) {
    const int t = i / kGroup, c = i % kGroup;
    if (c < g.n_ch)
      tile[t * kGroupStride + c] = to_float(src[((g.b * s.L + tl.t0 + t) * s.E) + g.e0 + c]);
  }
}
// The reverse of stage_channels.   dst: (B, L, E)
__device__ __forceinline__ void unstage_channels(const ScanShape& s, const Group& g, const Tile& tl,
                                                 const float* tile, float* __restrict__ dst) {
  for (int i = threadIdx.x; i < tl.len * kGroup; i += blockDim.x) {
    const int t = i / kGroup, c = i % kGroup;
    if (c < g.n_ch) dst[((g.b * s.L + tl.t0 + t) * s.E) + g.e0 + c] = tile[t * kGroupStride + c];
  }
}
// tile[t, n] = src[row0 + t, n] for the tile's rows, one contiguous run.
// src: (B L, N) from row0 = b L + t0   tile: (kTile, odd_stride(N))
template <class T>
__device__ __forceinline__ void stage_states(std::int64_t N, std::int64_t row0, int len,
                                             const T* __restrict__ src, float* tile) {
  for (int i = threadIdx.x; i < len * N; i += blockDim.x)
    tile[(i / N) * odd_stride(N) + i % N] = to_float(src[row0 * N + i]);
}
__device__ __forceinline__ void unstage_states(std::int64_t N, std::int64_t row0, int len,
                                               const float* tile, float* __restrict__ dst) {
  for (int i = threadIdx.x; i < len * N; i += blockDim.x)
    dst[row0 * N + i] = tile[(i / N) * odd_stride(N) + i % N];
}
// dst[i] = src[i] (or 0 without src) for the group's n_ch N states: (kGroup, N) rows.
__device__ __forceinline__ void copy_states(int count, const float* src, float* dst) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) dst[i] = src ? src[i] : 0.0f;
}

// The decays and inputs of the lane's steps for channel c and state n; steps past the tile are
// the identity (a = 1, b = 0). delta_t, u_t, B_t: staged tiles.
struct Steps {
  float a[kItems], b[kItems];
};
__device__ __forceinline__ Steps load_steps(const float* delta, const float* u, const float* Bm,
                                            int ns, int c, std::int64_t n, float A_en, int len,
                                            unsigned lane) {
  Steps st;
  for (int i = 0; i < kItems; ++i) {
    const int t = int(lane) * kItems + i;
    st.a[i] = 1.0f, st.b[i] = 0.0f;
    if (t < len) {
      const float dt = delta[t * kGroupStride + c];
      st.a[i] = expf(dt * A_en);
      st.b[i] = dt * u[t * kGroupStride + c] * Bm[t * ns + n];  // the twin's (dt u) B
    }
  }
  return st;
}

// The states of one (channel, state) over the tile: h[i] after the lane's step i, h_before the
// state before its first step, from h_in before the tile. Returns the state after the tile.
__device__ __forceinline__ float scan_states(const Steps& st, float h_in, unsigned lane,
                                             float (&h)[kItems], float& h_before) {
  Affine own = identity();
  for (int i = 0; i < kItems; ++i) own = then(own, Affine{st.a[i], st.b[i]});
  Affine before, total;
  warp_scan_forward(own, lane, before, total);
  float hv = before.a * h_in + before.b;
  h_before = hv;
  for (int i = 0; i < kItems; ++i) h[i] = hv = st.a[i] * hv + st.b[i];
  return total.a * h_in + total.b;
}

// Forward over one tile: every warp scans its channels for every state, y accumulated over n.
// Twin: the inner loops of cpu forward_block.
__device__ __forceinline__ void forward_tile(const ScanShape& s, const Group& g, const Tile& tl,
                                             const float* __restrict__ A,
                                             const float* __restrict__ D, const ForwardSmem& m) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const int ns = odd_stride(s.N);
  for (int j = 0; j < kChannelsPerWarp; ++j) {
    const int c = int(warp) * kChannelsPerWarp + j;
    if (c >= g.n_ch) break;  // the same for the whole warp
    float y[kItems] = {};
    for (std::int64_t n = 0; n < s.N; ++n) {
      const Steps st =
          load_steps(m.delta, m.u, m.Bm, ns, c, n, A[(g.e0 + c) * s.N + n], tl.len, lane);
      float h[kItems], h_before;
      const float h_out = scan_states(st, m.h[c * s.N + n], lane, h, h_before);
      for (int i = 0; i < kItems; ++i) {
        const int t = int(lane) * kItems + i;
        if (t < tl.len) y[i] += h[i] * m.Cm[t * ns + n];
      }
      // Every lane has read the old carry before it reached the scan's shuffles.
      if (lane == 0) m.h[c * s.N + n] = h_out;
    }
    const float D_e = D ? D[g.e0 + c] : 0.0f;
    for (int i = 0; i < kItems; ++i) {
      const int t = int(lane) * kItems + i;
      if (t < tl.len) m.y[t * kGroupStride + c] = y[i] + D_e * m.u[t * kGroupStride + c];
    }
  }
}

// Advances the group's carried states m.h over one tile (backward's pass 1).
__device__ __forceinline__ void advance_tile(const ScanShape& s, const Group& g, const Tile& tl,
                                             const float* __restrict__ A, const BackwardSmem& m) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int j = 0; j < kChannelsPerWarp; ++j) {
    const int c = int(warp) * kChannelsPerWarp + j;
    if (c >= g.n_ch) break;
    for (std::int64_t n = 0; n < s.N; ++n) {
      const Steps st = load_steps(m.delta, m.u, m.Bm, odd_stride(s.N), c, n,
                                  A[(g.e0 + c) * s.N + n], tl.len, lane);
      float h[kItems], h_before;
      const float h_out = scan_states(st, m.h[c * s.N + n], lane, h, h_before);
      if (lane == 0) m.h[c * s.N + n] = h_out;
    }
  }
}

// Gradients a lane accumulates over the states n for each of its warp's channels.
struct ChannelGrads {
  float du[kChannelsPerWarp][kItems], ddelta[kChannelsPerWarp][kItems];
};

// Backward of one (channel c, state n) over the tile. h_start: the state before the tile;
// m.g[c, n]: dL/dh after the tile (updated to dL/dh before it). Adds the lane's terms of
// ddelta, du (grads), dBm, dCm (summed over the warp's channels) and returns its dA term.
// Twin: the adjoint loop of cpu backward_block.
__device__ __forceinline__ float backward_state(const ScanShape& s, const Tile& tl, int c,
                                                std::int64_t n, float A_en, float h_start,
                                                const BackwardSmem& m, float (&du)[kItems],
                                                float (&ddelta)[kItems], float (&dB)[kItems],
                                                float (&dC)[kItems]) {
  const unsigned lane = threadIdx.x & 31u;
  const int ns = odd_stride(s.N);
  // Read before the shuffles below: lane 0 rewrites it after them.
  const float g_end = m.g[c * s.N + n];
  const Steps st = load_steps(m.delta, m.u, m.Bm, ns, c, n, A_en, tl.len, lane);
  float h[kItems], h_before;
  scan_states(st, h_start, lane, h, h_before);
  // Reverse-time recurrence on g_t = dL/dh_{t-1} = a_t (g_{t+1} + dy_t C_t): the map of step t
  // is (a_t, a_t dy_t C_t); steps past the tile have dy = 0, a = 1 (the identity).
  float dt[kItems], u[kItems], B[kItems], dyC[kItems];
  Affine own = identity();
  for (int i = kItems - 1; i >= 0; --i) {
    const int t = int(lane) * kItems + i;
    const bool in = t < tl.len;
    dt[i] = in ? m.delta[t * kGroupStride + c] : 0.0f;
    u[i] = in ? m.u[t * kGroupStride + c] : 0.0f;
    B[i] = in ? m.Bm[t * ns + n] : 0.0f;
    const float dy = in ? m.dy[t * kGroupStride + c] : 0.0f;
    dyC[i] = in ? dy * m.Cm[t * ns + n] : 0.0f;
    dC[i] += dy * h[i];
    own = then(own, Affine{st.a[i], st.a[i] * dyC[i]});
  }
  Affine after, total;
  warp_scan_reverse(own, lane, after, total);
  float g = after.a * g_end + after.b, dA = 0.0f;
  for (int i = kItems - 1; i >= 0; --i) {
    const float g_n = g + dyC[i];  // dL/dh_t: later steps and y_t through C_t
    const float g_a = g_n * (i == 0 ? h_before : h[i - 1]);  // dL/da_t
    ddelta[i] += g_a * st.a[i] * A_en + g_n * B[i] * u[i];
    dA += g_a * st.a[i] * dt[i];
    dB[i] += g_n * dt[i] * u[i];
    du[i] += g_n * dt[i] * B[i];
    g = g_n * st.a[i];
  }
  if (lane == 0) m.g[c * s.N + n] = total.a * g_end + total.b;
  return dA;
}

// dBm, dCm of the tile for state n: the warps' sums (lanes' dB, dC) added in warp order.
// Ends with a barrier, so red_B / red_C may be rewritten.
__device__ __forceinline__ void reduce_over_warps(std::int64_t n, int ns, int len,
                                                  const float (&dB)[kItems],
                                                  const float (&dC)[kItems],
                                                  const BackwardSmem& m) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int i = 0; i < kItems; ++i) {
    m.red_B[warp * kTile + lane * kItems + i] = dB[i];
    m.red_C[warp * kTile + lane * kItems + i] = dC[i];
  }
  __syncthreads();  // every warp's sums are written
  const int t = int(threadIdx.x) % kTile;
  const float* red = threadIdx.x < kTile ? m.red_B : m.red_C;
  float* out = threadIdx.x < kTile ? m.dBm : m.dCm;
  if (threadIdx.x < 2 * kTile && t < len) {
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) sum += red[w * kTile + t];
    out[t * ns + n] = sum;
  }
  __syncthreads();  // every sum is read
}

// Backward over one tile (states recomputed from tile_start: (kGroup, N) group states). Every
// warp takes every barrier of reduce_over_warps, whether it has channels or not.
__device__ __forceinline__ void backward_tile(const ScanShape& s, const Group& g, const Tile& tl,
                                              const float* __restrict__ A,
                                              const float* __restrict__ D, const float* tile_start,
                                              const BackwardSmem& m,
                                              float (&dD)[kChannelsPerWarp]) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const int ns = odd_stride(s.N);
  ChannelGrads gr;
  for (int j = 0; j < kChannelsPerWarp; ++j) {
    const int c = int(warp) * kChannelsPerWarp + j;
    float dDj = 0.0f;
    for (int i = 0; i < kItems; ++i) {
      const int t = int(lane) * kItems + i;
      const bool in = t < tl.len && c < g.n_ch;
      const float dy = in ? m.dy[t * kGroupStride + c] : 0.0f,
                  u = in ? m.u[t * kGroupStride + c] : 0.0f;
      gr.du[j][i] = D && c < g.n_ch ? dy * D[g.e0 + c] : 0.0f;
      gr.ddelta[j][i] = 0.0f;
      dDj += dy * u;
    }
    dD[j] += warp_sum(dDj);
  }
  for (std::int64_t n = 0; n < s.N; ++n) {
    float dB[kItems] = {}, dC[kItems] = {};
    // Unrolled (constant trip count, no break), so gr stays in registers.
    SSMTUNE_UNROLL
    for (int j = 0; j < kChannelsPerWarp; ++j) {
      const int c = int(warp) * kChannelsPerWarp + j;
      if (c < g.n_ch) {  // the same for the whole warp
        const float A_en = A[(g.e0 + c) * s.N + n];
        const float dA = backward_state(s, tl, c, n, A_en, tile_start[c * s.N + n], m, gr.du[j],
                                        gr.ddelta[j], dB, dC);
        const float dA_tile = warp_sum(dA);
        if (lane == 0) m.dA[c * s.N + n] += dA_tile;
      }
    }
    reduce_over_warps(n, ns, tl.len, dB, dC, m);
  }
  for (int j = 0; j < kChannelsPerWarp; ++j) {
    const int c = int(warp) * kChannelsPerWarp + j;
    for (int i = 0; i < kItems; ++i) {
      const int t = int(lane) * kItems + i;
      if (t < tl.len && c < g.n_ch) {
        m.du[t * kGroupStride + c] = gr.du[j][i];
        m.ddelta[t * kGroupStride + c] = gr.ddelta[j][i];
      }
    }
  }
}

__host__ __device__ __forceinline__ std::int64_t n_groups(std::int64_t E) {
  return (E + kGroup - 1) / kGroup;
}
// Tiles in the longest chunk.
__host__ __device__ __forceinline__ std::int64_t tiles_per_chunk(const ScanShape& s) {
  const std::int64_t longest = s.chunk < s.L ? s.chunk : s.L;
  return (longest + kTile - 1) / kTile;
}

// The workspace of backward, in floats: per channel group the partial dBm and dCm
// (n_groups, B L N) each, per batch row the partial dA (B, E N) and dD (B, E), and per block
// the recomputed tile-start states of one chunk after its first tile
// (B, n_groups, tiles_per_chunk - 1, kGroup, N).
struct BackwardWorkspace {
  float *dBm, *dCm, *dA, *dD, *tile_states;
  __host__ __device__ BackwardWorkspace(const ScanShape& s, float* w) {
    const std::int64_t groups = n_groups(s.E), BLN = s.B * s.L * s.N;
    dBm = w, dCm = dBm + groups * BLN, dA = dCm + groups * BLN, dD = dA + s.B * s.E * s.N;
    tile_states = dD + s.B * s.E;
  }
  static std::int64_t floats(const ScanShape& s) {
    const std::int64_t groups = n_groups(s.E);
    return 2 * groups * s.B * s.L * s.N + s.B * s.E * s.N + s.B * s.E +
           s.B * groups * (tiles_per_chunk(s) - 1) * kGroup * s.N;
  }
};

bool valid(const ScanShape& s) { return s.B > 0 && s.L > 0 && s.E > 0 && s.N > 0 && s.chunk > 0; }

// More than 48 KiB of dynamic shared memory needs the opt-in, on a GPU and in the emulator.
template <class Kernel>
void allow_shared(Kernel kernel, std::int64_t bytes) {
  if (bytes > kMaxStaticShared)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

}  // namespace

// Twin of cpu::selective_scan_forward. Grid (B, n_groups), kThreads threads. TIn: float or Bf16,
// the type of u, delta, Bm, Cm (the state and every sum stay float).
template <class TIn>
__global__ void __launch_bounds__(kThreads)
    selective_scan_forward_kernel(ScanShape s, const TIn* __restrict__ u,
                                  const TIn* __restrict__ delta, const float* __restrict__ A,
                                  const TIn* __restrict__ Bm, const TIn* __restrict__ Cm,
                                  const float* __restrict__ D, const float* __restrict__ h0,
                                  float* __restrict__ y, float* __restrict__ h_saved,
                                  float* __restrict__ h_last) {
  SSMTUNE_DYNAMIC_SHARED(float, smem);
  const ForwardSmem m(smem, s.N);
  const Group g = this_group(s);
  const int states = g.n_ch * int(s.N);
  const std::int64_t group_states = (g.b * s.E + g.e0) * s.N;  // offset in (B, E, N)
  copy_states(states, h0 ? h0 + group_states : nullptr, m.h);
  __syncthreads();  // the initial state is in place
  for (std::int64_t t0 = 0; t0 < s.L;) {
    const Tile tl = tile_at(s, t0);
    const std::int64_t row0 = g.b * s.L + t0;
    if (t0 % s.chunk == 0) {
      const std::int64_t chunk = t0 / s.chunk;
      copy_states(states, m.h, h_saved + ((g.b * chunks_of(s) + chunk) * s.E + g.e0) * s.N);
    }
    stage_channels(s, g, tl, u, m.u);
    stage_channels(s, g, tl, delta, m.delta);
    stage_states(s.N, row0, tl.len, Bm, m.Bm);
    stage_states(s.N, row0, tl.len, Cm, m.Cm);
    __syncthreads();  // the tile's inputs are staged
    forward_tile(s, g, tl, A, D, m);
    __syncthreads();  // y and the carried states are written
    unstage_channels(s, g, tl, m.y, y);
    t0 += tl.len;
  }
  if (h_last) copy_states(states, m.h, h_last + group_states);
}

// Twin of cpu::selective_scan_backward, up to the reductions. Grid (B, n_groups), kThreads.
template <class TIn>
__global__ void __launch_bounds__(kThreads)
    selective_scan_backward_kernel(ScanShape s, const TIn* __restrict__ u,
                                   const TIn* __restrict__ delta, const float* __restrict__ A,
                                   const TIn* __restrict__ Bm, const TIn* __restrict__ Cm,
                                   const float* __restrict__ D, const float* __restrict__ h_saved,
                                   const float* __restrict__ dy, float* __restrict__ du,
                                   float* __restrict__ ddelta, float* __restrict__ dh0,
                                   float* __restrict__ workspace) {
  SSMTUNE_DYNAMIC_SHARED(float, smem);
  const BackwardSmem m(smem, s.N);
  const BackwardWorkspace ws(s, workspace);
  const Group g = this_group(s);
  const int states = g.n_ch * int(s.N), group_states = kGroup * int(s.N);
  const std::int64_t n_chunks = chunks_of(s), T = tiles_per_chunk(s);
  float* tile_states = ws.tile_states + (g.b * gridDim.y + blockIdx.y) * (T - 1) * group_states;
  copy_states(states, nullptr, m.g);
  copy_states(states, nullptr, m.dA);
  float dD[kChannelsPerWarp] = {};
  __syncthreads();  // g and dA start at zero
  for (std::int64_t chunk = n_chunks - 1; chunk >= 0; --chunk) {
    const float* chunk_start = h_saved + ((g.b * n_chunks + chunk) * s.E + g.e0) * s.N;
    const std::int64_t c0 = chunk * s.chunk;
    const std::int64_t c1 = c0 + s.chunk < s.L ? c0 + s.chunk : s.L;
    const std::int64_t n_tiles = (c1 - c0 + kTile - 1) / kTile;
    // Pass 1: the states at the starts of tiles 1 .. n_tiles-1 of the chunk.
    if (n_tiles > 1) copy_states(states, chunk_start, m.h);
    for (std::int64_t k = 0; k + 1 < n_tiles; ++k) {
      const Tile tl = tile_at(s, c0 + k * kTile);
      stage_channels(s, g, tl, u, m.u);
      stage_channels(s, g, tl, delta, m.delta);
      stage_states(s.N, g.b * s.L + tl.t0, tl.len, Bm, m.Bm);
      __syncthreads();  // inputs and the carried states are in place
      advance_tile(s, g, tl, A, m);
      __syncthreads();  // the carried states are written, the inputs read
      copy_states(states, m.h, tile_states + k * group_states);
    }
    // Pass 2: the tiles in reverse. The barriers below also order the tile-state writes above
    // before their reads.
    for (std::int64_t k = n_tiles - 1; k >= 0; --k) {
      const Tile tl = tile_at(s, c0 + k * kTile);
      const std::int64_t row0 = g.b * s.L + tl.t0;
      stage_channels(s, g, tl, u, m.u);
      stage_channels(s, g, tl, delta, m.delta);
      stage_channels(s, g, tl, dy, m.dy);
      stage_states(s.N, row0, tl.len, Bm, m.Bm);
      stage_states(s.N, row0, tl.len, Cm, m.Cm);
      __syncthreads();  // the tile's inputs are staged
      const float* tile_start = k == 0 ? chunk_start : tile_states + (k - 1) * group_states;
      backward_tile(s, g, tl, A, D, tile_start, m, dD);
      __syncthreads();  // du, ddelta, dBm, dCm of the tile are written
      unstage_channels(s, g, tl, m.du, du);
      unstage_channels(s, g, tl, m.ddelta, ddelta);
      float* dBm_part = ws.dBm + std::int64_t(blockIdx.y) * s.B * s.L * s.N;
      float* dCm_part = ws.dCm + std::int64_t(blockIdx.y) * s.B * s.L * s.N;
      unstage_states(s.N, row0, tl.len, m.dBm, dBm_part);
      unstage_states(s.N, row0, tl.len, m.dCm, dCm_part);
    }
  }
  __syncthreads();  // the last tile's g and dA are written
  const std::int64_t group_offset = (g.b * s.E + g.e0) * s.N;
  if (dh0) copy_states(states, m.g, dh0 + group_offset);
  copy_states(states, m.dA, ws.dA + group_offset);
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int j = 0; j < kChannelsPerWarp; ++j) {
    const int c = int(warp) * kChannelsPerWarp + j;
    if (lane == 0 && c < g.n_ch) ws.dD[g.b * s.E + g.e0 + c] = dD[j];
  }
}

namespace {

template <class TIn>
void launch_forward(const ScanShape& s, const TIn* u, const TIn* delta, const float* A,
                    const TIn* Bm, const TIn* Cm, const float* D, const float* h0, float* y,
                    float* h_saved, float* h_last, cudaStream_t stream) {
  if (!valid(s)) return;
  const std::int64_t bytes = ForwardSmem::floats(s.N) * std::int64_t(sizeof(float));
  allow_shared(selective_scan_forward_kernel<TIn>, bytes);
  const dim3 grid(unsigned(s.B), unsigned(n_groups(s.E)));
  SSMTUNE_LAUNCH(selective_scan_forward_kernel<TIn>, grid, dim3(kThreads), std::size_t(bytes),
                 stream, s, u, delta, A, Bm, Cm, D, h0, y, h_saved, h_last);
}

template <class TIn>
void launch_backward(const ScanShape& s, const TIn* u, const TIn* delta, const float* A,
                     const TIn* Bm, const TIn* Cm, const float* D, const float* h_saved,
                     const float* dy, float* du, float* ddelta, float* dA, float* dBm, float* dCm,
                     float* dD, float* dh0, float* workspace, cudaStream_t stream) {
  if (!valid(s)) return;
  const std::int64_t bytes = BackwardSmem::floats(s.N) * std::int64_t(sizeof(float));
  allow_shared(selective_scan_backward_kernel<TIn>, bytes);
  const std::int64_t groups = n_groups(s.E), BLN = s.B * s.L * s.N;
  const dim3 grid(unsigned(s.B), unsigned(groups));
  SSMTUNE_LAUNCH(selective_scan_backward_kernel<TIn>, grid, dim3(kThreads), std::size_t(bytes),
                 stream, s, u, delta, A, Bm, Cm, D, h_saved, dy, du, ddelta, dh0, workspace);
  // The partials added in group order (dBm, dCm: overwritten) and batch order (dA, dD: +=).
  const BackwardWorkspace ws(s, workspace);
  cudaMemsetAsync(dBm, 0, std::size_t(BLN) * sizeof(float), stream);
  cudaMemsetAsync(dCm, 0, std::size_t(BLN) * sizeof(float), stream);
  column_sum(groups, BLN, ws.dBm, dBm, stream);
  column_sum(groups, BLN, ws.dCm, dCm, stream);
  column_sum(s.B, s.E * s.N, ws.dA, dA, stream);
  if (dD) column_sum(s.B, s.E, ws.dD, dD, stream);
}

}  // namespace

void selective_scan_forward(const ScanShape& s, const float* u, const float* delta, const float* A,
                            const float* Bm, const float* Cm, const float* D, const float* h0,
                            float* y, float* h_saved, float* h_last, cudaStream_t stream) {
  launch_forward(s, u, delta, A, Bm, Cm, D, h0, y, h_saved, h_last, stream);
}
void selective_scan_forward(const ScanShape& s, const Bf16* u, const Bf16* delta, const float* A,
                            const Bf16* Bm, const Bf16* Cm, const float* D, const float* h0,
                            float* y, float* h_saved, float* h_last, cudaStream_t stream) {
  launch_forward(s, u, delta, A, Bm, Cm, D, h0, y, h_saved, h_last, stream);
}

std::int64_t selective_scan_backward_workspace_floats(const ScanShape& s) {
  return valid(s) ? BackwardWorkspace::floats(s) : 0;
}

void selective_scan_backward(const ScanShape& s, const float* u, const float* delta, const float* A,
                             const float* Bm, const float* Cm, const float* D, const float* h_saved,
                             const float* dy, float* du, float* ddelta, float* dA, float* dBm,
                             float* dCm, float* dD, float* dh0, float* workspace,
                             cudaStream_t stream) {
  launch_backward(s, u, delta, A, Bm, Cm, D, h_saved, dy, du, ddelta, dA, dBm, dCm, dD, dh0,
                  workspace, stream);
}
void selective_scan_backward(const ScanShape& s, const Bf16* u, const Bf16* delta, const float* A,
                             const Bf16* Bm, const Bf16* Cm, const float* D, const float* h_saved,
                             const float* dy, float* du, float* ddelta, float* dA, float* dBm,
                             float* dCm, float* dD, float* dh0, float* workspace,
                             cudaStream_t stream) {
  launch_backward(s, u, delta, A, Bm, Cm, D, h_saved, dy, du, ddelta, dA, dBm, dCm, dD, dh0,
                  workspace, stream);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
