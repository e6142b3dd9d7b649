// What the PEFT method tests share: the base models of tests/fixtures in float64, the
// independent float64 PyTorch reference tests/fixtures/methods/reference.safetensors (made by
// data_scripts/make_method_fixture.py), and one forward + backward through a PeftModel.
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "model/model_weights.h"
#include "peft/peft_model.h"
#include "test_compare.h"

namespace ssmtune::testing::method_check {

inline const std::filesystem::path kFixtures(SSMTUNE_FIXTURES_DIR);

inline SafetensorsFile method_reference() {
  return SafetensorsFile::open(kFixtures / "methods" / "reference.safetensors");
}

// A fixture model (tests/fixtures/<name>) loaded as `dtype`, with a CPU backend.
struct Base {
  std::string dir;
  ModelConfig cfg;
  ModelWeights w;
  std::unique_ptr<Backend> be = make_cpu_backend();
  explicit Base(const std::string& name, DType dtype = DType::F64) {
    dir = (kFixtures / name).string();
    cfg = load_model_config(dir);
    w = load_model_weights(dir, cfg, dtype);
  }
};

// The logits (B, L, V) of the model `cfg`, `w` on `ids`, with `hook` (null: the plain model).
inline Tensor logits_of(const ModelConfig& cfg, const ModelWeights& w, Backend& be,
                        const Tensor& ids, LinearHook* hook) {
  CausalLM lm(cfg, w, be);
  lm.set_hook(hook);
  lm.forward(ids);
  return lm.logits().clone();
}

// Forward + loss + backward of the model the PeftModel runs; returns the loss.
inline double loss_and_grads(Base& b, PeftModel& peft, const Tensor& ids, const Tensor& targets,
                             Tensor* logits = nullptr) {
  peft.after_step();  // the effective weights follow the current values
  CausalLM lm(b.cfg, peft.weights(), *b.be);
  lm.set_hook(peft.hook());
  peft.zero_grads();
  lm.forward(ids);
  if (logits) *logits = lm.logits().clone();
  const double loss = lm.loss(targets).loss;
  lm.backward(targets, peft.base_grads());
  peft.finish_backward();
  return loss;
}

// Every float32 trainable += U(-scale, scale), then the effective weights follow.
inline void add_uniform(PeftModel& peft, std::mt19937_64& rng, float scale) {
  for (TrainableParam& p : peft.trainables()) {
    std::uniform_real_distribution<float> u(-scale, scale);
    for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data<float>()[i] += u(rng);
  }
  peft.after_step();
}

// Fresh float32 base weights and a PeftModel of `pc` on them (its own, as a run holds them).
struct TunedModel {
  ModelWeights w;
  std::unique_ptr<PeftModel> peft;
};

// A PeftModel of `pc` whose trainables are moved off their initial values by U(-0.2, 0.2), in
// SDT's warmup or, with past_warmup, in its masked phase (moved again after the selection).
inline std::unique_ptr<TunedModel> randomised_sdt_model(Base& b, const PeftConfig& pc,
                                                        bool past_warmup, std::mt19937_64& rng) {
  auto t = std::make_unique<TunedModel>();
  t->w = load_model_weights(b.dir, b.cfg, DType::F32);
  t->peft = std::make_unique<PeftModel>(b.cfg, t->w, pc, *b.be, 0);
  add_uniform(*t->peft, rng, 0.2f);
  if (past_warmup) {
    t->peft->end_sdt_warmup();
    add_uniform(*t->peft, rng, 0.2f);
  }
  return t;
}

// Saves `peft` into `dir`, loads it back as a resumed run does (a fresh PeftModel, in SDT's
// warmup as every run starts), and requires the same SDT phase and every trainable's value bit
// for bit.
inline std::unique_ptr<TunedModel> save_and_reload(Base& b, const PeftConfig& pc, PeftModel& peft,
                                                   const std::filesystem::path& dir) {
  peft.save(dir, "base", {});
  REQUIRE(std::filesystem::exists(dir / kParamTuningFile));
  auto r = std::make_unique<TunedModel>();
  r->w = load_model_weights(b.dir, b.cfg, DType::F32);
  r->peft = std::make_unique<PeftModel>(b.cfg, r->w, pc, *b.be, 0);
  r->peft->load(dir);
  REQUIRE(r->peft->sdt_warming_up() == peft.sdt_warming_up());
  const std::vector<TrainableParam>& want = peft.trainables();
  const std::vector<TrainableParam>& got = r->peft->trainables();
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(want[i].name);
    REQUIRE(got[i].name == want[i].name);
    testing::require_close("value", got[i].value, want[i].value, 0, 0);
  }
  return r;
}

inline double loss_only(Base& b, PeftModel& peft, const Tensor& ids, const Tensor& targets) {
  peft.after_step();  // the values changed: the effective weights follow
  CausalLM lm(b.cfg, peft.weights(), *b.be);
  lm.set_hook(peft.hook());
  lm.forward(ids);
  return lm.loss(targets).loss;
}

// Tolerances (both sides float64, same weights and inputs, only summation orders differ):
// logits and loss 1e-12 relative; gradients, one more pass with sums that partly cancel, 1e-10
// relative to the tensor's largest entry.
inline void check_against_reference(
    Base& b, PeftModel& peft, const SafetensorsFile& ref, const std::string& variant,
    const Tensor& ids, const Tensor& targets,
    const std::function<std::string(const std::string&)>& ref_name) {
  for (TrainableParam& p : peft.trainables()) {
    INFO(p.name);
    REQUIRE(ref.contains(variant + "." + ref_name(p.name)));
    b.be->copy(ref.tensor(variant + "." + ref_name(p.name)), p.value);
  }
  peft.after_step();
  Tensor logits;
  const double loss = loss_and_grads(b, peft, ids, targets, &logits);
  testing::require_close(variant + ".logits", logits, ref.tensor(variant + ".logits"), 1e-12, 0);
  const double ref_loss = ref.tensor(variant + ".loss").data<double>()[0];
  INFO("loss " << loss << " reference " << ref_loss);
  REQUIRE(std::fabs(loss - ref_loss) <= 1e-12 * std::fabs(ref_loss));
  for (const TrainableParam& p : peft.trainables())
    testing::require_close(variant + ".grad." + p.name, p.grad,
                           ref.tensor(variant + ".grad." + ref_name(p.name)), 1e-10, 0);
}

}  // namespace ssmtune::testing::method_check
