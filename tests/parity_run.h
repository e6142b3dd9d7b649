// A fixture model's forward and loss on its reference batch (the CPU backend), and the check of
// every parameter gradient against the reference: the scaffolding the Mamba, Mamba-2 and Jamba
// parity tests share (tests/*_parity_test.cpp; fixtures from data_scripts/make_*fixtures.py).
#pragma once

#include <catch2/catch.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "test_compare.h"

namespace ssmtune::testing {

inline std::string fixture_dir(const std::string& model) {
  return (std::filesystem::path(SSMTUNE_FIXTURES_DIR) / model).string();
}

struct ParityRun {
  ModelConfig cfg;
  ModelWeights w, grads;
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<CausalLM> lm;
  LmLoss loss;
};

// Forward and loss of the reference batch (input_ids, labels, and attention_mask where the
// fixture has one) with the model's weights in `dtype`; a Jamba model with router logits in its
// config puts the router loss in the objective, as the fixtures ran it.
inline std::unique_ptr<ParityRun> run_parity_fixture(const std::string& model,
                                                     const SafetensorsFile& ref, DType dtype,
                                                     std::int64_t scan_chunk = 64) {
  auto r = std::make_unique<ParityRun>();
  r->cfg = load_model_config(fixture_dir(model));
  r->w = load_model_weights(fixture_dir(model), r->cfg, dtype);
  r->grads = zeros_like_params(r->cfg, dtype);
  r->lm = std::make_unique<CausalLM>(r->cfg, r->w, *r->be, scan_chunk);
  if (r->cfg.is_jamba()) r->lm->set_router_aux_coef(r->cfg.router_aux_loss_coef);
  const Tensor mask = ref.contains("attention_mask") ? ref.tensor("attention_mask") : Tensor();
  r->lm->forward(ref.tensor("input_ids"), mask);
  r->loss = r->lm->loss(shift_labels(ref.tensor("labels")));
  return r;
}

// Backward, then every parameter gradient against grad.<name>, and no reference gradient left
// unchecked. A parameter without a reference gradient fails unless `may_lack_grad(name)` says
// why it may (then its gradient must be exactly zero: torch leaves .grad None where nothing
// flowed, e.g. a Jamba expert no token chose).
inline void check_parity_grads(ParityRun& r, const SafetensorsFile& ref, double rtol,
                               double atol,
                               const std::function<bool(const std::string&)>& may_lack_grad =
                                   [](const std::string&) { return false; }) {
  r.lm->backward(shift_labels(ref.tensor("labels")), r.grads);
  int n_checked = 0;
  for_each_param(r.cfg, r.grads, [&](const std::string& name, Tensor& g) {
    if (!ref.contains("grad." + name)) {
      INFO(name << " has no reference gradient");
      REQUIRE(may_lack_grad(name));
      const Tensor g64 = g.to(DType::F64);
      for (std::int64_t i = 0; i < g64.numel(); ++i) REQUIRE(g64.data<double>()[i] == 0.0);
      return;
    }
    require_close("grad." + name, g, ref.tensor("grad." + name), rtol, atol);
    ++n_checked;
  });
  int n_ref = 0;
  for (const SafetensorsEntry& e : ref.entries()) n_ref += e.name.rfind("grad.", 0) == 0;
  CHECK(n_checked == n_ref);
}

}  // namespace ssmtune::testing
