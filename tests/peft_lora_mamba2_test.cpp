// LoRA on Mamba-2 against Hugging Face peft 0.12.0 (tests/fixtures/peft-lora-mamba2, made by
// data_scripts/make_mamba2_peft_fixture.py; data_scripts/MAMBA2_FIXTURE.md): r 4, alpha 8 on
// in_proj and out_proj of mamba2-tiny. Logits, loss and LoRA gradients in float32 and float64,
// 5 AdamW steps, the merge, and the adapter written back in peft's layout.
#include <catch2/catch.hpp>

#include <filesystem>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "lora_fixture_run.h"
#include "model/causal_lm.h"
#include "peft/lora.h"
#include "peft/lora_adapter_io.h"
#include "test_compare.h"
#include "train/adamw.h"

using namespace ssmtune;
using namespace ssmtune::testing;
namespace fs = std::filesystem;

namespace {

const char* const kFixture = "peft-lora-mamba2";

double scalar(const SafetensorsFile& ref, const std::string& key) {
  return ref.tensor(key).to(DType::F64).data<double>()[0];
}

SafetensorsFile reference() {
  return SafetensorsFile::open(fixtures() / kFixture / "reference.safetensors");
}

}  // namespace

TEST_CASE("LoRA on Mamba-2 matches peft: logits, loss and every LoRA gradient",
          "[lora][parity][mamba2]") {
  const auto ref = reference();
  for (const DType dtype : {DType::F32, DType::F64}) {
    DYNAMIC_SECTION(dtype_name(dtype)) {
      // float32: peft's own float32 run is 4.7e-7 (logits), 1.1e-6 (worst gradient) from
      // float64 (fixture.json checks), so 1e-5 / 1e-4 of each tensor's scale as for the base
      // model; float64: summation order only.
      const bool f32 = dtype == DType::F32;
      const double act_tol = f32 ? 1e-5 : 1e-11, grad_tol = f32 ? 1e-4 : 1e-10;
      auto r = load_lora_run("mamba2-tiny", kFixture, dtype);
      REQUIRE(r->lora->terms().size() == 4);  // in_proj and out_proj of 2 layers
      const LmLoss l = forward_loss(*r);
      require_close("logits", r->lm->logits(), ref.tensor("logits.f64"), act_tol, 0);
      CHECK(l.loss == Approx(scalar(ref, "loss.f64")).epsilon(f32 ? 1e-6 : 1e-12));
      backward(*r);
      check_lora_grads(*r, ref, grad_tol);
    }
  }
}

TEST_CASE("5 AdamW steps of LoRA on Mamba-2 match torch.optim.AdamW on peft's model",
          "[lora][parity][optimizer][mamba2]") {
  const auto ref = reference();
  auto r = load_lora_run("mamba2-tiny", kFixture, DType::F64);
  std::vector<TrainableParam> params;
  r->lora->append_trainables(params);
  OptimizerConfig oc = peft_fixture_adamw();
  AdamW opt(oc, params, *r->be);
  const Tensor losses = ref.tensor("losses.f64");
  for (std::int64_t k = 0; k < 5; ++k) {
    CHECK(forward_loss(*r).loss == Approx(losses.data<double>()[k]).epsilon(1e-12));
    backward(*r);
    opt.step(oc.lr);
  }
  // The fixture's own float64 replay: 1e-10 leaves room for summation order.
  for (const LoraTerm& t : r->lora->terms())
    for (const char* which : {"A", "B"})
      require_close("after " + peft_name(t, which), *which == 'A' ? t.A : t.B,
                    ref.tensor("after_k." + peft_name(t, which)), 1e-10, 0);
  CHECK(forward_loss(*r).loss == Approx(scalar(ref, "loss_after_k.f64")).epsilon(1e-10));
}

TEST_CASE("merged Mamba-2 LoRA gives peft's merge_and_unload logits", "[lora][merge][mamba2]") {
  auto r = load_lora_run("mamba2-tiny", kFixture, DType::F32);
  // float32: the merge rounds W + sBA once per weight (fixture: merged vs unmerged 7.3e-7).
  check_merge_matches_peft(*r, kFixture, 1e-5);
}

TEST_CASE("a Mamba-2 LoRA adapter is written back in peft's layout, bit for bit",
          "[lora][mamba2]") {
  check_adapter_written_back(*load_lora_run("mamba2-tiny", kFixture, DType::F32), "mamba2-tiny",
                             kFixture);
}

TEST_CASE("LoRA on one slice of Mamba-2's in_proj acts on those rows alone",
          "[lora][mamba2]") {
  // in_proj.x, .B, .C, .dt, .z: each a term on its rows; two slices of one module coexist.
  const ModelConfig cfg = load_model_config((fixtures() / "mamba2-tiny").string());
  LoraConfig lc;
  lc.targets = {"in_proj.x", "in_proj.dt"};
  const std::vector<LoraTerm> terms = plan_lora_terms(cfg, lc, DType::F32);
  REQUIRE(terms.size() == 2 * std::size_t(cfg.n_layer));
  const std::int64_t E = cfg.d_inner, C = cfg.conv_dim();
  // The terms come grouped by target, not by layer: find each by its name.
  for (const LoraTerm& t : terms) {
    INFO(t.name);
    const bool x = t.name.ends_with(".in_proj.x");
    REQUIRE((x || t.name.ends_with(".in_proj.dt")));
    CHECK(t.row0 == (x ? E : E + C));
    CHECK(t.rows == (x ? E : cfg.ssm_heads));
    CHECK(t.module_rows == E + C + cfg.ssm_heads);  // [z, xBC, dt]
  }
}
