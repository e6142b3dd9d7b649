// State-based PEFT (docs/methods.md section 4) through the model's scan hook: zero-initialised
// terms leave the model unchanged, and the gradients of H0 (initial-state tuning), h' and y'
// (state-offset tuning) match central finite differences in float64, alone and beside LoRA.
#include <catch2/catch.hpp>
#include <filesystem>
#include <random>

#include "backend/backend.h"
#include "decoder_check.h"
#include "gradient_check.h"
#include "infer/decoder.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "peft/lora.h"
#include "peft/peft_model.h"
#include "peft/state_tuning.h"
#include "test_compare.h"
#include "tiny_model.h"

using namespace ssmtune;
namespace fs = std::filesystem;

namespace {

using ssmtune::test::TinyModel;

}  // namespace

TEST_CASE("zero-initialised state tuning leaves the model's logits unchanged", "[peft][state]") {
  TinyModel m(DType::F32);
  CausalLM plain(m.cfg, m.w, *m.be);
  plain.forward(m.ids);
  for (const StateOffset offset : {StateOffset::None, StateOffset::H, StateOffset::Y}) {
    DYNAMIC_SECTION("offset " << int(offset)) {
      StateTuning st(m.cfg, /*initial_state=*/true, offset, DType::F32, *m.be);
      CausalLM tuned(m.cfg, m.w, *m.be);
      tuned.set_scan_hook(&st);
      tuned.forward(m.ids);
      // Adding exact zeros (and starting from a zero state) changes no bit.
      testing::require_close("logits", tuned.logits(), plain.logits(), 0, 0);
    }
  }
}

TEST_CASE("state tuning gradients match finite differences", "[peft][state][gradient]") {
  TinyModel m(DType::F64);
  ModelWeights frozen;
  struct Case {
    bool initial_state;
    StateOffset offset;
    bool with_lora;
  };
  for (const Case c : {Case{true, StateOffset::H, false}, Case{false, StateOffset::Y, false},
                       Case{true, StateOffset::Y, true}}) {
    DYNAMIC_SECTION("initial_state " << c.initial_state << " offset " << int(c.offset) << " lora "
                                     << c.with_lora) {
      StateTuning st(m.cfg, c.initial_state, c.offset, DType::F64, *m.be);
      std::vector<TrainableParam> params;
      st.append_trainables(params);
      LoraConfig lc;
      lc.targets = {"out_proj", "x_proj.C"};
      lc.rank = 2;
      LoraModel lora(m.cfg, lc, DType::F64, *m.be);
      if (c.with_lora) lora.append_trainables(params);
      // Non-zero values, so every term and its interactions are exercised.
      std::mt19937_64 rng(17);
      for (TrainableParam& p : params) testing::fill_uniform(p.value, rng, -0.3, 0.3);
      // A short scan chunk puts chunk boundaries inside the 9-token sequences.
      CausalLM lm(m.cfg, m.w, *m.be, /*scan_chunk=*/4);
      lm.set_scan_hook(&st);
      if (c.with_lora) lm.set_hook(&lora);
      auto loss = [&] {
        lm.forward(m.ids);
        return lm.loss(m.targets).loss;
      };
      loss();
      lm.backward(m.targets, frozen);
      REQUIRE(!params.empty());
      for (TrainableParam& p : params) testing::check_gradient(p.name, p.value, p.grad, loss);
    }
  }
}

TEST_CASE("the recurrent decoder applies state tuning as the full forward does",
          "[peft][state][generate]") {
  TinyModel m(DType::F32);
  for (const StateOffset offset : {StateOffset::H, StateOffset::Y}) {
    DYNAMIC_SECTION("offset " << int(offset)) {
      StateTuning st(m.cfg, /*initial_state=*/true, offset, DType::F32, *m.be);
      std::vector<TrainableParam> params;
      st.append_trainables(params);
      std::mt19937_64 rng(5);
      std::uniform_real_distribution<float> u(-0.3f, 0.3f);
      for (TrainableParam& p : params)
        for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data<float>()[i] = u(rng);
      const Tensor ids = m.ids.rows(0, 1);  // one sequence (1, L)
      CausalLM lm(m.cfg, m.w, *m.be);
      lm.set_scan_hook(&st);
      lm.forward(ids);
      testing::require_decoder_matches_forward(m.cfg, m.w, *m.be, ids, lm.logits(), nullptr,
                                               &st);
    }
  }
}

TEST_CASE("trainable parameter counts follow the methods' formulas", "[peft][state]") {
  TinyModel m(DType::F32);
  const std::int64_t L = m.cfg.n_layer, D = m.cfg.d_model, E = m.cfg.d_inner, N = m.cfg.d_state;
  const std::int64_t R = m.cfg.dt_rank, V = m.cfg.vocab_size;
  auto count = [&](PeftConfig p) {
    ModelWeights w = m.w;
    return PeftModel(m.cfg, w, p, *m.be, 0).n_trainable();
  };
  PeftConfig p;
  p.initial_state = true;
  CHECK(count(p) == L * E * N);
  p.state_offset = "h";
  CHECK(count(p) == 2 * L * E * N);
  p.initial_state = false;
  p.state_offset = "y";
  CHECK(count(p) == L * E);
  PeftConfig lora;
  lora.lora = LoraConfig{};
  lora.lora->rank = 3;
  lora.lora->targets = {"in_proj", "out_proj", "x_proj", "dt_proj", "embeddings"};
  const std::int64_t r = 3;
  CHECK(count(lora) ==
        L * (r * (D + 2 * E) + r * (E + D) + r * (E + R + 2 * N) + r * (R + E)) + r * (V + D));
  lora.lora->targets = {"in_proj.x", "x_proj.B", "layers.1.x_proj.C"};
  CHECK(count(lora) == L * (r * (D + E) + r * (E + N)) + r * (E + N));
}
