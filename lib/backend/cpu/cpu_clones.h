// Function multiversioning for the CPU hot loops: GCC compiles a function marked
// SSMTUNE_CPU_CLONES for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and the baseline, and picks
// one at load time from the CPU it runs on. One portable binary, the full vector width where the
// CPU has it. Keep OpenMP regions outside cloned functions (call a clone per task instead) so
// the outlined parallel bodies need no cloning.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define SSMTUNE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SSMTUNE_CPU_CLONES
#endif
