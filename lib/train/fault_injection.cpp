#include "train/fault_injection.h"

#include <csignal>
#include <cstdlib>
#include <string>

namespace ssmtune {

void fault_point(const char* name, std::int64_t step) {
  const char* value = std::getenv(name);
  if (value && std::to_string(step) == value) std::raise(SIGKILL);
}

}  // namespace ssmtune
