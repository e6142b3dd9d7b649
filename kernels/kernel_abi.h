// The inline namespace that keeps the two builds of the CUDA code apart: `gpu` for nvcc and
// the CUDA runtime, `emu` for the same sources compiled as C++ against the tests' emulator
// (SSMTUNE_CUDA_EMU). One test binary can then hold both without clashing names.
#pragma once

#if defined(SSMTUNE_CUDA_EMU)
#define SSMTUNE_KERNEL_ABI emu
#else
#define SSMTUNE_KERNEL_ABI gpu
#endif
