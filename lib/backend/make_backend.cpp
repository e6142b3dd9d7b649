#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"

namespace ssmtune {

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda") return make_cuda_backend(0);
  throw UsageError("unknown device \"" + device + "\" (expected \"cpu\" or \"cuda\")");
}

}  // namespace ssmtune
