// Frozen base weights held in bf16 (model/weight_storage.h, docs/models.md "Weight storage") on
// the committed fixtures tests/fixtures/mamba-tiny, jamba-tiny and mamba2-tiny/-odd
// (data_scripts/make_fixtures.py, make_jamba_fixtures.py, make_mamba2_fixtures.py). The fixtures
// store fp32 weights; "bf16-exact" below is the fp32 model whose every weight was rounded to
// bf16 first, so it holds exactly the values the bf16 model widens its weights to. On those
// weights a bf16-held model must compute the same bits as the fp32-held one: the widening is
// exact and every op then sees the same fp32 inputs in the same order (same backend, same
// thread count).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>

#include "backend/backend.h"
#include "infer/decoder.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "model/weight_storage.h"
#include "peft/peft_model.h"
#include "test_compare.h"
#include "train/adamw.h"
#include "train/train_step.h"

using namespace ssmtune;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures(SSMTUNE_FIXTURES_DIR);

// The fp32 weights of `model`, each rounded to bf16 and widened back.
ModelWeights bf16_exact(const ModelConfig& cfg, ModelWeights w) {
  for_each_param(cfg, w,
                 [](const std::string&, Tensor& t) { t = t.to(DType::BF16).to(DType::F32); });
  if (cfg.tie_word_embeddings) w.lm_head = w.embedding;
  return w;
}

// A fixture model and its reference batch (input_ids, labels, attention_mask if any).
struct Fixture {
  std::string dir;
  ModelConfig cfg;
  Batch batch;
  explicit Fixture(const std::string& name) : dir((kFixtures / name).string()) {
    cfg = load_model_config(dir);
    const auto ref = SafetensorsFile::open(fs::path(dir) / "reference.safetensors");
    batch.input_ids = ref.tensor("input_ids");
    batch.labels = ref.tensor("labels");
    if (ref.contains("attention_mask")) batch.attention_mask = ref.tensor("attention_mask");
    const Tensor targets = shift_labels(batch.labels);
    for (std::int64_t i = 0; i < targets.numel(); ++i)
      batch.n_loss_tokens += targets.data<std::int64_t>()[i] != -100;
  }
  ModelWeights load(DType held) const { return load_model_weights(dir, cfg, held); }
};

// What a short training run computed: the logits and loss before any step, every trainable's
// gradient of the first step, each step's loss, and the trainables at the end.
struct Trajectory {
  Tensor logits;
  double loss = 0;
  std::vector<Tensor> first_grads, final_values;
  std::vector<double> step_losses;
};

// `steps` AdamW steps of `peft_cfg` on weights `w` (held as loaded), SDT's warmup ended when due.
Trajectory train(const Fixture& f, ModelWeights& w, const PeftConfig& peft_cfg, Backend& be,
                 int steps) {
  PeftModel peft(f.cfg, w, peft_cfg, be, 3);
  CausalLM lm(f.cfg, peft.weights(), be, 4);
  lm.set_hook(peft.hook());
  lm.set_scan_hook(peft.scan_hook());
  OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.weight_decay = 0.01;
  AdamW opt(oc, peft.trainables(), be);
  Trajectory t;
  lm.forward(f.batch.input_ids, f.batch.attention_mask);
  t.logits = lm.logits().clone();
  t.loss = lm.loss(shift_labels(f.batch.labels)).objective;
  for (int s = 1; s <= steps; ++s) {
    t.step_losses.push_back(train_step(lm, peft, opt, {f.batch}, oc.lr, 1.0, s).loss);
    if (s == 1)
      for (const TrainableParam& p : peft.trainables()) t.first_grads.push_back(p.grad.clone());
    if (peft.sdt_warming_up() && s == peft.sdt_warmup_steps()) {
      peft.end_sdt_warmup();
      opt.reset();
    }
  }
  for (const TrainableParam& p : peft.trainables()) t.final_values.push_back(p.value.clone());
  return t;
}

// The same bytes (host tensors of one dtype and shape).
void require_bits(const std::string& what, const Tensor& got, const Tensor& want) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  REQUIRE(got.dtype() == want.dtype());
  CHECK(std::memcmp(got.raw(), want.raw(), got.nbytes()) == 0);
}

// Bit-for-bit: the same fp32 inputs to the same ops (see the file comment).
void require_same(const Trajectory& got, const Trajectory& want) {
  require_bits("logits", got.logits, want.logits);
  CHECK(got.loss == want.loss);
  CHECK(got.step_losses == want.step_losses);
  REQUIRE(got.first_grads.size() == want.first_grads.size());
  for (std::size_t i = 0; i < got.first_grads.size(); ++i)
    require_bits("grad " + std::to_string(i), got.first_grads[i], want.first_grads[i]);
  REQUIRE(got.final_values.size() == want.final_values.size());
  for (std::size_t i = 0; i < got.final_values.size(); ++i)
    require_bits("value " + std::to_string(i), got.final_values[i], want.final_values[i]);
}

// The dtype each parameter of `w` is held in, by HF name.
std::map<std::string, DType> held_dtypes(const ModelConfig& cfg, ModelWeights& w) {
  std::map<std::string, DType> out;
  for_each_param(cfg, w, [&](const std::string& name, Tensor& t) { out[name] = t.dtype(); });
  return out;
}

PeftConfig lora_config(std::vector<std::string> targets, bool dora = false) {
  PeftConfig p;
  p.lora = LoraConfig{};
  p.lora->targets = std::move(targets);
  p.lora->rank = 4;
  p.lora->dora = dora;
  return p;
}

}  // namespace

TEST_CASE(
    "LoRA and DoRA train on bf16-held frozen weights exactly as on fp32 weights of the same "
    "values",
    "[bf16-frozen][lora][dora][jamba][mamba2][train]") {
  auto be = make_cpu_backend();
  struct Case {
    const char* model;
    PeftConfig peft;
  };
  const Case cases[] = {
      {"mamba-tiny", lora_config({"in_proj", "x_proj", "out_proj", "embeddings"})},
      {"mamba-tiny", lora_config({"in_proj", "dt_proj", "out_proj"}, true)},
      {"jamba-tiny",
       lora_config({"q_proj", "v_proj", "in_proj", "router", "gate_proj", "down_proj"})},
      {"jamba-tiny", lora_config({"o_proj", "up_proj", "out_proj"}, true)},
      // Mamba-2: in_proj slices beside a bf16 in_proj and its bias (mamba2-odd), DoRA's W.
      {"mamba2-odd", lora_config({"in_proj.x", "in_proj.dt", "out_proj", "embeddings"})},
      {"mamba2-tiny", lora_config({"in_proj", "out_proj"}, true)},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.model << (c.peft.lora->dora ? " DoRA" : " LoRA")) {
      const Fixture f(c.model);
      ModelWeights held = f.load(DType::BF16);
      ModelWeights exact = bf16_exact(f.cfg, f.load(DType::F32));
      const Trajectory got = train(f, held, c.peft, *be, 3);
      const Trajectory want = train(f, exact, c.peft, *be, 3);
      // Nothing LoRA trains is a base tensor: the whole base stayed bf16.
      for (const auto& [name, dtype] : held_dtypes(f.cfg, held)) {
        INFO(name);
        CHECK(dtype == DType::BF16);
      }
      require_same(got, want);
      CHECK(got.step_losses.back() < got.loss);  // it trained
    }
  }
}

TEST_CASE("bf16 storage of fp32 weights moves the logits by no more than bf16 rounding allows",
          "[bf16-frozen][model][jamba][mamba2]") {
  auto be = make_cpu_backend();
  for (const char* model : {"mamba-tiny", "jamba-tiny", "mamba2-odd"}) {
    DYNAMIC_SECTION(model) {
      const Fixture f(model);
      const ModelWeights w32 = f.load(DType::F32), w16 = f.load(DType::BF16);
      CausalLM a(f.cfg, w32, *be), b(f.cfg, w16, *be);
      a.forward(f.batch.input_ids, f.batch.attention_mask);
      b.forward(f.batch.input_ids, f.batch.attention_mask);
      // Rounding to nearest moves each weight by at most u = 2^-9 of itself. To first order a
      // product stage whose weights move by u moves its output by at most u of its scale, and
      // a stage passes on the relative error of its input unchanged, so the errors of the
      // stages a logit goes through add: the embedding, per layer its successive products (the
      // Mamba mixer's in_proj -> x_proj -> dt_proj -> out_proj, Mamba-2's in_proj -> conv1d
      // -> out_proj, attention's v -> o, the feed-forward's gate/up -> down: at most 4) and
      // its norm gains (<= 2, Mamba-2's gated norm included), the final norm and lm_head. S = 3 + 6 n_layer stages; the bound is S u of the largest logit.
      const double u = std::ldexp(1.0, -9);
      const double stages = 3.0 + 6.0 * double(f.cfg.n_layer);
      const Tensor l32 = a.logits().to(DType::F64), l16 = b.logits().to(DType::F64);
      double max_ref = 0, max_diff = 0;
      for (std::int64_t i = 0; i < l32.numel(); ++i) {
        max_ref = std::max(max_ref, std::fabs(l32.data<double>()[i]));
        max_diff = std::max(max_diff, std::fabs(l32.data<double>()[i] - l16.data<double>()[i]));
      }
      INFO("max |logit| " << max_ref << ", max change " << max_diff << " = "
                          << max_diff / (u * max_ref) << " u of it; bound " << stages << " u");
      CHECK(max_diff > 0);  // the weights were rounded: something moved
      CHECK(max_diff <= stages * u * max_ref);
    }
  }
}

TEST_CASE("frozen weights held in bf16 take half the bytes; the tensors a method trains stay fp32",
          "[bf16-frozen][model][peft][partial]") {
  auto be = make_cpu_backend();
  const Fixture f("mamba-tiny");
  ModelWeights w32 = f.load(DType::F32), w16 = f.load(DType::BF16);
  const std::int64_t bytes32 = held_param_bytes(f.cfg, w32);
  CHECK(held_param_bytes(f.cfg, w16) * 2 == bytes32);
  std::int64_t n_params = 0;
  for_each_param(f.cfg, w32, [&](const std::string&, Tensor& t) { n_params += t.numel(); });
  CHECK(bytes32 == 4 * n_params);

  // Partial tuning in direct mode trains A_log and D in place: those two fp32, the rest bf16.
  PeftConfig p;
  p.partial = PartialConfig{};
  p.partial->tensors = {"A_log", "D"};
  PeftModel peft(f.cfg, w16, p, *be, 0);
  std::int64_t trained = 0;
  for (const auto& [name, dtype] : held_dtypes(f.cfg, w16)) {
    INFO(name);
    const bool tuned = name.ends_with(".A_log") || name.ends_with(".D");
    CHECK(dtype == (tuned ? DType::F32 : DType::BF16));
  }
  for (const TrainableParam& t : peft.trainables()) {
    CHECK(t.value.dtype() == DType::F32);
    CHECK(t.grad.dtype() == DType::F32);
    trained += t.value.numel();
  }
  CHECK(held_param_bytes(f.cfg, w16) == 2 * n_params + 2 * trained);
}

TEST_CASE(
    "partial tuning and SDT train on bf16-held frozen weights as on fp32 weights of the same "
    "values",
    "[bf16-frozen][peft][partial][sdt][train]") {
  auto be = make_cpu_backend();
  const Fixture f("mamba-tiny");
  PeftConfig direct;
  direct.partial = PartialConfig{};
  direct.partial->tensors = {"A_log", "conv1d.bias", "norm_f"};
  PeftConfig delta = direct;
  delta.partial->mode = "delta";
  PeftConfig sdlora = lora_config({"in_proj", "out_proj"});
  sdlora.sdt = SdtConfig{1, 0.5, 0.5};  // one warmup step, then masked training
  const std::vector<std::pair<const char*, PeftConfig>> cases = {
      {"partial direct", direct}, {"partial delta", delta}, {"SDLoRA", sdlora}};
  for (const auto& [what, cfg] : cases) {
    DYNAMIC_SECTION(what) {
      ModelWeights held = f.load(DType::BF16);
      ModelWeights exact = bf16_exact(f.cfg, f.load(DType::F32));
      const Trajectory got = train(f, held, cfg, *be, 3);
      const Trajectory want = train(f, exact, cfg, *be, 3);
      require_same(got, want);
      // Each base tensor a parameter-tuning entry acted on is fp32, every other bf16 (SDT: A_log
      // from its warmup delta, x_proj from its masked phase).
      for (const auto& [name, dtype] : held_dtypes(f.cfg, held)) {
        INFO(name);
        const bool tuned =
            name.ends_with(".A_log") ||
            (cfg.partial && (name.ends_with("conv1d.bias") || name.ends_with("norm_f.weight"))) ||
            (cfg.sdt && name.ends_with("x_proj.weight"));
        CHECK(dtype == (tuned ? DType::F32 : DType::BF16));
      }
    }
  }
}

TEST_CASE("full fine-tuning refuses frozen weights held in bf16: nothing is frozen",
          "[bf16-frozen][peft]") {
  auto be = make_cpu_backend();
  const Fixture f("mamba-tiny");
  ModelWeights held = f.load(DType::BF16);
  PeftConfig full;
  full.full = true;
  CHECK_THROWS_WITH(PeftModel(f.cfg, held, full, *be, 0),
                    Catch::Contains("peft.full trains every base tensor") &&
                        Catch::Contains("training.frozen_weights"));
}

TEST_CASE("the decoder on bf16-held weights gives the bits of fp32 weights of the same values",
          "[bf16-frozen][generate][jamba][mamba2]") {
  auto be = make_cpu_backend();
  for (const char* model : {"mamba-tiny", "jamba-tiny", "mamba2-odd"}) {
    DYNAMIC_SECTION(model) {
      const Fixture f(model);
      const ModelWeights held = f.load(DType::BF16);
      const ModelWeights exact = bf16_exact(f.cfg, f.load(DType::F32));
      Decoder a(f.cfg, held, *be, 3), b(f.cfg, exact, *be, 3);
      const std::vector<std::int64_t> prompt = {1, 5, 9, 2, 7};
      require_bits("prefill", a.prefill(prompt), b.prefill(prompt));
      for (const std::int64_t id : {3, 4, 6}) require_bits("step", a.step(id), b.step(id));
    }
  }
}
