// Offsets into the SSD op's tensors (ssd_cpu.h), shared by the sequential reference and the
// chunked algorithm so both read the same layouts.
#pragma once

#include <cstdint>

#include "backend/cpu/ssd_cpu.h"

namespace ssmtune::cpu {

struct SsdLayout {
  const SsdDims& d;
  // x, y, dx, dy: (B, L, H, P); one head's rows are H P apart.
  std::int64_t x(std::int64_t b, std::int64_t t, std::int64_t h) const {
    return ((b * d.seqlen + t) * d.n_heads + h) * d.head_dim;
  }
  std::int64_t x_stride() const { return d.n_heads * d.head_dim; }
  // dt, ddt: (B, L, H); one head's steps are H apart.
  std::int64_t dt(std::int64_t b, std::int64_t t, std::int64_t h) const {
    return (b * d.seqlen + t) * d.n_heads + h;
  }
  // Bm, Cm: (B, L, G, N); one group's rows are G N apart.
  std::int64_t bc(std::int64_t b, std::int64_t t, std::int64_t g) const {
    return ((b * d.seqlen + t) * d.n_groups + g) * d.d_state;
  }
  std::int64_t bc_stride() const { return d.n_groups * d.d_state; }
  // h0, h_last, dh0: (B, H, P, N)
  std::int64_t state(std::int64_t b, std::int64_t h) const {
    return (b * d.n_heads + h) * state_size();
  }
  // h_saved: (B, n_chunks, H, P, N)
  std::int64_t saved(std::int64_t b, std::int64_t c, std::int64_t h) const {
    return ((b * d.n_chunks() + c) * d.n_heads + h) * state_size();
  }
  std::int64_t state_size() const { return d.head_dim * d.d_state; }
  std::int64_t group_of(std::int64_t h) const { return h / d.heads_per_group(); }
};

}  // namespace ssmtune::cpu
