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

TEST_CASE("fast_log(float) is within 2 ulp of log over [1, 3e38]", "[ops]") {
  // Logarithmically spaced points over the whole range softplus feeds it (u = 1 + exp(x)),
  // plus the powers of two and their neighbours, where the mantissa range switches.
  double worst_ulps = 0;
  const auto check = [&](float x) {
    const double exact = std::log(double(x));
    const double got = ssmtune::cpu::fast_log(x);
    const float e = float(exact);
    const double ulp = exact == 0 ? std::numeric_limits<float>::denorm_min()
                                  : std::nextafter(e, std::numeric_limits<float>::infinity()) - e;
    worst_ulps = std::max(worst_ulps, std::fabs(got - exact) / ulp);
  };
  for (int i = 0; i <= 400000; ++i) check(std::exp(88.3f * float(i) / 400000.0f));
  for (int k = 0; k < 127; ++k) {
    const float p = std::ldexp(1.0f, k);
    check(p);
    check(std::nextafter(p, 0.0f) >= 1.0f ? std::nextafter(p, 0.0f) : p);
    check(std::nextafter(p, 1e38f));
  }
  INFO("worst error " << worst_ulps << " ulp");
  CHECK(worst_ulps <= 2.0);
  CHECK(ssmtune::cpu::fast_log(1.0f) == 0.0f);
}

TEST_CASE("fast_softplus(float) matches log1p(exp(x)) to float precision, small x included",
          "[ops]") {
  // Relative error against the double formula over [-87, 40]: the compensated log1p keeps it
  // at a few ulp where exp(x) is far below 1 (a plain log(1 + t) would lose every digit there).
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f + 127.0f * float(i) / 200000.0f;
    const double exact = x > 20.0f ? double(x) : std::log1p(std::exp(double(x)));
    const double got = ssmtune::cpu::fast_softplus(x);
    worst = std::max(worst, std::fabs(got - exact) / exact);
  }
  INFO("worst relative error " << worst);
  CHECK(worst <= 4 * std::numeric_limits<float>::epsilon());
  // The ends, where its branch-free picks must still pick: x itself above the threshold (+inf
  // too), exp(x) itself where 1 + exp(x) rounds to 1 (x = -inf: exp's floor, ~1e-38), NaN kept.
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(ssmtune::cpu::fast_softplus(20.5f) == 20.5f);
  CHECK(ssmtune::cpu::fast_softplus(inf) == inf);
  CHECK(ssmtune::cpu::fast_softplus(-30.0f) == ssmtune::cpu::fast_exp(-30.0f));
  CHECK(ssmtune::cpu::fast_softplus(-inf) == ssmtune::cpu::fast_exp(-inf));
  CHECK(ssmtune::cpu::fast_softplus(-inf) > 0.0f);
  CHECK(std::isnan(ssmtune::cpu::fast_softplus(std::numeric_limits<float>::quiet_NaN())));
}
