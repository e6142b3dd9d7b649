// What the PEFT method tests share: the base models of tests/fixtures in float64, the
// independent float64 PyTorch reference tests/fixtures/methods/reference.safetensors (made by
// data_scripts/make_method_fixture.py), and one forward + backward through a PeftModel.
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
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
