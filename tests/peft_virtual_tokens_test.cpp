// Virtual-token methods (docs/methods.md section 5: prompt, prefix and affix tuning, the input
// hook) and the learned conv state of initial-state tuning (docs/methods.md section 4): against the
// independent float64 PyTorch reference tests/fixtures/methods/reference.safetensors
// (data_scripts/make_method_fixture.py), central finite differences (all of them together and
// beside LoRA), docs/methods.md's counts, the adapter round trip, and the recurrent decoder (the
// vectors fed at the start of every sequence, equal to the full forward).
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <random>

#include "backend/backend.h"
#include "decoder_check.h"
#include "gradient_check.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "model/causal_lm.h"
#include "peft/merge.h"
#include "peft/peft_model.h"
#include "test_compare.h"
#include "tiny_model.h"

using namespace ssmtune;
using ssmtune::test::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures(SSMTUNE_FIXTURES_DIR);

using Tiny = ssmtune::test::TinyModel;

PeftConfig tokens_config(std::int64_t prompt, std::int64_t prefix, std::int64_t affix) {
  PeftConfig p;
  p.virtual_tokens.prompt_tokens = prompt;
  p.virtual_tokens.prefix_tokens = prefix;
  p.virtual_tokens.affix_tokens = affix;
  return p;
}

CausalLM make_lm(Tiny& m, PeftModel& peft, std::int64_t chunk = 64) {
  CausalLM lm(m.cfg, peft.weights(), *m.be, chunk);
  lm.set_hook(peft.hook());
  lm.set_scan_hook(peft.scan_hook());
  lm.set_input_hook(peft.input_hook());
  return lm;
}

double loss_of(Tiny& m, PeftModel& peft, const Tensor& ids, const Tensor& targets) {
  CausalLM lm = make_lm(m, peft, 4);
  lm.forward(ids);
  return lm.loss(targets).loss;
}

// (E, K-1) as the fixture stores the conv state (column j = time j-(K-1)) -> ssmtune's (K-1, E).
Tensor transposed(const Tensor& t) {
  const Tensor src = t.to(DType::F64);
  Tensor out = Tensor::empty({t.dim(1), t.dim(0)}, DType::F64);
  for (std::int64_t i = 0; i < t.dim(0); ++i)
    for (std::int64_t j = 0; j < t.dim(1); ++j)
      out.data<double>()[j * t.dim(0) + i] = src.data<double>()[i * t.dim(1) + j];
  return out;
}

}  // namespace

TEST_CASE("prompt, prefix, affix tuning and the learned conv state match the float64 reference",
          "[peft][virtual][methods-parity]") {
  Tiny m(DType::F64);
  const SafetensorsFile ref =
      SafetensorsFile::open(kFixtures / "methods" / "reference.safetensors");
  PeftConfig conv;
  conv.initial_state = true;
  conv.initial_conv_state = true;
  struct Variant {
    const char* name;
    PeftConfig config;
  };
  // The fixture: prompt T = 3, prefix T = 2, affix T = 3; h0 + conv state.
  for (const Variant& v :
       {Variant{"prompt", tokens_config(3, 0, 0)}, Variant{"prefix", tokens_config(0, 2, 0)},
        Variant{"affix", tokens_config(0, 0, 3)}, Variant{"initial_state_conv", conv}}) {
    for (const std::int64_t chunk : {std::int64_t(64), std::int64_t(4)}) {
      DYNAMIC_SECTION(v.name << " scan chunk " << chunk) {
        PeftModel peft(m.cfg, m.w, v.config, *m.be, 0);
        const std::string p = std::string(v.name) + ".";
        for (TrainableParam& t : peft.trainables()) {
          INFO(t.name);
          REQUIRE(ref.contains(p + t.name));
          const Tensor value = t.name.ends_with(".conv") ? transposed(ref.tensor(p + t.name))
                                                         : ref.tensor(p + t.name);
          m.be->copy(value, t.value);
        }
        CausalLM lm = make_lm(m, peft, chunk);
        lm.forward(m.ids);
        // Tolerances: float64 on both sides, only summation orders differ: logits and loss
        // 1e-12 relative; gradients (one more pass, sums that partly cancel) 1e-10.
        testing::require_close(p + "logits", lm.logits(), ref.tensor(p + "logits"), 1e-12, 0);
        const double loss = lm.loss(m.targets).loss;
        REQUIRE(std::fabs(loss - ref.tensor(p + "loss").data<double>()[0]) <= 1e-12 * loss);
        peft.zero_grads();
        lm.backward(m.targets, peft.base_grads());
        for (const TrainableParam& t : peft.trainables()) {
          const Tensor want = t.name.ends_with(".conv")
                                  ? transposed(ref.tensor(p + "grad." + t.name))
                                  : ref.tensor(p + "grad." + t.name);
          testing::require_close(p + "grad." + t.name, t.grad, want, 1e-10, 0);
        }
      }
    }
  }
}

TEST_CASE("virtual-token gradients match finite differences, all together and beside LoRA",
          "[peft][virtual][gradient]") {
  Tiny m(DType::F64);
  const Tensor ids = m.ids.rows(0, 1);
  const Tensor targets = m.targets.rows(0, 1);
  PeftConfig pc = tokens_config(2, 2, 2);
  pc.initial_state = true;
  pc.initial_conv_state = true;
  pc.lora = LoraConfig{};
  pc.lora->rank = 2;
  pc.lora->targets = {"x_proj", "in_proj"};
  PeftModel peft(m.cfg, m.w, pc, *m.be, 4);
  std::mt19937_64 rng(8);
  for (TrainableParam& p : peft.trainables())  // non-zero everywhere: every path is exercised
    for (std::int64_t i = 0; i < p.value.numel(); ++i)
      p.value.data<double>()[i] += std::uniform_real_distribution<double>(-0.2, 0.2)(rng);
  CausalLM lm = make_lm(m, peft, 4);
  lm.forward(ids);
  lm.loss(targets);
  peft.zero_grads();
  lm.backward(targets, peft.base_grads());
  for (TrainableParam& p : peft.trainables()) {
    const Tensor analytic = p.grad.clone();
    testing::check_gradient(p.name, p.value, analytic,
                            [&] { return loss_of(m, peft, ids, targets); });
  }
}

TEST_CASE("virtual-token trainable counts follow docs/methods.md", "[peft][virtual]") {
  Tiny m(DType::F32);
  const std::int64_t L = m.cfg.n_layer, D = m.cfg.d_model, E = m.cfg.d_inner, K = m.cfg.d_conv;
  CHECK(PeftModel(m.cfg, m.w, tokens_config(5, 0, 0), *m.be, 0).n_trainable() == 5 * D);
  CHECK(PeftModel(m.cfg, m.w, tokens_config(0, 4, 0), *m.be, 0).n_trainable() == L * 4 * D);
  CHECK(PeftModel(m.cfg, m.w, tokens_config(0, 0, 3), *m.be, 0).n_trainable() == L * 3 * E);
  PeftConfig conv;
  conv.initial_conv_state = true;
  CHECK(PeftModel(m.cfg, m.w, conv, *m.be, 0).n_trainable() == L * (K - 1) * E);
}

TEST_CASE("prompt tuning starts from embeddings: of an init text, else of random tokens",
          "[peft][virtual]") {
  Tiny m(DType::F32);
  PeftConfig pc = tokens_config(5, 0, 0);
  pc.virtual_tokens.prompt_init_ids = {7, 3};  // repeated to 5 tokens: 7 3 7 3 7
  PeftModel peft(m.cfg, m.w, pc, *m.be, 0);
  const Tensor prompt = peft.input_hook()->prompt();
  const std::int64_t D = m.cfg.d_model;
  for (std::int64_t t = 0; t < 5; ++t)
    for (std::int64_t d = 0; d < D; ++d)
      REQUIRE(prompt.data<float>()[t * D + d] ==
              m.w.embedding.data<float>()[(t % 2 ? 3 : 7) * D + d]);
  // The prompt's own outputs are dropped: logits keep the input's shape.
  CausalLM lm = make_lm(m, peft);
  lm.forward(m.ids);
  CHECK(lm.logits().shape() == Shape{m.ids.dim(0), m.ids.dim(1), m.cfg.vocab_size});
}

TEST_CASE("the recurrent decoder feeds the virtual tokens first, as the full forward does",
          "[peft][virtual][generate]") {
  Tiny m(DType::F32);
  PeftConfig pc = tokens_config(3, 2, 3);
  pc.initial_state = true;
  pc.initial_conv_state = true;
  pc.additional_scan = AdditionalScanConfig{};
  pc.additional_scan->states = 2;
  PeftModel peft(m.cfg, m.w, pc, *m.be, 5);
  std::mt19937 rng(2);
  for (TrainableParam& p : peft.trainables())
    for (std::int64_t i = 0; i < p.value.numel(); ++i)
      p.value.data<float>()[i] += std::uniform_real_distribution<float>(-0.3f, 0.3f)(rng);
  const Tensor ids = m.ids.rows(0, 1);
  CausalLM lm = make_lm(m, peft);
  lm.forward(ids);
  testing::require_decoder_matches_forward(m.cfg, peft.weights(), *m.be, ids, lm.logits(),
                                           peft.unmerged_hook(), peft.scan_hook(),
                                           peft.input_hook());
}

TEST_CASE("virtual tokens and the conv state save, load, and are refused by merge",
          "[peft][virtual][adapter]") {
  Tiny m(DType::F32);
  PeftConfig pc = tokens_config(2, 3, 4);
  pc.initial_state = true;
  pc.initial_conv_state = true;
  PeftModel peft(m.cfg, m.w, pc, *m.be, 1);
  for (TrainableParam& p : peft.trainables())
    for (std::int64_t i = 0; i < p.value.numel(); ++i)
      p.value.data<float>()[i] += 0.01f * float(i % 7);
  TempDir dir;
  REQUIRE(peft.save_adapter(dir.path(), "base", {}));
  PeftModel back(m.cfg, m.w, pc, *m.be, 9);
  back.load(dir.path());
  for (std::size_t i = 0; i < peft.trainables().size(); ++i)
    testing::require_close(peft.trainables()[i].name, back.trainables()[i].value,
                           peft.trainables()[i].value, 0, 0);
  const LoadedModel loaded = load_model_with_adapter(m.dir, dir.path().string(), *m.be);
  CausalLM a = make_lm(m, peft);
  CausalLM b(loaded.cfg, loaded.weights, *m.be);
  b.set_scan_hook(loaded.scan_hook());
  b.set_input_hook(loaded.input_hook());
  a.forward(m.ids);
  b.forward(m.ids);
  testing::require_close("loaded logits", b.logits(), a.logits(), 0, 0);
  CHECK_THAT(loaded.unmergeable(), Catch::Contains("virtual tokens"));
}

TEST_CASE("a zero-initialised conv state leaves the model's logits unchanged", "[peft][virtual]") {
  Tiny m(DType::F32);
  CausalLM plain(m.cfg, m.w, *m.be);
  plain.forward(m.ids);
  PeftConfig pc;
  pc.initial_conv_state = true;
  PeftModel peft(m.cfg, m.w, pc, *m.be, 0);
  CausalLM lm = make_lm(m, peft);
  lm.forward(m.ids);
  // Explicit zero context instead of zero padding: the conv adds w * 0 = 0 terms, in the same
  // order, so no bit changes.
  testing::require_close("logits", lm.logits(), plain.logits(), 0, 0);
}
