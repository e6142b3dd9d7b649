#include "apps/ssmtune/version.h"

#include <omp.h>

namespace ssmtune {

std::string version_text() {
  std::string s = "ssmtune " SSMTUNE_VERSION "\n";
  s += "cpu backend: float32, " + std::to_string(omp_get_max_threads()) + " OpenMP threads\n";
#ifdef SSMTUNE_WITH_CUDA
  s += "cuda: built in\n";
#else
  s += "cuda: not built in\n";
#endif
  return s;
}

}  // namespace ssmtune
