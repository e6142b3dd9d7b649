// The SSM-specific PEFT methods on Jamba on the CUDA backend (compiled against the CUDA-on-CPU
// emulator) against the CPU backend, on tests/fixtures/jamba-tiny with its reference batch
// (data_scripts/make_jamba_fixtures.py): the objective and every trainable's gradient, for each
// method of jamba_method_run.h, SDT in both phases (the same warmup values give the same
// selection on both backends).
#include <catch2/catch.hpp>

#include "backend/cuda/cuda_backend.h"
#include "jamba_method_run.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::test::jamba_methods;

namespace {

struct Pass {
  double objective = 0;
  std::vector<TrainableParam> params;  // values and gradients after one forward + backward
};

Pass run_method(JambaModel& m, const MethodPhase& c) {
  const auto peft = randomised_peft(m, c.method.config, c.masked, 2);
  Pass p;
  p.objective = objective(m, *peft, /*backward=*/true);
  for (const TrainableParam& t : peft->trainables())
    p.params.push_back({t.name, t.value.clone(), t.grad.clone()});
  return p;
}

}  // namespace

TEST_CASE("SSM methods on Jamba train on the emulated CUDA backend as on the CPU backend",
          "[cuda-emu][jamba][peft][sdt][state]") {
  for (const MethodPhase& c : ssm_method_phases()) {
    DYNAMIC_SECTION(c.label()) {
      JambaModel cpu("jamba-tiny", DType::F32);
      JambaModel gpu("jamba-tiny", DType::F32, make_cuda_backend());
      const Pass want = run_method(cpu, c);
      const Pass got = run_method(gpu, c);
      // float32 on both, sums in other orders (cuBLAS, block reductions, the parallel scan,
      // the tiled attention), as cuda_emu_jamba_test.cpp: 1e-5 of the objective, 1e-4 of
      // each gradient's scale.
      CHECK(got.objective == Approx(want.objective).epsilon(1e-5));
      REQUIRE(got.params.size() == want.params.size());
      for (std::size_t i = 0; i < want.params.size(); ++i) {
        REQUIRE(got.params[i].name == want.params[i].name);
        // The same values (SDT's masks included) on both before the step.
        testing::require_close(want.params[i].name, got.params[i].value, want.params[i].value, 0,
                               0);
        testing::require_close("grad." + want.params[i].name, got.params[i].grad,
                               want.params[i].grad, 1e-4, 0);
      }
    }
  }
}
