#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"

namespace ssmtune {

std::unique_ptr<Backend> make_backend(const std::string& device, const std::string& matmul) {
  if (matmul != "fp32" && matmul != "bf16")
    throw UsageError("unknown matmul precision \"" + matmul + "\" (expected \"fp32\" or \"bf16\")");
  if (device == "cpu") {
    if (matmul != "fp32")
      throw UsageError(
          "matmul \"" + matmul +
          "\" needs the CUDA backend (--device cuda); the CPU backend computes in fp32");
    return make_cpu_backend();
  }
  if (device == "cuda") return make_cuda_backend(0, CudaOptions{matmul == "bf16"});
  throw UsageError("unknown device \"" + device + "\" (expected \"cpu\" or \"cuda\")");
}

}  // namespace ssmtune
