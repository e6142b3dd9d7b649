// exp for the CPU hot loops (scan, SiLU, gate, softplus). std::exp is a library call that
// stops the compiler from vectorising a loop; this one is plain arithmetic, so loops over it
// vectorise. float: Cephes' expf polynomial (relative error < 2 ulp over the whole range,
// checked against std::exp in tests/cpu_fast_exp_test.cpp). double keeps std::exp: double is
// the precision of the gradient checks, not a speed path.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace ssmtune::cpu {

inline float fast_exp(float x) {
  // Clamp so that 2^n stays a normal float: above 88.3 the result saturates at exp(88.3) ~ 2e38
  // (callers only exponentiate values <= 0 or feed 1 / (1 + exp)), below -87.3 at ~1e-38.
  x = x > 88.3f ? 88.3f : x;
  x = x < -87.3f ? -87.3f : x;
  // x = n ln2 + r, |r| <= ln2 / 2; n rounded to nearest with the 1.5 * 2^23 trick (no call).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split in two for accuracy
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;  // 2^n
  return p * std::bit_cast<float>(bits);
}

inline double fast_exp(double x) { return std::exp(x); }

}  // namespace ssmtune::cpu
