#include "peft/target_names.h"

#include "core/error.h"

namespace ssmtune {

bool take_layer_range(std::string& name, std::int64_t n_layer, std::int64_t& first,
                      std::int64_t& last, const std::string& field, const std::string& original) {
  first = 0;
  last = n_layer - 1;
  const std::string prefix = "layers.";
  if (name.rfind(prefix, 0) != 0) return false;
  const std::size_t dot = name.find('.', prefix.size());
  const std::string range = name.substr(prefix.size(), dot - prefix.size());
  const std::size_t dash = range.find('-');
  auto parse = [&](const std::string& s) -> std::int64_t {
    if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
      throw UsageError(field + ": \"" + original +
                       "\": expected layers.I. or layers.I-J. with layer numbers, got \"" + range +
                       "\"");
    return std::stoll(s);
  };
  first = parse(range.substr(0, dash));
  last = dash == std::string::npos ? first : parse(range.substr(dash + 1));
  if (dot == std::string::npos || last < first)
    throw UsageError(field + ": \"" + original + "\": malformed layer range");
  if (first >= n_layer)
    throw UsageError(field + ": \"" + original + "\" matches no module: the model has " +
                     std::to_string(n_layer) + " layers (0-" + std::to_string(n_layer - 1) + ")");
  if (last >= n_layer)
    throw UsageError(field + ": \"" + original + "\": layer " + std::to_string(last) +
                     " does not exist (the model has " + std::to_string(n_layer) + " layers)");
  name = name.substr(dot + 1);
  return true;
}

}  // namespace ssmtune
