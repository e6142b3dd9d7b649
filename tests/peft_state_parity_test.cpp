// State-based PEFT (docs/methods.md section 4) against an independent float64 PyTorch reference:
// tests/fixtures/state-tuning/reference.safetensors, made by data_scripts/make_state_fixture.py
// from transformers' MambaMixer slow path with the three terms written from docs/methods.md and
// gradients from autograd. Variant "a" = initial-state tuning + state-offset h, "b" = state-offset
// y only; both with non-zero parameter values, on the frozen mamba-tiny base.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "peft/state_tuning.h"
#include "test_compare.h"

using namespace ssmtune;
namespace fs = std::filesystem;

TEST_CASE("state tuning matches the PyTorch float64 reference", "[peft][state][state-parity]") {
  const fs::path fixtures(SSMTUNE_FIXTURES_DIR);
  const std::string base = (fixtures / "mamba-tiny").string();
  const ModelConfig cfg = load_model_config(base);
  const ModelWeights w = load_model_weights(base, cfg, DType::F64);
  const auto be = make_cpu_backend();
  const SafetensorsFile ref =
      SafetensorsFile::open(fixtures / "state-tuning" / "reference.safetensors");
  const Tensor ids = ref.tensor("input_ids");
  const Tensor targets = shift_labels(ref.tensor("labels"));

  struct Variant {
    const char* prefix;
    bool initial_state;
    StateOffset offset;
    std::size_t n_params;  // per layer: one per method
  };
  const std::int64_t n_layer = cfg.n_layer;
  for (const Variant v : {Variant{"a.", true, StateOffset::H, std::size_t(2 * n_layer)},
                          Variant{"b.", false, StateOffset::Y, std::size_t(n_layer)}}) {
    // The default chunk covers the 9-token sequences in one chunk; a chunk of 4 puts chunk
    // boundaries inside them, where the carried state (starting from H0) crosses chunks.
    for (const std::int64_t chunk : {std::int64_t(64), std::int64_t(4)}) {
      DYNAMIC_SECTION("variant " << v.prefix << " scan chunk " << chunk) {
        StateTuning st(cfg, v.initial_state, v.offset, DType::F64, *be);
        std::vector<TrainableParam> params;
        st.append_trainables(params);
        // Every fixture parameter of the variant is used and nothing else: the names agree.
        REQUIRE(params.size() == v.n_params);
        for (TrainableParam& p : params) {
          INFO(p.name);
          REQUIRE(ref.contains(v.prefix + p.name));
          const Tensor value = ref.tensor(v.prefix + p.name);
          REQUIRE(value.shape() == p.value.shape());
          be->copy(value, p.value);
        }

        CausalLM lm(cfg, w, *be, chunk);
        lm.set_scan_hook(&st);
        lm.forward(ids);
        const double loss = lm.loss(targets).loss;
        // Tolerances: both sides run in float64 on the same weights and inputs; only the
        // summation order differs (blocked GEMMs and the chunked scan here, torch's loops there),
        // so errors are a few ulps times the depth of the computation. Logits and loss: 1e-12
        // relative. Gradients go through one more pass (backward through both layers and the
        // scan, sums over tokens that partly cancel): 1e-10 normwise.
        const std::string p = v.prefix;
        testing::require_close(p + "logits", lm.logits(), ref.tensor(p + "logits"), 1e-12, 0);
        const double ref_loss = ref.tensor(p + "loss").to(DType::F64).data<double>()[0];
        INFO("loss " << loss << " reference " << ref_loss);
        REQUIRE(std::fabs(loss - ref_loss) <= 1e-12 * std::fabs(ref_loss));

        // After the logits check: backward overwrites the logits with their gradient.
        ModelWeights frozen;  // no base gradients: only the state parameters train
        lm.backward(targets, frozen);
        for (const TrainableParam& q : params)
          testing::require_close(p + "grad." + q.name, q.grad, ref.tensor(p + "grad." + q.name),
                                 1e-10, 0);
      }
    }
  }
}
