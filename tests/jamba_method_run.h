// What the tests of the SSM-specific PEFT methods on Jamba share (docs/methods.md section 10):
// the Jamba fixtures (tests/fixtures/jamba-tiny, jamba-odd; made by
// data_scripts/make_jamba_fixtures.py) with their reference batch, one small config per method,
// a forward (and backward) of the model with every hook of a PeftModel, and the layer a
// trainable's name points at.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "gradient_check.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/peft_model.h"

namespace ssmtune::test::jamba_methods {

// A Jamba fixture loaded as `dtype`, on `be` (the CPU backend unless given), with the batch of
// its reference.safetensors: ids (B, L), the attention mask where the fixture pads (jamba-odd),
// and the shifted labels.
struct JambaModel {
  std::string dir;
  ModelConfig cfg;
  ModelWeights w;
  std::unique_ptr<Backend> be;
  Tensor ids, mask, targets;
  JambaModel(const std::string& name, DType dtype,
             std::unique_ptr<Backend> backend = make_cpu_backend())
      : dir(std::string(SSMTUNE_FIXTURES_DIR) + "/" + name), be(std::move(backend)) {
    cfg = load_model_config(dir);
    w = load_model_weights(dir, cfg, dtype);
    const SafetensorsFile ref = SafetensorsFile::open(dir + "/reference.safetensors");
    ids = ref.tensor("input_ids");
    mask = ref.contains("attention_mask") ? ref.tensor("attention_mask") : Tensor();
    targets = shift_labels(ref.tensor("labels"));
  }
  // Sequences [begin, end) of the batch alone (finite differences run two forwards per
  // element).
  JambaModel& batch_rows(std::int64_t begin, std::int64_t end) {
    ids = ids.rows(begin, end);
    if (mask.defined()) mask = mask.rows(begin, end);
    targets = targets.rows(begin, end);
    return *this;
  }
};

struct MethodCase {
  std::string name;
  PeftConfig config;
  bool mergeable = false;  // merge-adapter folds it into the weights
};

// Every SSM method of docs/methods.md, each alone, sized so that finite differences over all
// its parameters stay cheap. The partial-tuning cases name the Jamba mixer's own tensors (its
// dt/B/C norms) and a bias jamba-tiny lacks (out_proj.bias: created, then merged).
inline std::vector<MethodCase> ssm_method_cases() {
  std::vector<MethodCase> out;
  const auto add = [&](const std::string& name, bool mergeable, auto&& set) {
    MethodCase c{name, PeftConfig{}, mergeable};
    set(c.config);
    out.push_back(std::move(c));
  };
  add("partial direct", true, [](PeftConfig& p) {
    p.partial = PartialConfig{};
    p.partial->tensors = {"D",           "dt_proj.bias", "norm",  "dt_layernorm",
                          "b_layernorm", "c_layernorm",  "norm_f"};
  });
  add("partial delta", true, [](PeftConfig& p) {
    p.partial = PartialConfig{};
    p.partial->tensors = {"layers.0.conv1d", "out_proj.bias"};
    p.partial->mode = "delta";
  });
  add("bitfit", true, [](PeftConfig& p) { p.bitfit = true; });
  add("sdt", true, [](PeftConfig& p) {
    p.sdt = SdtConfig{};
    p.sdt->channel_freeze_fraction = 0.9;
    p.sdt->state_freeze_fraction = 0.5;
  });
  add("initial state + conv state", false, [](PeftConfig& p) {
    p.initial_state = true;
    p.initial_conv_state = true;
  });
  add("state offset h", false, [](PeftConfig& p) { p.state_offset = "h"; });
  add("state offset y", false, [](PeftConfig& p) { p.state_offset = "y"; });
  add("parallel adapter", false, [](PeftConfig& p) {
    p.parallel_adapter = ParallelAdapterConfig{};
    p.parallel_adapter->rank = 2;
    p.parallel_adapter->dropout = 0;
  });
  add("additional scan", false, [](PeftConfig& p) {
    p.additional_scan = AdditionalScanConfig{};
    p.additional_scan->states = 2;
    p.additional_scan->init = "s4d";
  });
  add("prefix", false, [](PeftConfig& p) { p.virtual_tokens.prefix_tokens = 2; });
  add("affix", false, [](PeftConfig& p) { p.virtual_tokens.affix_tokens = 2; });
  return out;
}

// A case in one of its phases: every method, and SDT also in its masked phase.
struct MethodPhase {
  MethodCase method;
  bool masked = false;
  std::string label() const { return method.name + (masked ? " (masked phase)" : ""); }
};
inline std::vector<MethodPhase> ssm_method_phases() {
  std::vector<MethodPhase> out;
  for (const MethodCase& c : ssm_method_cases()) {
    out.push_back({c, false});
    if (c.config.sdt) out.push_back({c, true});
  }
  return out;
}

// The model the PeftModel runs, with every hook it has, the router loss in the objective.
inline CausalLM make_lm(JambaModel& m, PeftModel& peft, std::int64_t scan_chunk = 4) {
  CausalLM lm(m.cfg, peft.weights(), *m.be, scan_chunk);
  lm.set_hook(peft.hook());
  lm.set_scan_hook(peft.scan_hook());
  lm.set_input_hook(peft.input_hook());
  lm.set_router_aux_coef(m.cfg.router_aux_loss_coef);
  return lm;
}

// Forward of m's batch (LM loss + router aux loss); with `backward`, the gradients of every
// trainable (zeroed first, masked ones gathered). The effective weights follow the values first.
inline double objective(JambaModel& m, PeftModel& peft, bool backward = false,
                        Tensor* logits = nullptr) {
  peft.after_step();
  CausalLM lm = make_lm(m, peft);
  lm.forward(m.ids, m.mask);
  if (logits) *logits = lm.logits().clone();
  const double value = lm.loss(m.targets).objective;
  if (backward) {
    peft.zero_grads();
    lm.backward(m.targets, peft.base_grads());
    peft.finish_backward();
  }
  return value;
}

// Every trainable += U(-scale, scale), so each term and its interactions are exercised.
inline void randomise(PeftModel& peft, std::uint64_t seed, double scale) {
  std::mt19937_64 rng(seed);
  for (TrainableParam& p : peft.trainables()) {
    const Tensor noise = testing::random_f64(p.value.shape(), rng, -scale, scale);
    Tensor host = p.value.to(DType::F64);
    for (std::int64_t i = 0; i < host.numel(); ++i)
      host.data<double>()[i] += noise.data<double>()[i];
    const Tensor converted = host.to(p.value.dtype());
    for (std::int64_t i = 0; i < p.value.numel(); ++i) {
      if (p.value.dtype() == DType::F64)
        p.value.data<double>()[i] = converted.data<double>()[i];
      else
        p.value.data<float>()[i] = converted.data<float>()[i];
    }
  }
  peft.after_step();
}

// A PeftModel of `pc` on m (seed `seed`) with random values; in SDT's masked phase when
// `masked`, after a random warmup delta that gives the selection something to rank.
inline std::unique_ptr<PeftModel> randomised_peft(JambaModel& m, const PeftConfig& pc, bool masked,
                                                  std::uint64_t seed, double scale = 0.2) {
  auto peft = std::make_unique<PeftModel>(m.cfg, m.w, pc, *m.be, seed);
  if (masked) {
    randomise(*peft, seed + 1, 0.1);
    peft->end_sdt_warmup();
  }
  randomise(*peft, seed + 2, scale);
  return peft;
}

// The layer a name points at ("state_offset.layers.2.h", "partial.model.layers.0.mamba.D"):
// the number after the first "layers.", or -1 for a model-level name.
inline std::int64_t layer_of(const std::string& name) {
  const std::size_t at = name.find("layers.");
  if (at == std::string::npos) return -1;
  return std::stoll(name.substr(at + 7));
}

}  // namespace ssmtune::test::jamba_methods
