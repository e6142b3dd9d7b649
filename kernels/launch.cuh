// The one way kernels are launched: `kernel<<<grid, block, shared_bytes, stream>>>(args...)`
// under nvcc, the emulator's launch (which converts the arguments to the parameter types, as a
// launch does) under g++ -DSSMTUNE_CUDA_EMU. `kernel` names one function (a template
// instantiation with a single argument list is fine; wrap nothing in parentheses).
#pragma once

#include "cuda_compat.cuh"

#if defined(SSMTUNE_CUDA_EMU)
#define SSMTUNE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::cuda_emu::launch(#kernel, kernel, grid, block, shared_bytes, stream, __VA_ARGS__)
#else
#define SSMTUNE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#endif
