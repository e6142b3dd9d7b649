#include "backend/cuda/device_info.h"

namespace ssmtune {

CudaDevices query_cuda_devices() {
  return {false, 0, "this build has no CUDA parts (nvcc was not found at configure time)"};
}

}  // namespace ssmtune
