// What CUDA devices this process can use. Built from device_info.cu with nvcc when the CUDA
// toolkit is present, else from device_info_none.cpp. Never throws: on a machine without a GPU
// (or without a driver) it reports why, so GPU-only tests can skip saying so.
#pragma once

#include <string>

namespace ssmtune {

struct CudaDevices {
  bool built = false;   // the CUDA parts were compiled in
  int count = 0;        // usable devices (0 when none or on error)
  std::string detail;   // device names and compute capabilities, or why there are none
  // Device 0's peak memory bandwidth in bytes/s (2 x memory clock x bus width: DDR), 0 if none.
  double peak_bandwidth = 0;
};

CudaDevices query_cuda_devices();

}  // namespace ssmtune
