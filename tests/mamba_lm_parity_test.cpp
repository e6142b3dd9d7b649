// The CPU Mamba LM against Hugging Face transformers (float32, slow path) and against an
// independent float64 implementation, on the fixture models that data_scripts/make_fixtures.py
// made (tests/fixtures/<model>/reference.safetensors and reference_f64.safetensors).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "parity_run.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {

const char* const kFixtureModels[] = {"mamba-tiny", "mamba-odd", "mamba-sharded-bf16"};

}  // namespace

TEST_CASE("Mamba LM matches transformers in float32: logits, loss, hidden states, gradients",
          "[model][parity]") {
  for (const char* model : kFixtureModels) {
    for (std::int64_t chunk : {64, 4}) {
      DYNAMIC_SECTION(model << " scan_chunk=" << chunk) {
        const auto ref = SafetensorsFile::open(fixture_dir(model) + "/reference.safetensors");
        auto r = run_parity_fixture(model, ref, DType::F32, chunk);
        // float32 forward: products of length <= d_inner and a scan of <= 70 steps each add a
        // few ulps (~1e-7 relative); HF's own float32 path agrees with float64 to ~1e-7.
        require_close("logits", r->lm->logits(), ref.tensor("logits"), 1e-5, 1e-6);
        CHECK(r->loss.loss == Approx(ref.tensor("loss").to(DType::F64).data<double>()[0])
                                  .epsilon(1e-5));
        for (std::int64_t i = 0; i < r->cfg.n_layer; ++i)
          require_close("hidden_states." + std::to_string(i), r->lm->residual(i + 1),
                        ref.tensor("hidden_states." + std::to_string(i)), 1e-5, 1e-6);
        require_close("final norm", r->lm->final_norm(),
                      ref.tensor("hidden_states." + std::to_string(r->cfg.n_layer)), 1e-5, 1e-6);

        // Gradients sum over every token and pass back through all layers: 1e-4 of the
        // largest entry of each tensor (float32; HF itself is ~1e-6 from float64).
        check_parity_grads(*r, ref, 1e-4, 1e-7);
      }
    }
  }
}

TEST_CASE("Mamba LM in float64 matches an independent float64 implementation",
          "[model][parity]") {
  for (const char* model : kFixtureModels) {
    DYNAMIC_SECTION(model) {
      const auto ref = SafetensorsFile::open(fixture_dir(model) + "/reference_f64.safetensors");
      auto r = run_parity_fixture(model, ref, DType::F64, 4);
      // Both sides compute in float64 from the same stored weights: only summation order
      // differs, ~1e-15 relative per operation.
      require_close("logits", r->lm->logits(), ref.tensor("logits"), 1e-11, 1e-13);
      CHECK(r->loss.loss == Approx(ref.tensor("loss").data<double>()[0]).epsilon(1e-12));
      check_parity_grads(*r, ref, 1e-10, 1e-14);
    }
  }
}
