// The test runner's main: selects the fast BLAS kernels the way ssmtune's main does (the
// re-execution in ensure_fast_blas has to happen before anything else), then runs Catch2.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "backend/cpu/blas_select.h"

int main(int argc, char** argv) {
  ssmtune::cpu::ensure_fast_blas(argc, argv);
  return Catch::Session().run(argc, argv);
}
