// Counter-based random numbers, the same bits on the host, in a CUDA kernel and under the
// tests' CUDA emulator: number n of stream `key` is SplitMix64's output function applied to
// key + (n + 1) * gamma, i.e. the n-th draw of a SplitMix64 generator seeded with `key` (Steele,
// Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), computed
// without the draws before it. Each GPU thread draws its own elements' numbers directly, so a
// dropout mask is made where it is used (Backend::dropout_mask) instead of on the host and
// uploaded, and both backends make the same mask from the same key.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SSMTUNE_HOST_DEVICE __host__ __device__
#else
#define SSMTUNE_HOST_DEVICE
#endif

namespace ssmtune {

SSMTUNE_HOST_DEVICE inline std::uint64_t counter_u64(std::uint64_t key, std::uint64_t n) {
  std::uint64_t z = key + (n + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Dropout with probability p drops element n of stream `key` when its number's top 53 bits,
// read as a fraction in [0, 1) (as Rng::uniform reads them), are below p: in integers, when
// they are below dropout_threshold(p) = ceil(p * 2^53) (the product is exact: a power of 2).
inline std::uint64_t dropout_threshold(double p) {
  return std::uint64_t(std::ceil(p * 9007199254740992.0));
}
SSMTUNE_HOST_DEVICE inline bool dropout_keeps(std::uint64_t key, std::uint64_t n,
                                              std::uint64_t threshold) {
  return (counter_u64(key, n) >> 11) >= threshold;
}

}  // namespace ssmtune
