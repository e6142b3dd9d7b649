// What lets one kernel source compile both ways: with nvcc for a GPU, and as plain C++ against
// the tests' CUDA-on-CPU emulator (g++ -DSSMTUNE_CUDA_EMU, tests/cuda_emu/cuda_emu.h on the
// include path; docs/cuda.md). Kernel sources include this first and use only:
//   __global__ __device__ __host__ __forceinline__ __restrict__ __launch_bounds__ __align__
//   static __shared__ arrays (no initialisers), SSMTUNE_DYNAMIC_SHARED for dynamic shared
//   memory (the emulator cannot give `extern __shared__` a per-block meaning), _sync warp
//   intrinsics only, and SSMTUNE_LAUNCH (launch.cuh) instead of <<<...>>>.
// No __CUDA_ARCH__ branches in code the emulator runs: it would take the host side.
#pragma once

#include "kernel_abi.h"

#if defined(SSMTUNE_CUDA_EMU)

#include <cuda_emu.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A function static: one instance serves every block, since the emulator runs blocks one at a
// time. The section lets the emulator refill it with NaN bytes before each block, so a read
// before the first write shows; GCC 12 ignores the section inside function templates (their
// static shared variables keep the previous block's contents; PR c++/70435).
#define __shared__ static __attribute__((section("ssmtune_emu_shared")))
// T* name: the launch's dynamic shared memory (16-byte aligned at least).
#define SSMTUNE_DYNAMIC_SHARED(T, name) \
  T* const name = static_cast<T*>(::cuda_emu::dynamic_shared_memory())
// Before a loop nvcc should unroll (small constant bounds it may not unroll on its own, or
// arrays that must stay in registers); nothing for g++.
#define SSMTUNE_UNROLL

#else

#include <cuda_runtime.h>

// One unsigned char array per name, so two kernels of one file may use different T.
#define SSMTUNE_DYNAMIC_SHARED(T, name)                         \
  extern __shared__ __align__(16) unsigned char name##_bytes[]; \
  T* const name = reinterpret_cast<T*>(name##_bytes)
#define SSMTUNE_UNROLL _Pragma("unroll")

#endif
