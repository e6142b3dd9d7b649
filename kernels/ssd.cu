// SSD, the Mamba-2 scan (ssd.cuh), forward and backward; design in docs/cuda.md "SSD kernels".
//
// The chunked algorithm of the CPU twin (lib/backend/cpu/ssd_cpu.cpp): blocks of kThreads
// threads, one block per (chunk, head) or (chunk, group) of a batch row, grid (n_chunks, H or
// G, B); every sum a loop in a fixed order (no atomics). The forward's Y_diag is tiled through
// shared memory; the other products are one output element per thread. The decays inside a
// chunk are exp of log-decay sums taken directly between the two steps, sum_{s < j <= t}
// dt_j A (a running sum along the thread's row or column, the twin's segsum), never a
// difference of two long float cumulative sums; where two threads must agree on a decay to the
// bit (the backward's row and column sums), a difference of double cumulative sums. What the
// kernels keep in the workspace between launches: the chunks' log decays cum (B, n_chunks, H,
// Q) and C B^T (B, n_chunks, G, Q, Q); backward adds cum in double, dL/dCB summed over a
// group's heads, the state gradients (B, n_chunks, H, P, N) and per-step vectors.
#include <cmath>

#include "block_reduce.cuh"
#include "launch.cuh"
#include "ssd.cuh"

namespace ssmtune::kernels {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {

constexpr int kThreads = 128;

// Offsets into the op's tensors and the workspace (the twin's SsdLayout).
struct Layout {
  SsdShape s;
  __host__ __device__ std::int64_t x(std::int64_t b, std::int64_t t, std::int64_t h) const {
    return ((b * s.L + t) * s.H + h) * s.P;
  }
  __host__ __device__ std::int64_t dt(std::int64_t b, std::int64_t t, std::int64_t h) const {
    return (b * s.L + t) * s.H + h;
  }
  __host__ __device__ std::int64_t bc(std::int64_t b, std::int64_t t, std::int64_t g) const {
    return ((b * s.L + t) * s.G + g) * s.N;
  }
  // h0, h_last, dh0: (B, H, P, N)
  __host__ __device__ std::int64_t state(std::int64_t b, std::int64_t h) const {
    return (b * s.H + h) * s.P * s.N;
  }
  // h_saved and the state gradients: (B, n_chunks, H, P, N)
  __host__ __device__ std::int64_t saved(std::int64_t b, std::int64_t c, std::int64_t h) const {
    return ((b * s.n_chunks() + c) * s.H + h) * s.P * s.N;
  }
  // Per-step vectors (cum, ...): (B, n_chunks, H, Q)
  __host__ __device__ std::int64_t vec(std::int64_t b, std::int64_t c, std::int64_t h) const {
    return ((b * s.n_chunks() + c) * s.H + h) * s.Q();
  }
  // Per-group (Q, Q) matrices (CB, dCB): (B, n_chunks, G, Q, Q)
  __host__ __device__ std::int64_t mat(std::int64_t b, std::int64_t c, std::int64_t g) const {
    return ((b * s.n_chunks() + c) * s.G + g) * s.Q() * s.Q();
  }
  __host__ __device__ std::int64_t group_of(std::int64_t h) const { return h / (s.H / s.G); }
  // Steps in chunk c: chunk, or fewer in the last.
  __host__ __device__ std::int64_t steps(std::int64_t c) const {
    const std::int64_t left = s.L - c * s.chunk;
    return left < s.chunk ? left : s.chunk;
  }
  __host__ __device__ std::int64_t n_vec() const { return s.B * s.n_chunks() * s.H * s.Q(); }
  __host__ __device__ std::int64_t n_mat() const {
    return s.B * s.n_chunks() * s.G * s.Q() * s.Q();
  }
};

// The block's chunk: blockIdx = (c, head or group, b). A per-group block has no head (h = -1).
struct BlockChunk {
  std::int64_t b, c, t0, q, h, g;
};
__device__ __forceinline__ BlockChunk block_chunk(const Layout& at, bool per_head) {
  const std::int64_t c = blockIdx.x, y = blockIdx.y;
  return {std::int64_t(blockIdx.z),     c, c * at.s.chunk, at.steps(c), per_head ? y : -1,
          per_head ? at.group_of(y) : y};
}

// f(r, c, i) for every element i = r cols + c of a (rows, cols) index space, spread over the
// block's threads (i = threadIdx.x, + kThreads, ...).
template <class F>
__device__ __forceinline__ void for_each_element(std::int64_t rows, std::int64_t cols, F&& f) {
  for (std::int64_t i = threadIdx.x; i < rows * cols; i += kThreads) f(i / cols, i % cols, i);
}

// cum[j] = sum_{i <= j} dt_{t0 + i} A_h for every (b, c, h): one thread each, in step order;
// also in double into cum_d when given (backward).
__global__ void __launch_bounds__(kThreads)
    ssd_cumsum_kernel(SsdShape s, const float* __restrict__ dt, const float* __restrict__ A,
                      float* __restrict__ cum, double* __restrict__ cum_d) {
  const Layout at{s};
  const std::int64_t i = std::int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= s.B * s.n_chunks() * s.H) return;
  const std::int64_t h = i % s.H, c = (i / s.H) % s.n_chunks(), b = i / (s.H * s.n_chunks());
  float run = 0.0f;
  double run_d = 0.0;
  for (std::int64_t j = 0; j < at.steps(c); ++j) {
    const float la = dt[at.dt(b, c * s.chunk + j, h)] * A[h];
    run += la;
    cum[at.vec(b, c, h) + j] = run;
    run_d += double(la);
    if (cum_d) cum_d[at.vec(b, c, h) + j] = run_d;
  }
}

// CB[t, s] = C_t . B_s of every (b, c, g) for s <= t (the entries the mask keeps).
__global__ void __launch_bounds__(kThreads)
    ssd_cb_kernel(SsdShape s, const float* __restrict__ Bm, const float* __restrict__ Cm,
                  float* __restrict__ CB) {
  const Layout at{s};
  const BlockChunk k = block_chunk(at, false);
  const std::int64_t g = k.g, Q = s.Q();
  for_each_element(k.q, k.q, [&](std::int64_t t, std::int64_t j, std::int64_t) {
    if (j > t) return;
    const float *C = Cm + at.bc(k.b, k.t0 + t, g), *B = Bm + at.bc(k.b, k.t0 + j, g);
    float acc = 0.0f;
    for (std::int64_t n = 0; n < s.N; ++n) acc += C[n] * B[n];
    CB[at.mat(k.b, k.c, g) + t * Q + j] = acc;
  });
}

// Rows and columns of a tile of Y_diag = M X.
constexpr int kTile = 32;

// Shared memory of the tiled Y_diag, in floats: a column tile's X rows (kTile, P), its weights
// W (kTile, kTile + 1: odd stride, so the row threads' writes hit 32 banks), and the output
// tile's sums (kTile, P).
__host__ __device__ std::int64_t diag_smem_floats(std::int64_t P) {
  return 2 * kTile * P + kTile * (kTile + 1);
}

// y = Y_diag + D x of one (c, h, b), tiled. Per tile of kTile output rows, the column tiles at
// or before it run in descending order: thread r < kTile writes row t = r0 + r of the weights,
// W[t, j] = CB[t, j] exp(cum_t - cum_j) dt_j, each once (not once per channel), its log-decay
// sum carried from tile to tile as a running sum (the twin's segsum); the block stages the
// tile's X rows; every thread adds W X into the output elements it owns (the same ones in every
// loop, so the sums need no barrier of their own).
__device__ void chunk_diag_output(const Layout& at, const BlockChunk& k, const float* x,
                                  const float* dt, float A_h, const float* D, const float* cb,
                                  float* y, float* smem) {
  const std::int64_t P = at.s.P, Q = at.s.Q(), h = k.h, r = threadIdx.x;
  float *Xs = smem, *W = Xs + kTile * P, *sums = W + kTile * (kTile + 1);
  for (std::int64_t r0 = 0; r0 < k.q; r0 += kTile) {
    for (std::int64_t i = threadIdx.x; i < kTile * P; i += kThreads) sums[i] = 0.0f;
    const std::int64_t t = r0 + r;
    float seg = 0.0f;  // row thread r: sum of dt_j A over the steps (j, t] done so far
    for (std::int64_t s0 = r0; s0 >= 0; s0 -= kTile) {
      for (std::int64_t i = threadIdx.x; i < kTile * P; i += kThreads) {
        const std::int64_t j = s0 + i / P;
        Xs[i] = j < k.q ? x[at.x(k.b, k.t0 + j, h) + i % P] : 0.0f;
      }
      for (int c = kTile - 1; c >= 0 && r < kTile; --c) {
        const std::int64_t j = s0 + c;
        float w = 0.0f;
        if (t < k.q && j <= t) {
          const float dt_j = dt[at.dt(k.b, k.t0 + j, h)];
          w = cb[t * Q + j] * expf(seg) * dt_j;
          seg += dt_j * A_h;
        }
        W[r * (kTile + 1) + c] = w;
      }
      __syncthreads();  // X rows and weights staged
      for (std::int64_t i = threadIdx.x; i < kTile * P; i += kThreads) {
        const float* w = W + (i / P) * (kTile + 1);
        float sum = 0.0f;
        for (int c = 0; c < kTile; ++c) sum += w[c] * Xs[c * P + i % P];
        sums[i] += sum;
      }
      __syncthreads();  // every thread is done with them before the next tile's staging
    }
    for (std::int64_t i = threadIdx.x; i < kTile * P; i += kThreads) {
      const std::int64_t row = r0 + i / P, p = i % P;
      if (row >= k.q) continue;
      const float xd = D ? D[h] * x[at.x(k.b, k.t0 + row, h) + p] : 0.0f;
      y[at.x(k.b, k.t0 + row, h) + p] = sums[i] + xd;
    }
  }
}

// Forward, per (c, h, b): y = Y_diag + D x (tiled, above), and the chunk's own end state S into
// h_saved.
__global__ void __launch_bounds__(kThreads)
    ssd_chunk_forward_kernel(SsdShape s, const float* __restrict__ x, const float* __restrict__ dt,
                             const float* __restrict__ A, const float* __restrict__ Bm,
                             const float* __restrict__ D, const float* __restrict__ CB,
                             float* __restrict__ y, float* __restrict__ h_saved) {
  SSMTUNE_DYNAMIC_SHARED(float, smem);
  const Layout at{s};
  const BlockChunk k = block_chunk(at, true);
  const std::int64_t h = k.h, g = k.g, P = s.P, N = s.N;
  const float A_h = A[h];
  chunk_diag_output(at, k, x, dt, A_h, D, CB + at.mat(k.b, k.c, g), y, smem);
  // S[p, n] = sum_j exp(cum_end - cum_j) dt_j x[j, p] B[j, n].
  for_each_element(P, N, [&](std::int64_t p, std::int64_t n, std::int64_t i) {
    float acc = 0.0f, seg = 0.0f;
    for (std::int64_t j = k.q - 1; j >= 0; --j) {
      const float dt_j = dt[at.dt(k.b, k.t0 + j, h)];
      acc += expf(seg) * dt_j * x[at.x(k.b, k.t0 + j, h) + p] * Bm[at.bc(k.b, k.t0 + j, g) + n];
      seg += dt_j * A_h;
    }
    h_saved[at.saved(k.b, k.c, h) + i] = acc;
  });
}

// The recurrence across chunks, one thread per (b, h, state element), chunks in order (forward)
// or reversed (backward): buf[c] holds the chunk's own term on entry and the carried value on
// exit; carry = exp(cum_end_c) carry + own, from init (or zeros); out gets the final carry.
// Grid (state elements / kThreads, H, B): no 64-bit division (ptxas made one a call with a
// stack frame here).
__global__ void __launch_bounds__(kThreads)
    ssd_carry_kernel(SsdShape s, bool reverse, const float* __restrict__ cum,
                     const float* __restrict__ init, float* __restrict__ buf,
                     float* __restrict__ out) {
  const Layout at{s};
  const std::int64_t e = std::int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= s.P * s.N) return;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, nc = s.n_chunks();
  float carry = init ? init[at.state(b, h) + e] : 0.0f;
  for (std::int64_t n = 0; n < nc; ++n) {
    const std::int64_t c = reverse ? nc - 1 - n : n;
    const float a = expf(cum[at.vec(b, c, h) + at.steps(c) - 1]);
    float* term = buf + at.saved(b, c, h) + e;
    const float own = *term;
    *term = carry;
    carry = a * carry + own;
  }
  if (out) out[at.state(b, h) + e] = carry;
}

// Forward, per (c, h, b): y[t, p] += exp(cum_t) (h_c C_t)[p], the state carried in.
__global__ void __launch_bounds__(kThreads)
    ssd_chunk_output_kernel(SsdShape s, const float* __restrict__ Cm, const float* __restrict__ cum,
                            const float* __restrict__ h_saved, float* __restrict__ y) {
  const Layout at{s};
  const BlockChunk k = block_chunk(at, true);
  const float* h_c = h_saved + at.saved(k.b, k.c, k.h);
  for_each_element(k.q, s.P, [&](std::int64_t t, std::int64_t p, std::int64_t) {
    const float* C = Cm + at.bc(k.b, k.t0 + t, k.g);
    float acc = 0.0f;
    for (std::int64_t n = 0; n < s.N; ++n) acc += C[n] * h_c[p * s.N + n];
    y[at.x(k.b, k.t0 + t, k.h) + p] += expf(cum[at.vec(k.b, k.c, k.h) + t]) * acc;
  });
}

// Backward, per (c, h, b): the chunk's own term of dL/dh_c, dY^T diag(exp(cum)) C: (P, N).
__global__ void __launch_bounds__(kThreads)
    ssd_state_grad_kernel(SsdShape s, const float* __restrict__ Cm, const float* __restrict__ dy,
                          const float* __restrict__ cum, float* __restrict__ dstate) {
  const Layout at{s};
  const BlockChunk k = block_chunk(at, true);
  const float* cum_c = cum + at.vec(k.b, k.c, k.h);
  for_each_element(s.P, s.N, [&](std::int64_t p, std::int64_t n, std::int64_t i) {
    float acc = 0.0f;
    for (std::int64_t t = 0; t < k.q; ++t)
      acc += dy[at.x(k.b, k.t0 + t, k.h) + p] * expf(cum_c[t]) * Cm[at.bc(k.b, k.t0 + t, k.g) + n];
    dstate[at.saved(k.b, k.c, k.h) + i] = acc;
  });
}

// dY_t . X_j over the head's P channels (dM[t, j] of Y_diag = M X).
__device__ __forceinline__ float dy_dot_x(const Layout& at, const BlockChunk& k, std::int64_t h,
                                          const float* dy, const float* x, std::int64_t t,
                                          std::int64_t j) {
  const float *a = dy + at.x(k.b, k.t0 + t, h), *b = x + at.x(k.b, k.t0 + j, h);
  float acc = 0.0f;
  for (std::int64_t p = 0; p < at.s.P; ++p) acc += a[p] * b[p];
  return acc;
}

// Backward, per (c, g, b), one thread per row t: dCB[t, j] = sum over the group's heads of
// dM[t, j] exp(cum_t - cum_j) dt_j, j <= t.
__global__ void __launch_bounds__(kThreads)
    ssd_dcb_kernel(SsdShape s, const float* __restrict__ x, const float* __restrict__ dt,
                   const float* __restrict__ A, const float* __restrict__ dy,
                   float* __restrict__ dCB) {
  const Layout at{s};
  const BlockChunk k = block_chunk(at, false);
  const std::int64_t g = k.g, hpg = s.H / s.G, Q = s.Q();
  float* row0 = dCB + at.mat(k.b, k.c, g);
  for (std::int64_t t = threadIdx.x; t < k.q; t += kThreads) {
    float* row = row0 + t * Q;
    for (std::int64_t j = 0; j <= t; ++j) row[j] = 0.0f;
    for (std::int64_t h = g * hpg; h < (g + 1) * hpg; ++h) {
      float seg = 0.0f;
      for (std::int64_t j = t; j >= 0; --j) {
        const float dt_j = dt[at.dt(k.b, k.t0 + j, h)];
        row[j] += dy_dot_x(at, k, h, dy, x, t, j) * expf(seg) * dt_j;
        seg += dt_j * A[h];
      }
    }
  }
}

// The backward's per-step vectors of one (b, c, h), in the workspace.
struct StepVectors {
  double *col_r, *row_d, *dww;  // sum_t r[t, j] (t > j); sum_j r[t, j] (j < t) + Y_off's term;
                                // dw_j w_j
  float *ddt_c, *w;             // dt's direct terms; w_j = exp(cum_end - cum_j) dt_j
};

__device__ __forceinline__ StepVectors step_vectors(const Layout& at, double* wsd, float* wsf,
                                                    std::int64_t off) {
  const std::int64_t n = at.n_vec();
  return {wsd + off, wsd + n + off, wsd + 2 * n + off, wsf + off, wsf + n + off};
}

// Backward, per (c, h, b): dx, ddt and the chunk's partials of dA and dD (docs/models.md
// "Mamba-2 SSD scan", backward). Columns j (thread per j), rows t (thread per t) and dx
// elements (thread per (j, p)) each walk their line of the masked (q, q) kernel with a running
// log decay; one thread then adds the log-decay gradients in reverse step order, in double.
__global__ void __launch_bounds__(kThreads) ssd_chunk_backward_kernel(
    SsdShape s, const float* __restrict__ x, const float* __restrict__ dt,
    const float* __restrict__ A, const float* __restrict__ Bm, const float* __restrict__ Cm,
    const float* __restrict__ D, const float* __restrict__ h_saved, const float* __restrict__ dy,
    const float* __restrict__ cum, const double* __restrict__ cum_d, const float* __restrict__ CB,
    const float* __restrict__ dstate, float* __restrict__ dx, float* __restrict__ ddt,
    double* __restrict__ wsd, float* __restrict__ wsf, float* __restrict__ partials) {
  __shared__ double scratch[kThreads / 32];
  const Layout at{s};
  const BlockChunk k = block_chunk(at, true);
  const std::int64_t h = k.h, g = k.g, P = s.P, N = s.N, Q = s.Q(), q = k.q;
  const float A_h = A[h];
  const float *cb = CB + at.mat(k.b, k.c, g), *cum_c = cum + at.vec(k.b, k.c, h);
  const float *h_c = h_saved + at.saved(k.b, k.c, h), *Gn = dstate + at.saved(k.b, k.c, h);
  const StepVectors v = step_vectors(at, wsd, wsf, at.vec(k.b, k.c, h));
  const auto dt_at = [&](std::int64_t j) { return dt[at.dt(k.b, k.t0 + j, h)]; };
  // U[j, p] = B_j . Gn[p, :], the chunk-end state's gradient seen from step j.
  const auto U = [&](std::int64_t j, std::int64_t p) {
    const float* B = Bm + at.bc(k.b, k.t0 + j, g);
    float acc = 0.0f;
    for (std::int64_t n = 0; n < N; ++n) acc += B[n] * Gn[p * N + n];
    return acc;
  };
  // cum_t - cum_j from double cumulative sums (nearly exact), rounded once: the row and the
  // column threads get the same bits for r[t, j], so its + and - in the log-decay gradient
  // cancel exactly (with running float sums they cancelled to ~1e-5 of dA at chunk 256).
  const double* cd = cum_d + at.vec(k.b, k.c, h);
  const auto log_decay = [&](std::int64_t t, std::int64_t j) { return float(cd[t] - cd[j]); };
  const auto r_of = [&](float dM, std::int64_t t, std::int64_t j, float L) {
    return dM * cb[t * Q + j] * L * dt_at(j);
  };
  // Columns: dt_j's direct terms, the column sums of r = dM ∘ M, and the state terms.
  for (std::int64_t j = threadIdx.x; j < q; j += kThreads) {
    const float dt_j = dt_at(j);
    double col = 0.0;
    float direct = 0.0f;
    for (std::int64_t t = j; t < q; ++t) {
      const float L = expf(log_decay(t, j)), dM = dy_dot_x(at, k, h, dy, x, t, j);
      if (t > j) col += double(r_of(dM, t, j, L));
      direct += dM * cb[t * Q + j] * L;
    }
    const float decay = expf(log_decay(q - 1, j)), w = decay * dt_j;
    float dw = 0.0f;
    for (std::int64_t p = 0; p < P; ++p) dw += x[at.x(k.b, k.t0 + j, h) + p] * U(j, p);
    v.col_r[j] = col;
    v.dww[j] = double(dw) * w;
    v.ddt_c[j] = direct + dw * decay;
    v.w[j] = w;
  }
  // Rows: the row sums of r, and Y_off's term C_t . W_t, W = exp(cum_t) dY_t h_c.
  for (std::int64_t t = threadIdx.x; t < q; t += kThreads) {
    double row = 0.0;
    for (std::int64_t j = 0; j < t; ++j)
      row += double(r_of(dy_dot_x(at, k, h, dy, x, t, j), t, j, expf(log_decay(t, j))));
    const float* dY = dy + at.x(k.b, k.t0 + t, h);
    const float* C = Cm + at.bc(k.b, k.t0 + t, g);
    float off = 0.0f;
    for (std::int64_t n = 0; n < N; ++n) {
      float wv = 0.0f;
      for (std::int64_t p = 0; p < P; ++p) wv += dY[p] * h_c[p * N + n];
      off += C[n] * wv;
    }
    v.row_d[t] = row + double(expf(cum_c[t]) * off);
  }
  // dx[j, p] = sum_{t >= j} M[t, j] dY[t, p] + w_j U[j, p] + D dY[j, p]; and dD's sum dY x.
  double dD_sum = 0.0;
  for_each_element(q, P, [&](std::int64_t j, std::int64_t p, std::int64_t) {
    const float dt_j = dt_at(j);
    float acc = 0.0f, seg = 0.0f;
    for (std::int64_t t = j; t < q; ++t) {
      if (t > j) seg += dt_at(t) * A_h;
      acc += cb[t * Q + j] * expf(seg) * dt_j * dy[at.x(k.b, k.t0 + t, h) + p];
    }
    const float dY = dy[at.x(k.b, k.t0 + j, h) + p];
    dx[at.x(k.b, k.t0 + j, h) + p] = acc + expf(seg) * dt_j * U(j, p) + (D ? D[h] * dY : 0.0f);
    dD_sum += double(dY * x[at.x(k.b, k.t0 + j, h) + p]);
  });
  double gh = 0.0;  // <Gn, h_c>
  for (std::int64_t i = threadIdx.x; i < P * N; i += kThreads) gh += double(Gn[i] * h_c[i]);
  dD_sum = block_reduce(dD_sum, scratch, 0.0, SumOp{});
  gh = block_reduce(gh, scratch, 0.0, SumOp{});  // its barriers order the vectors' writes too
  if (threadIdx.x != 0) return;
  // dcum_t = row - col - dw w (+ the chunk-end terms at t = q - 1); dt's log-decay gradient is
  // the reverse cumulative sum of dcum.
  double dcum_end = double(expf(cum_c[q - 1])) * gh;
  for (std::int64_t j = 0; j < q; ++j) dcum_end += v.dww[j];
  double run = 0.0, dA = 0.0;
  for (std::int64_t j = q - 1; j >= 0; --j) {
    run += v.row_d[j] - v.col_r[j] - v.dww[j] + (j == q - 1 ? dcum_end : 0.0);
    ddt[at.dt(k.b, k.t0 + j, h)] = float(double(v.ddt_c[j]) + run * A_h);
    dA += run * dt_at(j);
  }
  const std::int64_t bch = (k.b * s.n_chunks() + k.c) * s.H + h;
  partials[2 * bch] = float(dA);
  partials[2 * bch + 1] = float(dD_sum);
}

// Backward, per (c, g, b), one thread per (t, n): dCm and dBm, summed over the group's heads.
//   dC[t] = sum_{j <= t} dCB[t, j] B_j + sum_h exp(cum_t) dY_t h_c
//   dB[j] = sum_{t >= j} dCB[t, j] C_t + sum_h w_j X_j Gn
__global__ void __launch_bounds__(kThreads)
    ssd_dbc_kernel(SsdShape s, const float* __restrict__ x, const float* __restrict__ Bm,
                   const float* __restrict__ Cm, const float* __restrict__ h_saved,
                   const float* __restrict__ dy, const float* __restrict__ cum,
                   const float* __restrict__ dCB, const float* __restrict__ dstate,
                   const float* __restrict__ w, float* __restrict__ dBm, float* __restrict__ dCm) {
  const Layout at{s};
  const BlockChunk k = block_chunk(at, false);
  const std::int64_t g = k.g, hpg = s.H / s.G, P = s.P, N = s.N, Q = s.Q();
  const float* dcb = dCB + at.mat(k.b, k.c, g);
  for_each_element(k.q, N, [&](std::int64_t t, std::int64_t n, std::int64_t) {
    float dc = 0.0f, db = 0.0f;
    for (std::int64_t j = 0; j <= t; ++j) dc += dcb[t * Q + j] * Bm[at.bc(k.b, k.t0 + j, g) + n];
    for (std::int64_t j = t; j < k.q; ++j) db += dcb[j * Q + t] * Cm[at.bc(k.b, k.t0 + j, g) + n];
    for (std::int64_t h = g * hpg; h < (g + 1) * hpg; ++h) {
      const float *h_c = h_saved + at.saved(k.b, k.c, h), *Gn = dstate + at.saved(k.b, k.c, h);
      const float *dY = dy + at.x(k.b, k.t0 + t, h), *X = x + at.x(k.b, k.t0 + t, h);
      float wc = 0.0f, wb = 0.0f;
      for (std::int64_t p = 0; p < P; ++p) {
        wc += dY[p] * h_c[p * N + n];
        wb += X[p] * Gn[p * N + n];
      }
      dc += expf(cum[at.vec(k.b, k.c, h) + t]) * wc;
      db += w[at.vec(k.b, k.c, h) + t] * wb;
    }
    dCm[at.bc(k.b, k.t0 + t, g) + n] = dc;
    dBm[at.bc(k.b, k.t0 + t, g) + n] = db;
  });
}

// dA[h] += and dD[h] += the (b, c) partials, in (b, c) order: one thread per head.
__global__ void __launch_bounds__(kThreads)
    ssd_param_grads_kernel(SsdShape s, const float* __restrict__ partials, float* __restrict__ dA,
                           float* __restrict__ dD) {
  const std::int64_t h = std::int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (h >= s.H) return;
  float a = 0.0f, d = 0.0f;
  for (std::int64_t bc = 0; bc < s.B * s.n_chunks(); ++bc) {
    a += partials[2 * (bc * s.H + h)];
    d += partials[2 * (bc * s.H + h) + 1];
  }
  dA[h] += a;
  if (dD) dD[h] += d;
}

unsigned blocks_for(std::int64_t threads) { return unsigned((threads + kThreads - 1) / kThreads); }

dim3 per_state(const SsdShape& s) {
  return dim3(blocks_for(s.P * s.N), unsigned(s.H), unsigned(s.B));
}

bool empty(const SsdShape& s) { return s.B == 0 || s.L == 0 || s.H == 0; }

// The forward's part of the workspace: cum (n_vec floats), then CB (n_mat floats).
struct ForwardWorkspace {
  float *cum, *CB;
  ForwardWorkspace(const Layout& at, float* ws) : cum(ws), CB(ws + at.n_vec()) {}
  static std::int64_t floats(const Layout& at) { return at.n_vec() + at.n_mat(); }
};

// cum and CB, which both passes start from.
void chunk_decays_and_cb(const SsdShape& s, const float* dt, const float* A, const float* Bm,
                         const float* Cm, const ForwardWorkspace& w, double* cum_d,
                         cudaStream_t stream) {
  const dim3 per_group(unsigned(s.n_chunks()), unsigned(s.G), unsigned(s.B));
  SSMTUNE_LAUNCH(ssd_cumsum_kernel, dim3(blocks_for(s.B * s.n_chunks() * s.H)), dim3(kThreads), 0,
                 stream, s, dt, A, w.cum, cum_d);
  SSMTUNE_LAUNCH(ssd_cb_kernel, per_group, dim3(kThreads), 0, stream, s, Bm, Cm, w.CB);
}

}  // namespace

std::int64_t ssd_forward_workspace_floats(const SsdShape& s) {
  return ForwardWorkspace::floats(Layout{s});
}

void ssd_forward(const SsdShape& s, const float* x, const float* dt, const float* A,
                 const float* Bm, const float* Cm, const float* D, const float* h0, float* y,
                 float* h_saved, float* h_last, float* workspace, cudaStream_t stream) {
  if (empty(s)) return;
  const Layout at{s};
  const ForwardWorkspace w(at, workspace);
  const dim3 per_head(unsigned(s.n_chunks()), unsigned(s.H), unsigned(s.B));
  chunk_decays_and_cb(s, dt, A, Bm, Cm, w, static_cast<double*>(nullptr), stream);
  const std::int64_t diag_bytes = diag_smem_floats(s.P) * std::int64_t(sizeof(float));
  if (diag_bytes > 48 * 1024)
    cudaFuncSetAttribute(ssd_chunk_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         int(diag_bytes));
  SSMTUNE_LAUNCH(ssd_chunk_forward_kernel, per_head, dim3(kThreads), std::size_t(diag_bytes),
                 stream, s, x, dt, A, Bm, D, w.CB, y, h_saved);
  SSMTUNE_LAUNCH(ssd_carry_kernel, per_state(s), dim3(kThreads), 0, stream, s, false, w.cum, h0,
                 h_saved, h_last);
  SSMTUNE_LAUNCH(ssd_chunk_output_kernel, per_head, dim3(kThreads), 0, stream, s, Cm, w.cum,
                 h_saved, y);
}

// Backward workspace: 4 n_vec doubles (the step vectors' sums, cum in double), then floats: the
// forward's cum and CB, dCB (n_mat), dstate (B n_chunks H P N), ddt_c and w (2 n_vec), partials
// (2 B n_chunks H).
std::int64_t ssd_backward_workspace_floats(const SsdShape& s) {
  const Layout at{s};
  return 2 * 4 * at.n_vec() + ForwardWorkspace::floats(at) + at.n_mat() +
         s.B * s.n_chunks() * s.H * s.P * s.N + 2 * at.n_vec() + 2 * s.B * s.n_chunks() * s.H;
}

void ssd_backward(const SsdShape& s, const float* x, const float* dt, const float* A,
                  const float* Bm, const float* Cm, const float* D, const float* h_saved,
                  const float* dy, float* dx, float* ddt, float* dA, float* dBm, float* dCm,
                  float* dD, float* dh0, float* workspace, cudaStream_t stream) {
  if (empty(s)) return;
  const Layout at{s};
  double* wsd = reinterpret_cast<double*>(workspace);
  double* cum_d = wsd + 3 * at.n_vec();
  float* rest = workspace + 2 * 4 * at.n_vec();
  const ForwardWorkspace w(at, rest);
  float* dCB = rest + ForwardWorkspace::floats(at);
  float* dstate = dCB + at.n_mat();
  float* wsf = dstate + s.B * s.n_chunks() * s.H * s.P * s.N;
  float* partials = wsf + 2 * at.n_vec();
  const dim3 per_head(unsigned(s.n_chunks()), unsigned(s.H), unsigned(s.B));
  const dim3 per_group(unsigned(s.n_chunks()), unsigned(s.G), unsigned(s.B));
  chunk_decays_and_cb(s, dt, A, Bm, Cm, w, cum_d, stream);
  SSMTUNE_LAUNCH(ssd_state_grad_kernel, per_head, dim3(kThreads), 0, stream, s, Cm, dy, w.cum,
                 dstate);
  SSMTUNE_LAUNCH(ssd_carry_kernel, per_state(s), dim3(kThreads), 0, stream, s, true, w.cum,
                 static_cast<const float*>(nullptr), dstate, dh0);
  SSMTUNE_LAUNCH(ssd_dcb_kernel, per_group, dim3(kThreads), 0, stream, s, x, dt, A, dy, dCB);
  SSMTUNE_LAUNCH(ssd_chunk_backward_kernel, per_head, dim3(kThreads), 0, stream, s, x, dt, A, Bm,
                 Cm, D, h_saved, dy, w.cum, cum_d, w.CB, dstate, dx, ddt, wsd, wsf, partials);
  SSMTUNE_LAUNCH(ssd_dbc_kernel, per_group, dim3(kThreads), 0, stream, s, x, Bm, Cm, h_saved, dy,
                 w.cum, dCB, dstate, wsf + at.n_vec(), dBm, dCm);
  SSMTUNE_LAUNCH(ssd_param_grads_kernel, dim3(blocks_for(s.H)), dim3(kThreads), 0, stream, s,
                 partials, dA, dD);
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune::kernels
