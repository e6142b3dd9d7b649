#include "apps/ssmtune/version.h"

#include <omp.h>

#include "backend/cpu/blas_select.h"
#include "backend/cuda/device_info.h"

namespace ssmtune {

std::string version_text() {
  std::string s = "ssmtune " SSMTUNE_VERSION "\n";
  s += "cpu backend: float32, " + std::to_string(omp_get_max_threads()) + " OpenMP threads\n";
  s += "blas: " + cpu::blas_description() + "\n";
  const CudaDevices cuda = query_cuda_devices();
  s += std::string("cuda: ") + (cuda.built ? "built in; " : "") + cuda.detail;
  return s;
}

}  // namespace ssmtune
