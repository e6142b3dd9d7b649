// Rng: the one random number generator of ssmtune (xoshiro256**, seeded through splitmix64).
// Its whole state is four 64-bit words, so a checkpoint can save it and a resumed run draws
// exactly the numbers the uninterrupted run would have drawn. Every draw is defined here,
// bit for bit, independent of the C++ library (std::*_distribution is not portable).
#pragma once

#include <array>
#include <cstdint>

namespace ssmtune {

class Rng {
 public:
  using State = std::array<std::uint64_t, 4>;

  explicit Rng(std::uint64_t seed = 0);
  // A generator for a named purpose ("lora-init", "dropout", "shuffle") derived from `seed`,
  // so adding one more consumer of randomness does not shift the numbers the others get.
  static Rng for_stream(std::uint64_t seed, std::uint64_t stream);

  std::uint64_t next_u64();
  double uniform();                      // [0, 1), 53 random bits
  double uniform(double lo, double hi);  // [lo, hi)
  double normal();                       // N(0, 1), Box-Muller (two uniforms per draw)
  std::uint64_t below(std::uint64_t n);  // uniform integer in [0, n), n > 0, unbiased

  const State& state() const { return s_; }
  void set_state(const State& s) { s_ = s; }

 private:
  State s_;
};

// FNV-1a of a string: a stable stream id for Rng::for_stream("name").
std::uint64_t stream_id(const char* name);

}  // namespace ssmtune
