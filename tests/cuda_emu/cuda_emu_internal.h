// What the emulator's two halves share: the scheduler (cuda_emu.cpp) reports launch failures
// and checks streams through the runtime (cuda_emu_runtime.cpp).
#pragma once

#include <string>

#include "cuda_emu.h"

namespace cuda_emu::internal {

// Fill byte of fresh device memory and of shared memory before each block: 0xFFFFFFFF is a NaN
// float and -1 as an integer, so a read of something never written shows.
constexpr unsigned char kPoison = 0xFF;

// Makes `error` pending (unless one already is) and `detail` the text cudaGetErrorString
// appends for it. Returns `error`.
cudaError_t fail(cudaError_t error, std::string detail);

// nullptr (the default stream) or a stream that cudaStreamCreate made and nobody destroyed.
bool valid_stream(cudaStream_t stream);

}  // namespace cuda_emu::internal
