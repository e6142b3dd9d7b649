// CLI11 validators for numeric options. CLI11 prefixes a failed check with the option's name,
// so a bad value reads "error: --max-length: Value 0 not in range 2 to 1048576" (main.cpp).
// CLI::Range lets NaN through (every comparison with it is false) and cannot exclude a bound;
// the checks here cover what it cannot.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ssmtune {

// The same bounds as the experiment config's keys (train/experiment_config.cpp).
inline constexpr std::int64_t kMaxOptionSize = std::int64_t(1) << 20;   // lengths, tokens
inline constexpr std::int64_t kMaxOptionCount = std::int64_t(1) << 40;  // example counts

// A finite number in [lo, hi], or (lo, hi] when lo_open; hi = inf: no upper bound.
inline CLI::Validator finite_in(double lo, double hi, bool lo_open = false) {
  char range[64];
  if (std::isinf(hi))
    std::snprintf(range, sizeof range, "%s %g", lo_open ? ">" : ">=", lo);
  else
    std::snprintf(range, sizeof range, "in %s%g, %g]", lo_open ? "(" : "[", lo, hi);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v) || !std::isfinite(v) ||
            (lo_open ? v <= lo : v < lo) || v > hi)
          return std::string("expected a finite number ") + range + ", got " + text;
        return {};
      },
      std::string("NUMBER ") + range);
}

// An unsigned integer such as a seed: CLI11 reads "-1" as 2^64 - 1 (strtoull), so a sign is
// refused here.
inline CLI::Validator non_negative_integer() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const std::size_t first = text.find_first_not_of(" \t");
        if (first != std::string::npos && text[first] == '-')
          return "expected a non-negative integer, got " + text;
        return {};
      },
      "UINT");
}

}  // namespace ssmtune
