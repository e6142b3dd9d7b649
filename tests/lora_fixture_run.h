// A model with a peft-made LoRA adapter loaded from a fixture, ready for forward/backward: what
// the peft parity tests (peft_lora_test.cpp, peft_lora_jamba_test.cpp) share.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "io_test_util.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "peft/lora.h"
#include "peft/lora_adapter_io.h"
#include "peft/merge.h"
#include "test_compare.h"
#include "train/adamw.h"

namespace ssmtune::testing {

inline std::filesystem::path fixtures() { return std::filesystem::path(SSMTUNE_FIXTURES_DIR); }

// The peft file name of a term (one term per module in these fixtures).
inline std::string peft_name(const LoraTerm& t, const char* which) {
  return "base_model.model." + t.module + ".lora_" + which + ".weight";
}

struct LoraRun {
  ModelConfig cfg;
  ModelWeights w, no_grads;
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<LoraModel> lora;
  std::unique_ptr<CausalLM> lm;
  Tensor ids, targets;
};

// Base model fixtures()/base, adapter fixtures()/variant/adapter_init, batch from
// fixtures()/variant/reference.safetensors (input_ids, labels).
inline std::unique_ptr<LoraRun> load_lora_run(const std::string& base, const std::string& variant,
                                              DType dtype) {
  auto r = std::make_unique<LoraRun>();
  const std::string base_dir = (fixtures() / base).string();
  r->cfg = load_model_config(base_dir);
  r->w = load_model_weights(base_dir, r->cfg, dtype);
  r->lora = read_lora_adapter(fixtures() / variant / "adapter_init", r->cfg, dtype, *r->be);
  r->lm = std::make_unique<CausalLM>(r->cfg, r->w, *r->be);
  r->lm->set_hook(r->lora.get());
  const auto ref = SafetensorsFile::open(fixtures() / variant / "reference.safetensors");
  r->ids = ref.tensor("input_ids");
  r->targets = shift_labels(ref.tensor("labels"));
  return r;
}

inline LmLoss forward_loss(LoraRun& r) {
  r.lm->forward(r.ids);
  return r.lm->loss(r.targets);
}

// Zeroes the LoRA gradients, then one forward and backward: dA, dB hold this batch's gradients.
inline void backward(LoraRun& r) {
  for (LoraTerm& t : r.lora->terms()) t.dA.fill_zero(), t.dB.fill_zero();
  forward_loss(r);
  r.lm->backward(r.targets, r.no_grads);
}

// The AdamW settings the peft fixtures' torch.optim.AdamW steps use (lr 1e-2, weight decay 0.01
// on every tensor).
inline OptimizerConfig peft_fixture_adamw() {
  OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.weight_decay = 0.01;
  oc.no_decay = {};
  return oc;
}

// Merges the adapter into a copy of the weights and checks that the plain model's logits equal the
// adapter model's and peft's merge_and_unload logits (reference "merged_logits"), within rel of
// each tensor's scale. Returns the adapter model's logits.
inline Tensor check_merge_matches_peft(LoraRun& r, const std::string& variant, double rel) {
  r.lm->forward(r.ids);
  const Tensor adapter_logits = r.lm->logits().clone();
  const LoadedModel merged = merged_copy(r.cfg, r.w, r.lora.get(), *r.be);
  CausalLM plain(merged.cfg, merged.weights, *r.be);
  plain.forward(r.ids);
  require_close("merged logits", plain.logits(), adapter_logits, rel, 1e-6);
  const auto ref = SafetensorsFile::open(fixtures() / variant / "reference.safetensors");
  require_close("peft merged logits", plain.logits(), ref.tensor("merged_logits"), rel, 1e-6);
  return adapter_logits;
}

// Every LoRA gradient (dA, dB of each term) against the reference's grad.<peft name>.f64, within
// tol of each tensor's scale.
inline void check_lora_grads(const LoraRun& r, const SafetensorsFile& ref, double tol) {
  for (const LoraTerm& t : r.lora->terms())
    for (const char* which : {"A", "B"})
      require_close(peft_name(t, which), *which == 'A' ? t.dA : t.dB,
                    ref.tensor("grad." + peft_name(t, which) + ".f64"), tol, 0);
}

// The run's adapter written back (write_lora_adapter, base model fixtures()/base) equals peft's
// fixtures()/variant/adapter_init bit for bit: the same tensors, names and values.
inline void check_adapter_written_back(const LoraRun& r, const std::string& base,
                                       const std::string& variant) {
  const ssmtune::test::TempDir dir;
  write_lora_adapter(dir.path(), *r.lora, (fixtures() / base).string());
  const auto mine = SafetensorsFile::open(dir.path() / "adapter_model.safetensors");
  const auto theirs =
      SafetensorsFile::open(fixtures() / variant / "adapter_init" / "adapter_model.safetensors");
  REQUIRE(mine.entries().size() == theirs.entries().size());
  for (const SafetensorsEntry& e : theirs.entries()) {
    INFO(e.name);
    REQUIRE(mine.contains(e.name));
    require_close(e.name, mine.tensor(e.name), theirs.tensor(e.name), 0, 0);
  }
}

}  // namespace ssmtune::testing
