// Small number formatting for terminal output.
#pragma once

#include <cstdint>
#include <string>

namespace ssmtune {

// 1234567 -> "1,234,567"
inline std::string with_commas(std::int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

}  // namespace ssmtune
