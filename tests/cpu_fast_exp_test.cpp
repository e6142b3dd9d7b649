// The vectorisable float exp of the CPU hot loops against std::exp.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "backend/cpu/fast_exp.h"

TEST_CASE("fast_exp(float) is within 2 ulp of exp over [-87.3, 88.3] and saturates outside", "[ops]") {
  // 400,001 points evenly over [-87.3, 88.3], then the clamped ends.
  double worst_ulps = 0;
  for (int i = 0; i <= 400000; ++i) {
    const float x = -87.3f + 175.6f * float(i) / 400000.0f;
    const double exact = std::exp(double(x));
    const double got = ssmtune::cpu::fast_exp(x);
    const double ulp = std::nextafter(float(exact), std::numeric_limits<float>::infinity()) - float(exact);
    worst_ulps = std::max(worst_ulps, std::fabs(got - exact) / ulp);
  }
  INFO("worst error " << worst_ulps << " ulp");
  CHECK(worst_ulps <= 2.0);
  CHECK(std::isfinite(ssmtune::cpu::fast_exp(1000.0f)));
  CHECK(ssmtune::cpu::fast_exp(-1000.0f) >= 0.0f);
  CHECK(ssmtune::cpu::fast_exp(-1000.0f) < 1e-37f);
  CHECK(ssmtune::cpu::fast_exp(0.0f) == 1.0f);
}
