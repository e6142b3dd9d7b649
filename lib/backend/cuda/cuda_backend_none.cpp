// make_cuda_backend in a build without the CUDA toolkit.
#include "backend/cuda/cuda_backend.h"

namespace ssmtune {
inline namespace SSMTUNE_KERNEL_ABI {

std::unique_ptr<Backend> make_cuda_backend(int, CudaOptions) {
  throw Error(
      "--device cuda: this build of ssmtune has no CUDA parts (nvcc was not found when it was "
      "configured); rebuild on a machine with the CUDA toolkit, or use --device cpu");
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune
