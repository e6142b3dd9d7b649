// Parameter tuning (docs/methods.md sections 2 and 3: partial tuning, BitFit, SDT's warmup delta
// and masked training) through PeftModel: against the independent float64 PyTorch reference
// tests/fixtures/methods/reference.safetensors (data_scripts/make_method_fixture.py: its own
// float64 Mamba forward, autograd gradients, non-zero parameter values), against central finite
// differences, zero-initialised at step 0, trainable counts equal docs/methods.md's formulas, the
// adapter file round trip and the exact merge.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <random>

#include "backend/backend.h"
#include "gradient_check.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "model/causal_lm.h"
#include "peft/merge.h"
#include "peft/peft_model.h"
#include "peft/sdt.h"
#include "peft_method_check.h"
#include "test_compare.h"
#include "train/adamw.h"

using namespace ssmtune;
using ssmtune::test::TempDir;
using namespace ssmtune::testing::method_check;
namespace fs = std::filesystem;

namespace {

PeftConfig partial_config(std::vector<std::string> tensors, const std::string& mode) {
  PeftConfig p;
  p.partial = PartialConfig{};
  p.partial->tensors = std::move(tensors);
  p.partial->mode = mode;
  return p;
}

std::string same_name(const std::string& n) { return n; }

}  // namespace

TEST_CASE("partial tuning in delta mode matches the PyTorch float64 reference",
          "[peft][partial][methods-parity]") {
  Base b("mamba-tiny");
  const SafetensorsFile ref = method_reference();
  PeftModel peft(b.cfg, b.w,
                 partial_config({"A_log", "D", "conv1d.bias", "dt_proj.bias", "norm_f"}, "delta"),
                 *b.be, 0);
  REQUIRE(peft.trainables().size() == std::size_t(4 * b.cfg.n_layer + 1));
  check_against_reference(b, peft, ref, "partial_delta", ref.tensor("input_ids"),
                          shift_labels(ref.tensor("labels")), same_name);
}

TEST_CASE("BitFit creates the conv bias a model lacks and matches the reference",
          "[peft][partial][bitfit][methods-parity]") {
  // mamba-odd has use_conv_bias false: BitFit's conv1d.bias starts at zero (created), its
  // dt_proj.bias is the model's own, trained directly: value = pretrained + the fixture's delta.
  Base b("mamba-odd");
  const ModelWeights pretrained = load_model_weights(b.dir, b.cfg, DType::F64);
  const SafetensorsFile ref = method_reference();
  PeftConfig pc;
  pc.bitfit = true;
  PeftModel peft(b.cfg, b.w, pc, *b.be, 0);
  REQUIRE(peft.n_trainable() == b.cfg.n_layer * 2 * b.cfg.d_inner);  // = L * 2E (docs/methods.md)
  for (TrainableParam& p : peft.trainables()) {
    INFO(p.name);
    const Tensor delta = ref.tensor("bitfit_odd." + p.name);
    b.be->copy(delta, p.value);
    if (p.name.ends_with("dt_proj.bias")) {
      const std::int64_t layer =
          std::stoll(p.name.substr(std::string("partial.backbone.layers.").size()));
      b.be->add(pretrained.layers[layer].mamba.dt_proj_bias, p.value);
    }
  }
  peft.after_step();
  Tensor logits;
  const double loss = loss_and_grads(b, peft, ref.tensor("bitfit_odd.input_ids"),
                                     shift_labels(ref.tensor("bitfit_odd.labels")), &logits);
  testing::require_close("bitfit logits", logits, ref.tensor("bitfit_odd.logits"), 1e-12, 0);
  REQUIRE(std::fabs(loss - ref.tensor("bitfit_odd.loss").data<double>()[0]) <= 1e-12 * loss);
  for (const TrainableParam& p : peft.trainables())
    testing::require_close(p.name, p.grad, ref.tensor("bitfit_odd.grad." + p.name), 1e-10, 0);
}

TEST_CASE("SDT's selection keeps the top channels and states, ties to the lower index",
          "[peft][sdt]") {
  const SafetensorsFile ref = method_reference();
  // The fixture's settings: E = 32, N = 8, channel_freeze_fraction 0.75, state 0.5.
  const std::int64_t E = 32, N = 8, R = 1;
  REQUIRE(sdt_kept(E, 0.75) == 8);
  REQUIRE(sdt_kept(N, 0.5) == 4);
  REQUIRE(sdt_kept(32, 0.99) == 1);  // never zero channels
  ModelConfig cfg;
  cfg.n_layer = 2;
  cfg.d_inner = E;
  cfg.d_state = N;
  cfg.dt_rank = R;
  std::vector<SdtLayerSelection> selection;
  for (int i = 0; i < 2; ++i)
    selection.push_back(
        select_sdt_dimensions(ref.tensor("sdt_select.layers." + std::to_string(i) + ".G"), 8, 4));
  const std::vector<TunedTensor> entries = sdt_masked_entries(cfg, selection);
  REQUIRE(entries.size() == 6);
  for (const TunedTensor& e : entries) {
    INFO(e.name);
    // The fixture's B / C indices are into the (N, E) slice: x_proj rows R.. and R+N...
    const std::string what = e.name.substr(e.name.find('.', 11) + 1);  // A_log, x_proj.B, ...
    const std::string layer = e.name.substr(11, e.name.find('.', 11) - 11);
    const Tensor want = ref.tensor("sdt_select.layers." + layer + "." + what + ".index");
    const std::int64_t offset = what == "x_proj.B" ? R * E : what == "x_proj.C" ? (R + N) * E : 0;
    REQUIRE(e.index.numel() == want.numel());
    for (std::int64_t j = 0; j < want.numel(); ++j)
      REQUIRE(e.index.data<std::int64_t>()[j] == want.data<std::int64_t>()[j] + offset);
  }
  // And back: the selection recovered from the masked entries is the one they were made from.
  const auto back = sdt_selection_of(cfg, entries);
  for (std::size_t i = 0; i < 2; ++i) {
    REQUIRE(back[i].channels == selection[i].channels);
    REQUIRE(back[i].states == selection[i].states);
  }
}

TEST_CASE("SDT's masked training matches the PyTorch float64 reference",
          "[peft][sdt][methods-parity]") {
  Base b("mamba-tiny");
  const SafetensorsFile ref = method_reference();
  const std::int64_t E = b.cfg.d_inner, N = b.cfg.d_state, R = b.cfg.dt_rank;
  // The fixture's masks, as ParamTuning entries on A_log and x_proj.weight.
  std::vector<TunedTensor> entries;
  for (std::int64_t i = 0; i < b.cfg.n_layer; ++i)
    for (const std::string what : {"A_log", "x_proj.B", "x_proj.C"}) {
      const std::string name = "sdt.layers." + std::to_string(i) + "." + what;
      Tensor index = ref.tensor("sdt." + name + ".index").clone();
      const std::int64_t offset = what == "x_proj.B" ? R * E : what == "x_proj.C" ? (R + N) * E : 0;
      for (std::int64_t j = 0; j < index.numel(); ++j) index.data<std::int64_t>()[j] += offset;
      TunedTensor e;
      e.name = name;
      e.tensor = "backbone.layers." + std::to_string(i) +
                 (what == "A_log" ? ".mixer.A_log" : ".mixer.x_proj.weight");
      e.mode = TuneMode::Masked;
      e.index = index;
      entries.push_back(e);
    }
  ParamTuning pt(b.cfg, b.w, entries, *b.be);
  for (TunedTensor& e : pt.entries()) b.be->copy(ref.tensor("sdt." + e.name), e.value);
  pt.sync();
  CausalLM lm(b.cfg, pt.weights(), *b.be);
  const Tensor targets = shift_labels(ref.tensor("labels"));
  lm.forward(ref.tensor("input_ids"));
  testing::require_close("sdt logits", lm.logits(), ref.tensor("sdt.logits"), 1e-12, 0);
  pt.zero_grads();
  lm.backward(targets, pt.grads());
  pt.gather_grads();
  for (const TunedTensor& e : pt.entries())
    testing::require_close(e.name, e.grad, ref.tensor("sdt.grad." + e.name), 1e-10, 0);
}

TEST_CASE("parameter-tuning gradients match finite differences", "[peft][partial][sdt][gradient]") {
  Base b("mamba-odd");  // biases on in/out_proj, no conv bias (created), untied head
  const SafetensorsFile ref = SafetensorsFile::open(fs::path(b.dir) / "reference.safetensors");
  // Short sequences keep the finite differences cheap: every element is two forwards.
  const Tensor ids = ref.tensor("input_ids").rows(0, 2);
  const Tensor targets = shift_labels(ref.tensor("labels").rows(0, 2));
  std::mt19937_64 rng(17);
  PeftConfig pc =
      partial_config({"layers.1.D", "conv1d.bias", "layers.2.out_proj.bias", "norm_f"}, "delta");
  pc.sdt = SdtConfig{};
  pc.sdt->channel_freeze_fraction = 0.9;
  pc.sdt->state_freeze_fraction = 0.6;
  PeftModel peft(b.cfg, b.w, pc, *b.be, 3);
  for (const bool masked : {false, true}) {
    DYNAMIC_SECTION((masked ? "masked SDT phase" : "SDT warmup phase")) {
      if (masked) {
        // A warmup delta of random values gives the selection something to rank.
        for (TrainableParam& p : peft.trainables()) testing::fill_uniform(p.value, rng, -0.1, 0.1);
        peft.end_sdt_warmup();
      }
      for (TrainableParam& p : peft.trainables()) testing::fill_uniform(p.value, rng, -0.1, 0.1);
      loss_and_grads(b, peft, ids, targets);
      for (TrainableParam& p : peft.trainables()) {
        const Tensor analytic = p.grad.clone();
        testing::check_gradient(p.name, p.value, analytic,
                                [&] { return loss_only(b, peft, ids, targets); });
      }
    }
  }
}

TEST_CASE("zero-initialised parameter tuning leaves the model's logits unchanged",
          "[peft][partial][sdt]") {
  Base b("mamba-tiny", DType::F32);
  const SafetensorsFile ref = SafetensorsFile::open(fs::path(b.dir) / "reference.safetensors");
  CausalLM plain(b.cfg, b.w, *b.be);
  plain.forward(ref.tensor("input_ids"));
  PeftConfig pc = partial_config({"D", "norm"}, "delta");
  pc.bitfit = true;
  pc.sdt = SdtConfig{};
  PeftModel peft(b.cfg, b.w, pc, *b.be, 0);
  CausalLM tuned(b.cfg, peft.weights(), *b.be);
  tuned.forward(ref.tensor("input_ids"));
  // Adding exact zeros changes no bit.
  testing::require_close("logits (warmup)", tuned.logits(), plain.logits(), 0, 0);
  peft.end_sdt_warmup();
  CausalLM masked(b.cfg, peft.weights(), *b.be);
  masked.forward(ref.tensor("input_ids"));
  testing::require_close("logits (masked)", masked.logits(), plain.logits(), 0, 0);
}

TEST_CASE("parameter-tuning trainable counts follow docs/methods.md", "[peft][partial][sdt]") {
  Base b("mamba-tiny", DType::F32);
  const std::int64_t L = b.cfg.n_layer, E = b.cfg.d_inner, N = b.cfg.d_state, D = b.cfg.d_model;
  PeftModel partial(b.cfg, b.w, partial_config({"A_log", "D", "norm_f"}, "direct"), *b.be, 0);
  REQUIRE(partial.n_trainable() == L * (E * N + E) + D);
  PeftConfig pc;
  pc.sdt = SdtConfig{};
  pc.sdt->channel_freeze_fraction = 0.75;  // k_D = 8 of 32
  pc.sdt->state_freeze_fraction = 0.5;     // k_N = 4 of 8
  PeftModel sdt(b.cfg, b.w, pc, *b.be, 0);
  REQUIRE(sdt.n_trainable() == L * E * N);  // the warmup: a dense delta on A_log
  sdt.end_sdt_warmup();
  // Masked: k_D k_N entries of A_log and all N states of B and C for the k_D channels.
  REQUIRE(sdt.n_trainable() == L * (8 * 4 + 2 * 8 * N));
}

TEST_CASE("parameter-tuning configs that are ill-defined are refused", "[peft][partial][sdt]") {
  Base b("mamba-tiny", DType::F32);
  auto refuses = [&](const PeftConfig& pc, const std::string& fragment) {
    try {
      PeftModel peft(b.cfg, b.w, pc, *b.be, 0);
    } catch (const UsageError& e) {
      INFO(e.what());
      CHECK_THAT(e.what(), Catch::Contains(fragment));
      return;
    }
    FAIL("expected a UsageError containing " << fragment);
  };
  refuses(partial_config({"A_logg"}, "direct"), "unknown tensor \"A_logg\"");
  refuses(partial_config({"layers.5.D"}, "direct"), "the model has 2 layers");
  refuses(partial_config({"D", "layers.0.D"}, "delta"), "asked for twice");
  refuses(partial_config({"lm_head"}, "direct"), "lm_head is tied to the embedding");
  PeftConfig both = partial_config({"conv1d.bias"}, "direct");
  both.bitfit = true;
  refuses(both, "asked for twice");
  PeftConfig with_sdt = partial_config({"A_log"}, "delta");
  with_sdt.sdt = SdtConfig{};
  refuses(with_sdt, "is SDT's to tune");
  PeftConfig with_full = partial_config({"D"}, "direct");
  with_full.full = true;
  refuses(with_full, "peft.full trains every base tensor already");
  PeftConfig mult = partial_config({"D"}, "direct");
  mult.partial->lr_multipliers["A_log"] = 2;
  refuses(mult, "\"A_log\" is not one of peft.partial.tensors");
}

TEST_CASE("two deltas on the same entries are refused", "[peft][partial][sdt]") {
  Base b("mamba-tiny", DType::F32);
  TunedTensor dense;
  dense.name = "a";
  dense.tensor = "backbone.layers.0.mixer.D";
  TunedTensor masked = dense;
  masked.name = "b";
  masked.mode = TuneMode::Masked;
  masked.index = Tensor::zeros({1}, DType::I64);
  try {
    ParamTuning pt(b.cfg, b.w, {dense, masked}, *b.be);
    FAIL("overlapping deltas were accepted");
  } catch (const UsageError& e) {
    CHECK_THAT(e.what(), Catch::Contains("two deltas on the same entries"));
  }
  masked.index.data<std::int64_t>()[0] = 32;  // one past the end of D (32)
  try {
    ParamTuning pt(b.cfg, b.w, {masked}, *b.be);
    FAIL("an index out of range was accepted");
  } catch (const UsageError& e) {
    CHECK_THAT(e.what(), Catch::Contains("expected strictly ascending values in [0, 32)"));
  }
}

TEST_CASE("parameter tuning saves, loads (SDT in either phase) and merges exactly",
          "[peft][partial][sdt][adapter]") {
  Base b("mamba-odd", DType::F32);
  const SafetensorsFile ref = SafetensorsFile::open(fs::path(b.dir) / "reference.safetensors");
  const Tensor ids = ref.tensor("input_ids");
  PeftConfig pc = partial_config({"D", "dt_proj.bias"}, "direct");
  pc.bitfit = false;
  pc.partial->tensors.push_back("conv1d.bias");  // created: mamba-odd has no conv bias
  pc.sdt = SdtConfig{};
  pc.sdt->channel_freeze_fraction = 0.8;
  std::mt19937_64 rng(5);
  for (const bool past_warmup : {false, true}) {
    DYNAMIC_SECTION((past_warmup ? "masked phase" : "warmup phase")) {
      TempDir dir;
      const auto tuned_model = randomised_sdt_model(b, pc, past_warmup, rng);
      PeftModel& peft = *tuned_model->peft;
      // Resume: a fresh PeftModel (in warmup, as every run starts) takes the file's phase.
      const auto back = save_and_reload(b, pc, peft, dir.path());
      REQUIRE(back->peft->sdt_warming_up() == !past_warmup);
      CausalLM tuned(b.cfg, peft.weights(), *b.be);
      tuned.forward(ids);

      // Merge (what eval, generate and merge-adapter load): the same logits from plain weights,
      // a created conv bias turning use_conv_bias on. Float32 sums in another order: 1e-5.
      const LoadedModel merged = load_model_with_adapter(b.dir, dir.path().string(), *b.be);
      REQUIRE(merged.cfg.use_conv_bias);
      CausalLM plain(merged.cfg, merged.weights, *b.be);
      plain.forward(ids);
      testing::require_close("merged logits", plain.logits(), tuned.logits(), 1e-5, 1e-6);
    }
  }
}

TEST_CASE("a hostile parameter-tuning file gets a clear error", "[peft][partial][adapter]") {
  Base b("mamba-tiny", DType::F32);
  TempDir dir;
  auto expect_error = [&](const std::vector<NamedTensor>& tensors, const std::string& meta,
                          const std::string& fragment) {
    write_safetensors(dir / kParamTuningFile, tensors, {{"ssmtune.param_tuning", meta}});
    try {
      read_param_tuning(dir.path(), b.cfg, DType::F32);
      FAIL("accepted: " << meta);
    } catch (const Error& e) {
      INFO(e.what());
      CHECK_THAT(e.what(), Catch::Contains(kParamTuningFile));
      CHECK_THAT(e.what(), Catch::Contains(fragment));
    }
  };
  const Tensor d = Tensor::zeros({32}, DType::F32);
  const std::string entry =
      R"({"entries": [{"name": "x", "tensor": "backbone.layers.0.mixer.D", "mode": "masked"}]})";
  expect_error({{"x", d}}, "{", "metadata");
  expect_error({{"x", d}}, R"({"entries": 3})", "\"entries\" array");
  expect_error({{"x", d}}, entry, "missing tensor x.index");
  Tensor bad_index = Tensor::zeros({2}, DType::I64);
  bad_index.data<std::int64_t>()[1] = 99;
  expect_error({{"x", Tensor::zeros({2}, DType::F32)}, {"x.index", bad_index}}, entry,
               "strictly ascending indices in [0, 32)");
  expect_error(
      {{"x", d}},
      R"({"entries": [{"name": "x", "tensor": "backbone.layers.9.mixer.D", "mode": "delta"}]})",
      "which this model does not have");
  expect_error(
      {{"x", Tensor::zeros({31}, DType::F32)}},
      R"({"entries": [{"name": "x", "tensor": "backbone.layers.0.mixer.D", "mode": "delta"}]})",
      "expected shape (32,)");
  expect_error(
      {{"x", d}, {"y", d}},
      R"({"entries": [{"name": "x", "tensor": "backbone.layers.0.mixer.D", "mode": "delta"}]})",
      "unexpected tensor \"y\"");
}

TEST_CASE("per-tensor LR and weight-decay multipliers scale AdamW's update of that tensor",
          "[peft][partial][optimizer]") {
  auto be = make_cpu_backend();
  OptimizerConfig oc;
  oc.weight_decay = 0.5;
  oc.no_decay = {"D"};
  // Four copies of one parameter and gradient: plain, lr x3, a decay multiplier that overrides
  // no_decay ("D" is in it), and that name without any multiplier (no decay at all).
  const auto make = [&](const std::string& name, double lr_mult, std::optional<double> wd_mult) {
    TrainableParam p{name, Tensor::zeros({3}, DType::F64), Tensor::zeros({3}, DType::F64), lr_mult,
                     wd_mult};
    for (int i = 0; i < 3; ++i) {
      p.value.data<double>()[i] = 1.0 + i;
      p.grad.data<double>()[i] = 0.5 - i;
    }
    return p;
  };
  std::vector<TrainableParam> params{make("a", 1.0, std::nullopt), make("b", 3.0, std::nullopt),
                                     make("c.D", 1.0, 2.0), make("d.D", 1.0, std::nullopt)};
  AdamW opt(oc, params, *be);
  opt.step(0.1);  // the scheduled lr: oc.lr's schedule is the trainer's
  // Step 1 of AdamW: value * (1 - lr wd) - lr * sign(g) (m / sqrt(v) = g / |g| after bias
  // correction, eps negligible): exact up to eps / |g| ~ 1e-8 relative.
  for (int i = 0; i < 3; ++i) {
    const double v = 1.0 + i, g = 0.5 - i, sign = g > 0 ? 1.0 : -1.0;
    CHECK(params[0].value.data<double>()[i] ==
          Approx(v * (1 - 0.1 * 0.5) - 0.1 * sign).epsilon(1e-7));
    CHECK(params[1].value.data<double>()[i] ==
          Approx(v * (1 - 0.3 * 0.5) - 0.3 * sign).epsilon(1e-7));
    CHECK(params[2].value.data<double>()[i] ==
          Approx(v * (1 - 0.1 * 1.0) - 0.1 * sign).epsilon(1e-7));
    CHECK(params[3].value.data<double>()[i] == Approx(v - 0.1 * sign).epsilon(1e-7));
  }
}
