#include <cuda_runtime.h>

#include "backend/cuda/device_info.h"

namespace ssmtune {

CudaDevices query_cuda_devices() {
  CudaDevices out;
  out.built = true;
  int count = 0;
  // Without a GPU the runtime answers with an error (e.g. "CUDA driver version is insufficient"
  // or "no CUDA-capable device"); any error means no usable device (docs/build.md "Pitfalls").
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    out.detail = std::string("no usable GPU: ") + cudaGetErrorString(err);
    return out;
  }
  if (count == 0) {
    out.detail = "no usable GPU: the CUDA runtime reports 0 devices";
    return out;
  }
  out.count = count;
  int clock_khz = 0, bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 0) == cudaSuccess &&
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0) == cudaSuccess)
    out.peak_bandwidth = 2.0 * double(clock_khz) * 1e3 * double(bus_bits) / 8.0;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    out.detail += (i ? "; " : "") + std::to_string(i) + ": " + prop.name + " (sm_" +
                  std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
                  std::to_string(prop.totalGlobalMem >> 20) + " MiB)";
  }
  return out;
}

}  // namespace ssmtune
