// Ranges of time steps of (B, L, C) activations, for the methods that put learned vectors in
// front of a sequence (virtual tokens, a learned conv state) and drop their outputs again. A
// (B, L, C) tensor is a (B, L*C) matrix whose columns [t*C, (t+n)*C) are steps t .. t+n-1, so
// the backend's column copies do the work.
#pragma once

#include <cstdint>

#include "backend/backend.h"

namespace ssmtune {

// dst[:, t0 : t0+n] = src         src: (B, n, C)   dst: (B, L, C)
void put_steps(Backend& be, const Tensor& src, std::int64_t t0, Tensor& dst);
// dst = src[:, t0 : t0+n]         src: (B, L, C)   dst: (B, n, C)
void take_steps(Backend& be, const Tensor& src, std::int64_t t0, Tensor& dst);
// dst[b, t0 : t0+T] = v for every b            v: (T, C) or (1, T, C)   dst: (B, L, C)
void put_steps_broadcast(Backend& be, const Tensor& v, std::int64_t t0, Tensor& dst);
// dv += sum over b of src[b, t0 : t0+T]        src: (B, L, C)   dv: (T, C) or (1, T, C)
void sum_steps(Backend& be, const Tensor& src, std::int64_t t0, Tensor& dv);
// [v ; x] per sequence: (B, T+L, C)            v: (T, C)   x: (B, L, C)
Tensor prepend_steps(Backend& be, const Tensor& v, const Tensor& x);

}  // namespace ssmtune
