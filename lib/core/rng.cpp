#include "core/rng.h"

#include <cmath>

#include "core/error.h"

namespace ssmtune {

namespace {
std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(std::uint64_t seed) {
  for (auto& w : s_) w = splitmix64(seed);
}

Rng Rng::for_stream(std::uint64_t seed, std::uint64_t stream) {
  std::uint64_t mixed = seed;
  const std::uint64_t a = splitmix64(mixed);
  return Rng(a ^ (stream * 0xD1B54A32D192ED03ull));
}

std::uint64_t Rng::next_u64() {  // xoshiro256** (Blackman and Vigna, 2018)
  const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const std::uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }

double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

double Rng::normal() {
  // 1 - uniform() is in (0, 1], so the log is finite.
  const double r = std::sqrt(-2.0 * std::log(1.0 - uniform()));
  return r * std::cos(2.0 * M_PI * uniform());
}

std::uint64_t Rng::below(std::uint64_t n) {
  check(n > 0, "Rng::below(0)");
  // Rejection of the incomplete last block keeps every value equally likely.
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  std::uint64_t x;
  do x = next_u64();
  while (x >= limit);
  return x % n;
}

std::uint64_t stream_id(const char* name) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (const char* p = name; *p; ++p) h = (h ^ std::uint8_t(*p)) * 0x100000001B3ull;
  return h;
}

}  // namespace ssmtune
