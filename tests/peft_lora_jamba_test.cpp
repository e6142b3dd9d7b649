// LoRA on Jamba against Hugging Face peft 0.12.0 (tests/fixtures/peft-lora-jamba, made by
// data_scripts/make_jamba_peft_fixture.py; data_scripts/JAMBA_FIXTURE.md): r 4 on the attention
// projections, the router, every expert's and dense MLP's gate/up/down_proj and the Mamba
// projections of jamba-tiny. The objective is peft's output.loss with output_router_logits:
// LM loss + 0.1 * router load-balancing loss. Logits, losses and LoRA gradients in float32 and
// float64, 5 AdamW steps, the merge, and the adapter written back in peft's layout.
#include <catch2/catch.hpp>

#include <filesystem>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "io_test_util.h"
#include "lora_fixture_run.h"
#include "peft/lora.h"
#include "peft/lora_adapter_io.h"
#include "peft/merge.h"
#include "test_compare.h"
#include "train/adamw.h"

using namespace ssmtune;
using namespace ssmtune::testing;
namespace fs = std::filesystem;

namespace {

std::unique_ptr<LoraRun> load_run(DType dtype) {
  auto r = load_lora_run("jamba-tiny", "peft-lora-jamba", dtype);
  r->lm->set_router_aux_coef(r->cfg.router_aux_loss_coef);  // output_router_logits=True
  return r;
}

double scalar(const SafetensorsFile& ref, const std::string& key) {
  return ref.tensor(key).to(DType::F64).data<double>()[0];
}

}  // namespace

TEST_CASE("LoRA on Jamba matches peft: logits, LM/router/total loss and every LoRA gradient",
          "[lora][parity][jamba]") {
  const auto ref = SafetensorsFile::open(fixtures() / "peft-lora-jamba" / "reference.safetensors");
  for (const DType dtype : {DType::F32, DType::F64}) {
    DYNAMIC_SECTION(dtype_name(dtype)) {
      // float32: peft's own float32 run is 1.4e-6 (logits), 4.7e-6 (worst gradient) from
      // float64 (fixture.json checks), so 1e-4 / 1e-3 of each tensor's scale as for the base
      // model; float64: summation order only.
      const bool f32 = dtype == DType::F32;
      const double act_tol = f32 ? 1e-4 : 1e-11, grad_tol = f32 ? 1e-3 : 1e-10;
      const double loss_eps = f32 ? 1e-5 : 1e-12;
      auto r = load_run(dtype);
      REQUIRE(r->lora->terms().size() == 48);  // 96 tensors: A and B of 48 modules
      const LmLoss l = forward_loss(*r);
      require_close("logits", r->lm->logits(), ref.tensor("logits.f64"), act_tol, 0);
      CHECK(l.loss == Approx(scalar(ref, "loss.f64")).epsilon(loss_eps));
      CHECK(l.aux_loss == Approx(scalar(ref, "aux_loss.f64")).epsilon(loss_eps));
      CHECK(l.objective == Approx(scalar(ref, "total_loss.f64")).epsilon(loss_eps));
      backward(*r);
      check_lora_grads(*r, ref, grad_tol);
    }
  }
}

TEST_CASE("5 AdamW steps of LoRA on Jamba match torch.optim.AdamW on peft's model",
          "[lora][parity][optimizer][jamba]") {
  const auto ref = SafetensorsFile::open(fixtures() / "peft-lora-jamba" / "reference.safetensors");
  auto r = load_run(DType::F64);
  std::vector<TrainableParam> params;
  r->lora->append_trainables(params);
  OptimizerConfig oc = peft_fixture_adamw();
  AdamW opt(oc, params, *r->be);
  const Tensor losses = ref.tensor("losses.f64");
  for (std::int64_t k = 0; k < 5; ++k) {
    // The objective before step k, float64 throughout.
    CHECK(forward_loss(*r).objective == Approx(losses.data<double>()[k]).epsilon(1e-12));
    backward(*r);
    opt.step(oc.lr);
    if (k < 4)  // the fixture stores steps 1..4 rounded to float32
      for (const LoraTerm& t : r->lora->terms())
        for (const char* which : {"A", "B"}) {
          const Tensor all = ref.tensor("after_steps." + peft_name(t, which));
          const Tensor& mine = *which == 'A' ? t.A : t.B;
          const std::int64_t n = mine.numel();
          const Tensor want = all.reshape({all.dim(0), n}).rows(k, k + 1).reshape(mine.shape());
          // float32 rounding of the stored values: 2^-24 relative, 1e-6 of the scale.
          require_close("step " + std::to_string(k + 1) + " " + peft_name(t, which), mine, want,
                        1e-6, 0);
        }
  }
  // The fixture's own float64 replay agrees to 4e-13: 1e-10 leaves room for summation order.
  for (const LoraTerm& t : r->lora->terms())
    for (const char* which : {"A", "B"})
      require_close("after " + peft_name(t, which), *which == 'A' ? t.A : t.B,
                    ref.tensor("after_k." + peft_name(t, which)), 1e-10, 0);
  CHECK(forward_loss(*r).objective == Approx(scalar(ref, "loss_after_k.f64")).epsilon(1e-10));
}

TEST_CASE("merged Jamba LoRA gives peft's merge_and_unload logits", "[lora][merge][jamba]") {
  auto r = load_run(DType::F32);
  // float32: the merge rounds W + sBA once per weight; Jamba's logits pass through more rounded
  // products (experts, attention) than Mamba's, so 1e-4 of the scale.
  check_merge_matches_peft(*r, "peft-lora-jamba", 1e-4);
}

TEST_CASE("a Jamba LoRA adapter is written back in peft's layout, bit for bit",
          "[lora][jamba]") {
  check_adapter_written_back(*load_run(DType::F32), "jamba-tiny", "peft-lora-jamba");
}

TEST_CASE("a Jamba LoRA target whose layers lack the module is refused, naming it",
          "[lora][jamba]") {
  const fs::path dir = fixtures() / "jamba-tiny";  // attention at layers 1 and 3
  const ModelConfig cfg = load_model_config(dir.string());
  const auto refused = [&](const std::string& target, const std::vector<std::string>& fragments) {
    LoraConfig lc;
    lc.targets = {target};
    try {
      plan_lora_terms(cfg, lc, DType::F32);
      FAIL(target << " was accepted");
    } catch (const UsageError& e) {
      INFO(e.what());
      CHECK_THAT(e.what(), Catch::Contains("peft.lora.targets: \"" + target + "\""));
      for (const std::string& f : fragments) CHECK_THAT(e.what(), Catch::Contains(f));
    }
  };
  // The Mamba projections on an attention layer, attention's on a Mamba layer.
  refused("layers.1.in_proj", {"no in_proj", "model.layers.1.self_attn"});
  refused("layers.0.q_proj", {"no q_proj", "model.layers.0.mamba"});
  // A range acts on the layers that have the module: layer 1's q_proj alone.
  LoraConfig lc;
  lc.targets = {"layers.0-1.q_proj"};
  const std::vector<LoraTerm> terms = plan_lora_terms(cfg, lc, DType::F32);
  REQUIRE(terms.size() == 1);
  CHECK(terms[0].module == "model.layers.1.self_attn.q_proj");
}
