// Choosing and describing the CPU BLAS kernels (measurements and alternatives: docs/cpu_blas.md).
//
// Debian 12's OpenBLAS 0.3.21 does not recognise some newer CPUs (e.g. Intel family 6 model 207)
// and falls back to its generic Prescott kernels, 4-8x slower than its AVX-512 ones. The kernels
// can only be chosen through OPENBLAS_CORETYPE, which OpenBLAS reads in its library constructor,
// before main (a setenv in main, in a constructor of ours or in .preinit_array all come too
// late: tested, see the doc). So ensure_fast_blas re-executes the program once with it set.
#pragma once

#include <optional>
#include <string>

namespace ssmtune::cpu {

// Call first thing in main() of every program that links ssmtune_core (ssmtune, the test runner,
// benchmarks), before any thread, output or BLAS call exists. Re-executes /proc/self/exe once
// with the same argv when the environment the libraries read at load time needs a change:
// OPENBLAS_CORETYPE when OpenBLAS picked kernels weaker than this CPU supports, and
// GOMP_SPINCOUNT=10000 when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set (OpenMP's long
// busy wait makes training several times slower when other processes share the cores). The
// re-executed process carries SSMTUNE_REEXEC (and SSMTUNE_BLAS_REEXEC = the core OpenBLAS
// detected, when the core was forced) and never re-executes again. Returns normally in every
// other case, including when the exec fails (the program then runs correctly, only slower;
// blas_description() says why). A user's setting of any of these variables is respected.
void ensure_fast_blas(int argc, char** argv);

// One line naming the BLAS, its threading and the kernels in use, for `ssmtune --version` and
// `ssmtune bench`, e.g. "OpenBLAS 0.3.21, openmp, 2 threads, core SkylakeX (set by ssmtune;
// OpenBLAS detected Prescott)".
std::string blas_description();

// The OpenBLAS core type whose kernels this CPU runs best: "SkylakeX" when it has AVX-512
// F/CD/BW/DQ/VL enabled by the OS, "Haswell" with AVX2 and FMA, "" otherwise (and off x86-64).
std::string best_openblas_core_for_cpu();

// The core type ensure_fast_blas forces, or nullopt to keep OpenBLAS's own choice. Pure (for
// tests). Forces only when the user has not chosen, the CPU supports a better tier than
// active_core and active_core is a name known to be weaker: an unknown name comes from an
// OpenBLAS newer than this table, which knows the CPU better than we do.
std::optional<std::string> openblas_core_to_force(const std::string& active_core,
                                                  bool user_set_coretype,
                                                  const std::string& best_core);

}  // namespace ssmtune::cpu
