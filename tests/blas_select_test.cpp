// The BLAS kernel choice (lib/backend/cpu/blas_select.h). The re-execution itself is checked by
// hand (docs/cpu_blas.md, "Checking the re-execution"); here the decision and the report.
#include "backend/cpu/blas_select.h"

#include <catch2/catch.hpp>
#include <cstdlib>

using ssmtune::cpu::openblas_core_to_force;

TEST_CASE("OpenBLAS's generic kernels are replaced by the best the CPU supports", "[blas]") {
  // Debian's OpenBLAS 0.3.21 on Intel family 6 model 207 (docs/cpu_blas.md "The problem").
  CHECK(openblas_core_to_force("Prescott", false, "SkylakeX") == "SkylakeX");
  CHECK(openblas_core_to_force("Haswell", false, "SkylakeX") == "SkylakeX");
  CHECK(openblas_core_to_force("Sandybridge", false, "Haswell") == "Haswell");
  CHECK(openblas_core_to_force("prescott", false, "Haswell") == "Haswell");  // case as OpenBLAS
}

TEST_CASE("OpenBLAS's own choice is kept when it is as good or unknown to ssmtune", "[blas]") {
  CHECK_FALSE(openblas_core_to_force("Cooperlake", false, "SkylakeX"));  // same sgemm kernels
  CHECK_FALSE(openblas_core_to_force("SkylakeX", false, "SkylakeX"));
  CHECK_FALSE(openblas_core_to_force("Zen", false, "Haswell"));
  CHECK_FALSE(openblas_core_to_force("SkylakeX", false, "Haswell"));  // never downgrade
  CHECK_FALSE(openblas_core_to_force("Zen5", false, "SkylakeX"));     // a newer OpenBLAS's name
  CHECK_FALSE(openblas_core_to_force("Prescott", false, ""));         // no AVX2: nothing better
}

TEST_CASE("a user-set OPENBLAS_CORETYPE is never overridden", "[blas]") {
  CHECK_FALSE(openblas_core_to_force("Prescott", true, "SkylakeX"));
}

TEST_CASE("the BLAS description names the library and the kernels in use", "[blas]") {
  const std::string d = ssmtune::cpu::blas_description();
  CAPTURE(d);
  CHECK(d.rfind("OpenBLAS 0.", 0) == 0);
  CHECK(d.find(", core ") != std::string::npos);
}

TEST_CASE("the CPU's best OpenBLAS core is one ssmtune knows how to force", "[blas]") {
  const std::string best = ssmtune::cpu::best_openblas_core_for_cpu();
  CHECK((best.empty() || best == "SkylakeX" || best == "Haswell"));
}
