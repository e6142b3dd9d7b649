// DoRA (docs/methods.md section 1; lib/peft/dora.h): against Hugging Face peft 0.12.0 in float64
// (variant `dora` of tests/fixtures/methods/reference.safetensors and the PEFT-written adapter
// tests/fixtures/methods/dora_adapter/, both made by data_scripts/make_method_fixture.py), central
// finite differences (with module biases, dropout), the zero init, the adapter round trip, resume,
// the exact merge, the trainable count and the configs DoRA refuses.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "backend/backend.h"
#include "gradient_check.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "model/causal_lm.h"
#include "peft/dora.h"
#include "peft/lora_adapter_io.h"
#include "peft/merge.h"
#include "peft/peft_model.h"
#include "peft_method_check.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::testing::method_check;
using ssmtune::test::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path kPeftAdapter = kFixtures / "methods" / "dora_adapter";

LoraConfig dora_config(std::vector<std::string> targets, std::int64_t rank, double alpha) {
  LoraConfig lc;
  lc.targets = std::move(targets);
  lc.rank = rank;
  lc.alpha = alpha;
  lc.dora = true;
  return lc;
}

PeftConfig peft_with(const LoraConfig& lc) {
  PeftConfig pc;
  pc.lora = lc;
  return pc;
}

// The fixture's DoRA: peft 0.12.0 LoraConfig(r=4, lora_alpha=8, target_modules=[in_proj,
// out_proj], use_dora=True), s = 2.
LoraConfig fixture_config() { return dora_config({"in_proj", "out_proj"}, 4, 8); }

// Non-zero B and a magnitude off ||W||_row, so that every gradient and f = m / n != 1 matter.
// In place: the trainables hold the terms' storage.
void randomise(LoraModel& lora, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  std::unique_ptr<Backend> be = make_cpu_backend();
  for (LoraTerm& t : lora.terms()) {
    Tensor B = Tensor::empty(t.B.shape(), DType::F64), m = t.magnitude.to(DType::F64);
    testing::fill_uniform(B, rng, -0.5, 0.5);
    for (std::int64_t i = 0; i < m.numel(); ++i) m.data<double>()[i] *= 1 + u(rng);
    be->copy(B.to(t.B.dtype()), t.B);
    be->copy(m.to(t.magnitude.dtype()), t.magnitude);
  }
}

// `fn` must throw an Error of type E whose message holds `fragment`.
template <class E>
void require_error(const std::function<void()>& fn, const std::string& fragment) {
  try {
    fn();
  } catch (const E& e) {
    INFO(e.what());
    CHECK_THAT(e.what(), Catch::Contains(fragment));
    return;
  }
  FAIL("expected an error containing \"" << fragment << "\"");
}

}  // namespace

TEST_CASE("DoRA matches peft 0.12: logits, loss and the gradients of A, B and the magnitude",
          "[peft][lora][dora][methods-parity]") {
  Base b("mamba-tiny");
  const SafetensorsFile ref = method_reference();
  PeftModel peft(b.cfg, b.w, peft_with(fixture_config()), *b.be, 0);
  REQUIRE(peft.trainables().size() == std::size_t(3 * 2 * b.cfg.n_layer));  // A, B, m per term
  for (const LoraTerm& t : peft.lora()->terms()) CHECK(t.scale == 2.0);
  // Both float64: logits and loss 1e-12, gradients 1e-10 relative (peft_method_check.h).
  check_against_reference(b, peft, ref, "dora", ref.tensor("input_ids"),
                          shift_labels(ref.tensor("labels")),
                          [](const std::string& n) { return n; });
}

TEST_CASE("a DoRA adapter written by peft reads as the fixture's values and runs as peft's",
          "[peft][lora][dora][adapter][methods-parity]") {
  Base b("mamba-tiny");
  const SafetensorsFile ref = method_reference();
  const auto lora = read_lora_adapter(kPeftAdapter, b.cfg, DType::F64, *b.be);
  REQUIRE(lora->config().dora);
  REQUIRE(lora->terms().size() == std::size_t(2 * b.cfg.n_layer));
  for (const LoraTerm& t : lora->terms()) {
    INFO(t.name);
    REQUIRE(t.dora());
    CHECK(t.scale == 2.0);
    // The file is float32 of values the fixture made float32-representable: exact.
    const std::string key = "dora.lora." + t.name;
    testing::require_close("A", t.A, ref.tensor(key + ".A"), 0, 0);
    testing::require_close("B", t.B, ref.tensor(key + ".B"), 0, 0);
    testing::require_close("magnitude", t.magnitude, ref.tensor(key + ".magnitude"), 0, 0);
  }
  lora->set_base_weights(&b.w);
  const Tensor ids = ref.tensor("input_ids");
  // float64 from the same values as peft's float64 run: 1e-12.
  testing::require_close("hook logits", logits_of(b.cfg, b.w, *b.be, ids, lora.get()),
                         ref.tensor("dora.logits"), 1e-12, 0);
  // What eval, generate and merge-adapter run: float32 weights with the DoRA merged in. The
  // merge rounds f (W + s B A) once per weight and the forward runs in float32 (HF's own
  // float32 forward is ~1e-7 from float64): 1e-5.
  const LoadedModel merged = load_model_with_adapter(b.dir, kPeftAdapter.string(), *b.be);
  testing::require_close("merged float32 logits",
                         logits_of(merged.cfg, merged.weights, *b.be, ids, nullptr),
                         ref.tensor("dora.logits"), 1e-5, 0);
}

TEST_CASE("DoRA backward matches finite differences for A, B and the magnitude",
          "[peft][lora][dora][gradient]") {
  struct Case {
    const char* model;
    std::vector<std::string> targets;
    double dropout;
  };
  // mamba-odd has biases on in_proj and out_proj: DoRA must leave them unscaled.
  const std::vector<Case> cases = {
      {"mamba-tiny", {"layers.0.in_proj", "x_proj", "dt_proj", "layers.1.out_proj"}, 0.0},
      {"mamba-tiny", {"layers.0.x_proj", "layers.1.in_proj"}, 0.3},
      {"mamba-odd", {"layers.1.in_proj", "layers.2.out_proj"}, 0.0},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.model << ", " << c.targets.size() << " targets, dropout " << c.dropout) {
      Base b(c.model);
      if (std::string(c.model) == "mamba-odd") REQUIRE(b.w.layers[1].mamba.in_proj_bias.defined());
      const SafetensorsFile ref = SafetensorsFile::open(fs::path(b.dir) / "reference.safetensors");
      // Two short sequences: every element checked costs two forwards.
      const Tensor ids = ref.tensor("input_ids").rows(0, 2);
      const Tensor targets = shift_labels(ref.tensor("labels").rows(0, 2));
      LoraConfig lc = dora_config(c.targets, 2, 3);
      lc.dropout = c.dropout;
      LoraModel lora(b.cfg, lc, DType::F64, *b.be);
      lora.set_base_weights(&b.w);
      lora.init(7);
      randomise(lora, 3);
      CausalLM lm(b.cfg, b.w, *b.be);
      lm.set_hook(&lora);
      // n at the point where the gradient is taken. Backward treats n as a constant (PEFT
      // detaches it), so the function to difference is the one with n held there: a forward
      // at perturbed A, B recomputes n', so m is scaled by n' / n for it, which makes
      // f = m / n again. (At perturbed m, n' = n: the scaling is exactly 1.)
      std::vector<Tensor> n0;
      for (const LoraTerm& t : lora.terms()) {
        const Tensor W = linear_weight(b.w, t.site);
        n0.push_back(dora_direction(*b.be, t, W).norm);
      }
      Rng dropout_rng(11);
      auto loss = [&] {
        std::vector<Tensor> saved_m;
        for (std::size_t k = 0; k < lora.terms().size(); ++k) {
          LoraTerm& t = lora.terms()[k];
          saved_m.push_back(t.magnitude.clone());
          const Tensor n =
              dora_direction(*b.be, t, linear_weight(b.w, t.site)).norm;
          for (std::int64_t i = 0; i < n.numel(); ++i)
            t.magnitude.data<double>()[i] *= n.data<double>()[i] / n0[k].data<double>()[i];
        }
        dropout_rng = Rng(11);  // the same masks at every forward
        lora.set_training(true, &dropout_rng);
        lm.forward(ids);
        for (std::size_t k = 0; k < lora.terms().size(); ++k)
          b.be->copy(saved_m[k], lora.terms()[k].magnitude);
        return lm.loss(targets).loss;
      };
      loss();
      ModelWeights no_grads;
      lm.backward(targets, no_grads);
      for (LoraTerm& t : lora.terms()) {
        testing::check_gradient(t.name + ".A", t.A, t.dA.clone(), loss);
        testing::check_gradient(t.name + ".B", t.B, t.dB.clone(), loss);
        testing::check_gradient(t.name + ".magnitude", t.magnitude, t.dmagnitude.clone(), loss);
      }
    }
  }
}

TEST_CASE("DoRA at its init (B = 0, m = ||W||_row) leaves the logits unchanged",
          "[peft][lora][dora]") {
  for (const DType dtype : {DType::F32, DType::F64}) {
    DYNAMIC_SECTION(dtype_name(dtype)) {
      Base b("mamba-odd", dtype);  // with biases: they must come out unscaled as well
      const SafetensorsFile ref = SafetensorsFile::open(fs::path(b.dir) / "reference.safetensors");
      const Tensor ids = ref.tensor("input_ids");
      const Tensor plain = logits_of(b.cfg, b.w, *b.be, ids, nullptr);
      PeftModel peft(b.cfg, b.w,
                     peft_with(dora_config({"in_proj", "x_proj", "dt_proj", "out_proj"}, 4, 8)),
                     *b.be, 5);
      for (const LoraTerm& t : peft.lora()->terms()) {
        const Tensor W = linear_weight(b.w, t.site);
        testing::require_close(t.name + " m = ||W||", t.magnitude, dora_direction(*b.be, t, W).norm,
                               0, 0);
      }
      // Bit for bit, no tolerance: with B = 0, W + s B A is W exactly, m and n are the same
      // function of the same W, so f = m / n = 1 exactly and D = f (W + s B A) - W = 0: the
      // hook adds exact zeros.
      testing::require_close("logits at init", logits_of(b.cfg, b.w, *b.be, ids, peft.hook()),
                             plain, 0, 0);
    }
  }
}

TEST_CASE("DoRA adapters round-trip bit for bit in peft's layout, resume, and merge exactly",
          "[peft][lora][dora][adapter]") {
  Base b("mamba-odd", DType::F32);
  const SafetensorsFile ref = SafetensorsFile::open(fs::path(b.dir) / "reference.safetensors");
  const Tensor ids = ref.tensor("input_ids");
  const PeftConfig pc = peft_with(dora_config({"in_proj", "layers.0-1.dt_proj", "out_proj"}, 3, 5));
  PeftModel peft(b.cfg, b.w, pc, *b.be, 1);
  randomise(*peft.lora(), 9);
  TempDir dir;
  peft.save(dir.path(), b.dir, {});

  // As peft sees it: use_dora and one magnitude per module under peft's key.
  const nlohmann::json cfg = read_json_file(dir / "adapter_config.json");
  CHECK(cfg["use_dora"] == true);
  const SafetensorsFile st = SafetensorsFile::open(dir / "adapter_model.safetensors");
  CHECK(st.entry("base_model.model.backbone.layers.1.mixer.in_proj.lora_magnitude_vector").shape ==
        Shape{2 * b.cfg.d_inner});
  CHECK(st.entry("base_model.model.backbone.layers.0.mixer.dt_proj.lora_magnitude_vector").shape ==
        Shape{b.cfg.d_inner});
  CHECK(!st.contains("base_model.model.backbone.layers.2.mixer.dt_proj.lora_magnitude_vector"));

  // Read back: every tensor bit for bit.
  const auto back = read_lora_adapter(dir.path(), b.cfg, DType::F32, *b.be);
  REQUIRE(back->config().dora);
  REQUIRE(back->terms().size() == peft.lora()->terms().size());
  for (std::size_t i = 0; i < back->terms().size(); ++i) {
    const LoraTerm &a = peft.lora()->terms()[i], &t = back->terms()[i];
    INFO(a.name);
    REQUIRE(t.name == a.name);
    REQUIRE(t.dora());
    CHECK(std::memcmp(t.A.raw(), a.A.raw(), a.A.nbytes()) == 0);
    CHECK(std::memcmp(t.B.raw(), a.B.raw(), a.B.nbytes()) == 0);
    CHECK(std::memcmp(t.magnitude.raw(), a.magnitude.raw(), a.magnitude.nbytes()) == 0);
  }

  // Resume: a fresh run of the same config takes the saved values.
  ModelWeights w2 = load_model_weights(b.dir, b.cfg, DType::F32);
  PeftModel resumed(b.cfg, w2, pc, *b.be, 2);
  resumed.load(dir.path());
  for (std::size_t i = 0; i < peft.trainables().size(); ++i) {
    INFO(peft.trainables()[i].name);
    testing::require_close("resumed", resumed.trainables()[i].value, peft.trainables()[i].value, 0,
                           0);
  }

  // Merge: W = f (W + s B A) gives the hook's logits from plain weights. float32, one rounding
  // of each merged weight and sums in another order: 1e-5 of the largest logit.
  const Tensor hook_logits = logits_of(b.cfg, b.w, *b.be, ids, peft.hook());
  const Tensor plain = logits_of(b.cfg, b.w, *b.be, ids, nullptr);
  const LoadedModel merged = load_model_with_adapter(b.dir, dir.path().string(), *b.be);
  testing::require_close("merged logits",
                         logits_of(merged.cfg, merged.weights, *b.be, ids, nullptr), hook_logits,
                         1e-5, 0);
  double changed = 0;
  for (std::int64_t i = 0; i < plain.numel(); ++i)
    changed =
        std::max(changed, double(std::fabs(plain.data<float>()[i] - hook_logits.data<float>()[i])));
  CHECK(changed > 1e-3);  // the adapter does change the model

  // And in float64, where the merge is exact to the last few bits: 1e-12.
  Base b64("mamba-odd");
  LoraModel lora64(b64.cfg, *pc.lora, DType::F64, *b64.be);
  lora64.set_base_weights(&b64.w);
  lora64.init(4);
  randomise(lora64, 6);
  const LoadedModel merged64 = merged_copy(b64.cfg, b64.w, &lora64, *b64.be);
  testing::require_close("merged float64 logits",
                         logits_of(merged64.cfg, merged64.weights, *b64.be, ids, nullptr),
                         logits_of(b64.cfg, b64.w, *b64.be, ids, &lora64), 1e-12, 0);
}

TEST_CASE("DoRA trains LoRA's parameters plus one magnitude per output row", "[peft][lora][dora]") {
  Base b("mamba-tiny", DType::F32);
  const std::int64_t L = b.cfg.n_layer, D = b.cfg.d_model, E = b.cfg.d_inner, r = 4;
  LoraConfig lc = fixture_config();
  lc.dora = false;
  PeftModel lora(b.cfg, b.w, peft_with(lc), *b.be, 0);
  PeftModel dora(b.cfg, b.w, peft_with(fixture_config()), *b.be, 0);
  REQUIRE(lora.n_trainable() == L * (r * (D + 2 * E) + r * (E + D)));   // docs/methods.md
  REQUIRE(dora.n_trainable() == lora.n_trainable() + L * (2 * E + D));  // + out of in/out_proj
  std::vector<std::string> names;
  for (const TrainableParam& p : dora.trainables()) names.push_back(p.name);
  CHECK(names[2] == "lora.layers.0.in_proj.magnitude");
  const std::vector<std::string> lines = dora.summary();
  CHECK_THAT(lines.front(), Catch::Contains("DoRA"));
}

TEST_CASE("DoRA on a slice, on the embedding or on a weight that trains is a config error",
          "[peft][lora][dora]") {
  Base b("mamba-tiny", DType::F32);
  const auto plan = [&](std::vector<std::string> targets) {
    return plan_lora_terms(b.cfg, dora_config(std::move(targets), 2, 2), DType::F32);
  };
  CHECK(plan({"layers.0.x_proj", "dt_proj"}).size() == 3);
  for (const char* slice : {"in_proj.x", "layers.1.in_proj.z", "x_proj.B", "x_proj.dt"})
    require_error<UsageError>(
        [&] {
          plan({"out_proj", slice});
        },
        "\"" + std::string(slice) + "\" is a slice: DoRA");
  require_error<UsageError>([&] { plan({"embeddings"}); }, "is the embedding: DoRA");
  // The same slices are fine without DoRA.
  CHECK(plan_lora_terms(b.cfg, LoraConfig{.targets = {"in_proj.x"}}, DType::F32).size() == 2);

  const auto build = [&](const PeftConfig& pc) { PeftModel peft(b.cfg, b.w, pc, *b.be, 0); };
  PeftConfig full = peft_with(fixture_config());
  full.full = true;
  require_error<UsageError>([&] { build(full); }, "DoRA with peft.full is not supported");
  PeftConfig partial = peft_with(fixture_config());
  partial.partial = PartialConfig{};
  partial.partial->tensors = {"layers.1.out_proj"};
  require_error<UsageError>([&] { build(partial); },
                            "backbone.layers.1.mixer.out_proj.weight carries DoRA");
  partial.partial->tensors = {"D"};
  build(partial);  // other tensors may train beside DoRA
  PeftConfig sdt = peft_with(dora_config({"x_proj"}, 2, 2));
  sdt.sdt = SdtConfig{};
  require_error<UsageError>([&] { build(sdt); }, "leave x_proj out of the DoRA targets");
}

TEST_CASE("a broken DoRA adapter gets an error naming the file and the tensor or field",
          "[peft][lora][dora][adapter]") {
  const ModelConfig cfg = load_model_config((kFixtures / "mamba-tiny").string());
  std::unique_ptr<Backend> be = make_cpu_backend();
  const SafetensorsFile st = SafetensorsFile::open(kPeftAdapter / "adapter_model.safetensors");
  std::ifstream in(kPeftAdapter / "adapter_config.json");
  const std::string config_text((std::istreambuf_iterator<char>(in)), {});
  const std::string magnitude =
      "base_model.model.backbone.layers.1.mixer.out_proj.lora_magnitude_vector";
  // The fixture's files with `drop` left out, `replace` instead of its tensor, or use_dora off.
  auto variant = [&](const TempDir& dir, const std::string& drop, const Tensor& replace,
                     bool use_dora) {
    std::vector<NamedTensor> tensors;
    for (const SafetensorsEntry& e : st.entries())
      if (e.name != drop)
        tensors.push_back({e.name, e.name == magnitude && replace.defined()
                                       ? replace
                                       : st.tensor(e.name).clone()});
    write_safetensors(dir / "adapter_model.safetensors", tensors);
    std::string text = config_text;
    if (!use_dora) text.replace(text.find("\"use_dora\": true"), 16, "\"use_dora\": false");
    test::write_bytes(dir / "adapter_config.json", text);
  };
  const auto read = [&](const TempDir& dir) {
    read_lora_adapter(dir.path(), cfg, DType::F32, *be);
  };
  {
    TempDir dir;
    variant(dir, magnitude, Tensor(), true);
    require_error<Error>([&] { read(dir); },
                         "adapter_model.safetensors: module backbone.layers.1.mixer.out_proj has "
                         "no lora_magnitude_vector");
  }
  {
    TempDir dir;
    variant(dir, "", Tensor(), false);
    require_error<Error>([&] { read(dir); }, "a DoRA magnitude, but");
  }
  {
    TempDir dir;
    variant(dir, "", Tensor::zeros({cfg.d_model + 1}, DType::F32), true);
    require_error<Error>([&] { read(dir); }, magnitude + ": expected shape (16,) (out), got (17,)");
  }
}
