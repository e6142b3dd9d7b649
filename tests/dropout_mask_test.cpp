// Backend::dropout_mask on the CPU (kernels/counter_rng.h): torch.nn.Dropout's multiplier from
// a counter-based stream. The CUDA backend's bits against these: cuda_emu_backend_test.cpp.
#include <catch2/catch.hpp>

#include <cmath>

#include "backend/backend.h"
#include "kernels/counter_rng.h"
#include "test_compare.h"

using namespace ssmtune;

namespace {

Tensor mask_of(Backend& be, std::uint64_t key, double p, std::int64_t n, DType dt = DType::F32) {
  Tensor m = be.empty({n}, dt);
  be.dropout_mask(key, p, m);
  return m;
}

}  // namespace

TEST_CASE("dropout masks keep 1 - p of the elements, scaled by 1 / (1 - p)", "[dropout]") {
  auto be = make_cpu_backend();
  const std::int64_t n = 200'000;
  for (const double p : {0.05, 0.25, 0.5, 0.9}) {
    INFO("p " << p);
    const Tensor m = mask_of(*be, 42, p, n);
    const float keep = float(1.0 / (1.0 - p));
    std::int64_t kept = 0, other = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const float v = m.data<float>()[i];
      kept += v == keep;
      other += v != keep && v != 0.0f;
    }
    CHECK(other == 0);
    // Binomial(n, 1 - p): within 5 standard deviations (a false failure ~ 6e-7 of the time)
    const double sd = std::sqrt(double(n) * p * (1 - p));
    CHECK(std::fabs(double(kept) - double(n) * (1 - p)) <= 5 * sd);
    // neighbours are not correlated: the fraction of kept pairs is (1 - p)^2
    std::int64_t pairs = 0;
    for (std::int64_t i = 0; i + 1 < n; i += 2)
      pairs += m.data<float>()[i] != 0 && m.data<float>()[i + 1] != 0;
    const double q = (1 - p) * (1 - p), half = double(n / 2);
    CHECK(std::fabs(double(pairs) - half * q) <= 5 * std::sqrt(half * q * (1 - q)));
  }
  const Tensor all = mask_of(*be, 42, 0.0, 1000);
  for (std::int64_t i = 0; i < 1000; ++i) REQUIRE(all.data<float>()[i] == 1.0f);
}

TEST_CASE("a dropout mask depends on its key and element index only", "[dropout]") {
  auto be = make_cpu_backend();
  const Tensor big = mask_of(*be, 7, 0.3, 5000), small = mask_of(*be, 7, 0.3, 1234);
  CHECK(testing::same_bits(big.rows(0, 1234), small));  // element n's draw is n's alone
  CHECK(testing::same_bits(mask_of(*be, 7, 0.3, 5000), big));
  const Tensor other = mask_of(*be, 8, 0.3, 5000);
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < 5000; ++i) differ += other.data<float>()[i] != big.data<float>()[i];
  CHECK(differ > 1000);  // 2 p (1 - p) = 42% expected
  // float64 masks drop the same elements
  const Tensor wide = mask_of(*be, 7, 0.3, 5000, DType::F64);
  for (std::int64_t i = 0; i < 5000; ++i)
    REQUIRE((wide.data<double>()[i] == 0) == (big.data<float>()[i] == 0));
  // the first numbers of key 0: SplitMix64 seeded with 0 (its published first output)
  CHECK(counter_u64(0, 0) == 0xE220A8397B1DCDAFull);
}

TEST_CASE("dropout_mask refuses p below 0 and p of 1 or more", "[dropout]") {
  auto be = make_cpu_backend();
  Tensor m = be->empty({4}, DType::F32);
  CHECK_THROWS_WITH(be->dropout_mask(1, 1.0, m), Catch::Contains("p in [0, 1)"));
  CHECK_THROWS_WITH(be->dropout_mask(1, -0.1, m), Catch::Contains("p in [0, 1)"));
}
