// exp, log and softplus for the CPU hot loops (scan, SiLU, gate, softplus, cross-entropy).
// std::exp and std::log1p are library calls that stop the compiler from vectorising a loop;
// these are plain arithmetic, so loops over them vectorise. float: Cephes' expf and logf
// polynomials (relative error < 2 ulp, checked against the library in
// tests/cpu_fast_exp_test.cpp). double keeps the library: double is the precision of the
// gradient checks, not a speed path.
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

// log for x >= 1, finite (softplus below): Cephes' logf polynomial on the mantissa, plain
// arithmetic like fast_exp (relative error < 2 ulp; tests/cpu_fast_exp_test.cpp).
inline float fast_log(float x) {
  const std::int32_t bits = std::bit_cast<std::int32_t>(x);
  std::int32_t e = ((bits >> 23) & 0xff) - 126;                        // x = m 2^e, m in [0.5, 1)
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);
  const bool low = m < 0.707106781186547524f;                          // m in [sqrt(1/2), sqrt(2))
  e = low ? e - 1 : e;
  m = low ? m + m : m;
  const float f = m - 1.0f, z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float fe = float(e);
  y += -2.12194440e-4f * fe - 0.5f * z;  // ln2 split in two, as in fast_exp
  return f + y + 0.693359375f * fe;
}

// softplus(x) = log(1 + exp(x)), x itself above kSoftplusThreshold (where they agree in float),
// as torch's softplus with threshold 20; softplus's backward switches there too. log1p(t) as
// log(u) * t / (u - 1), u = 1 + t rounded: exact to the log's error even where t is far below 1
// (Goldberg's compensation), with no library call; where u rounds to 1, log(u) is 0 and t is
// added instead.
// Written without a select whose one side is the division: GCC moves such a side into a branch,
// and a division under a branch may trap, so the loop over softplus would not vectorise (it ran
// ~12x slower than SiLU's). Both picks below are sums with one term zeroed, the same bits as
// the selects for every input, infinities and NaN included.
inline constexpr double kSoftplusThreshold = 20.0;
inline float fast_softplus(float x) {
  const float t = fast_exp(x);
  const float u = 1.0f + t;
  const float d = u - 1.0f;
  const bool u_is_1 = d == 0.0f;
  const float log1p_t = fast_log(u) * (t / (u_is_1 ? 1.0f : d)) + (u_is_1 ? t : 0.0f);
  const bool above = x > float(kSoftplusThreshold);
  return (above ? x : 0.0f) + (above ? 0.0f : 1.0f) * log1p_t;
}
inline double fast_softplus(double x) {
  return x > kSoftplusThreshold ? x : std::log1p(std::exp(x));
}

template <class T> [[gnu::always_inline]] inline T fast_sigmoid(T v) {
  return T(1) / (T(1) + fast_exp(-v));
}

// dL/dx of softplus(x) given dL/dy: dy * sigmoid(x), and dy itself above the threshold where
// softplus is x. The softplus op's backward and the scan's own softplus (ScanDims) both call
// this, so the two give the same bits. Above the threshold it takes sigmoid(100), which is 1
// exactly in float and double (exp(-100) is below half an ulp of 1): the pick is of the input,
// not of a quotient, so loops over it vectorise (see fast_softplus).
template <class T> [[gnu::always_inline]] inline T softplus_grad(T dy, T x) {
  return dy * fast_sigmoid(x > T(kSoftplusThreshold) ? T(100) : x);
}

}  // namespace ssmtune::cpu
