// Test problems for the SSD scan op (Backend::ssd_forward / ssd_backward), shared by the CPU
// tests (cpu_ssd_test.cpp) and the emulated CUDA tests (cuda_emu_ssd_test.cpp): the shapes every
// implementation must agree on, random F64 inputs, and the calls that run one case on a backend.
#pragma once

#include <ostream>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "gradient_check.h"

namespace ssmtune::testing {

struct SsdShape {
  std::int64_t B, L, H, P, G, N, chunk;
  bool with_D, with_h0;
  std::int64_t n_chunks() const { return (L + chunk - 1) / chunk; }
};

inline std::ostream& operator<<(std::ostream& os, const SsdShape& s) {
  return os << "B=" << s.B << " L=" << s.L << " H=" << s.H << " P=" << s.P << " G=" << s.G
            << " N=" << s.N << " chunk=" << s.chunk << " D=" << s.with_D << " h0=" << s.with_h0;
}

// The shapes of the brief: one group and several (H / G = 2 and 3), L a multiple of the chunk,
// not a multiple (a ragged last chunk), shorter than one chunk, chunk = 1, L = 1; D and h0 on
// and off. Small, so a finite-difference check of every element stays quick.
inline std::vector<SsdShape> ssd_shapes() {
  return {
      {2, 12, 3, 4, 1, 5, 4, true, true},    // G = 1, L a multiple of the chunk
      {2, 13, 4, 3, 2, 4, 5, true, false},   // G = 2, ragged last chunk (5, 5, 3)
      {1, 11, 6, 2, 2, 3, 4, false, true},   // three heads per group, no D
      {1, 7, 2, 3, 2, 3, 16, false, false},  // L < chunk: one partial chunk
      {2, 5, 2, 2, 1, 3, 1, true, true},     // chunk = 1: a saved state per step
      {1, 1, 2, 3, 1, 2, 3, true, true},     // one step
  };
}

// Longer sequences for the chunked algorithms (too slow for a finite-difference check of every
// element): chunks of 64, 80 and 256 steps (the model default), so more than one 32-row tile
// of the CUDA kernels per chunk, ragged last chunks, B = 2 without D.
inline std::vector<SsdShape> ssd_long_shapes() {
  return {
      {1, 300, 4, 16, 2, 16, 64, true, true},
      {2, 150, 4, 5, 2, 4, 80, false, true},
      {1, 520, 2, 32, 1, 32, 256, true, true},
  };
}

struct SsdCase {
  SsdShape s;
  Backend::SsdInputs in;  // F64
  Tensor dy;
};

// dt in [0.05, 1) (softplus output, clamped) and A in [-2, -0.1] (A = -exp(A_log)): decays
// exp(dt A) in [0.13, 1), the range a trained Mamba-2 runs in.
inline SsdCase make_ssd_case(const SsdShape& s, std::uint64_t seed) {
  SsdCase c{s, {}, {}};
  std::mt19937_64 rng(seed);
  c.in.x = random_f64({s.B, s.L, s.H, s.P}, rng);
  c.in.dt = random_f64({s.B, s.L, s.H}, rng, 0.05, 1.0);
  c.in.A = random_f64({s.H}, rng, -2.0, -0.1);
  c.in.Bm = random_f64({s.B, s.L, s.G, s.N}, rng);
  c.in.Cm = random_f64({s.B, s.L, s.G, s.N}, rng);
  if (s.with_D) c.in.D = random_f64({s.H}, rng);
  if (s.with_h0) c.in.h0 = random_f64({s.B, s.H, s.P, s.N}, rng);
  c.in.chunk = s.chunk;
  c.dy = random_f64({s.B, s.L, s.H, s.P}, rng);
  return c;
}

// The case's inputs as `dtype` (fresh copies, so each backend moves its own).
inline Backend::SsdInputs ssd_inputs_as(const SsdCase& c, DType dtype) {
  const auto as = [&](const Tensor& t) { return t.defined() ? t.to(dtype) : Tensor(); };
  const Backend::SsdInputs& in = c.in;
  return {as(in.x), as(in.dt), as(in.A), as(in.Bm), as(in.Cm), as(in.D), as(in.h0), in.chunk};
}

struct SsdForward {
  Tensor y, h_saved, h_last;
};

inline SsdForward run_ssd_forward(Backend& be, const Backend::SsdInputs& in, const SsdShape& s) {
  const DType dt = in.x.dtype();
  SsdForward f{be.empty({s.B, s.L, s.H, s.P}, dt), be.empty({s.B, s.n_chunks(), s.H, s.P, s.N}, dt),
               be.empty({s.B, s.H, s.P, s.N}, dt)};
  be.ssd_forward(in, f.y, f.h_saved, f.h_last);
  return f;
}

// dA and dD start at `acc0` (accumulated into); dh0 only where h0 is defined.
inline Backend::SsdGrads run_ssd_backward(Backend& be, const Backend::SsdInputs& in,
                                          const SsdShape& s, const Tensor& h_saved,
                                          const Tensor& dy, double acc0 = 0) {
  const DType dt = in.x.dtype();
  Backend::SsdGrads g;
  g.dx = be.empty(in.x.shape(), dt);
  g.ddt = be.empty(in.dt.shape(), dt);
  g.dBm = be.empty(in.Bm.shape(), dt);
  g.dCm = be.empty(in.Cm.shape(), dt);
  Tensor filled = Tensor::empty({s.H}, DType::F64);
  for (std::int64_t i = 0; i < s.H; ++i) filled.data<double>()[i] = acc0;
  g.dA = filled.to(dt);
  if (s.with_D) g.dD = filled.to(dt);
  if (s.with_h0) g.dh0 = be.empty({s.B, s.H, s.P, s.N}, dt);
  be.ssd_backward(in, h_saved, dy, g);
  return g;
}

}  // namespace ssmtune::testing
