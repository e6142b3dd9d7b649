// The module methods of MambaPEFT: the parallel adapter beside out_proj (docs/methods.md section 7,
// a linear hook) and the additional scan (docs/methods.md section 6, a scan hook). Each against the
// independent float64 PyTorch reference tests/fixtures/methods/reference.safetensors
// (data_scripts/make_method_fixture.py), central finite differences (also beside LoRA and
// state-offset tuning, through the hook lists), zero init, docs/methods.md's counts, the adapter
// file round trip, the recurrent decoder (equal to the full forward), and merge-adapter's refusal.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <random>

#include "backend/backend.h"
#include "decoder_check.h"
#include "gradient_check.h"
#include "infer/decoder.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "model/causal_lm.h"
#include "peft/lora_adapter_io.h"
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

PeftConfig parallel_config(std::int64_t rank, double dropout = 0.0) {
  PeftConfig p;
  p.parallel_adapter = ParallelAdapterConfig{};
  p.parallel_adapter->rank = rank;
  p.parallel_adapter->dropout = dropout;
  return p;
}

PeftConfig additional_scan_config(std::int64_t states) {
  PeftConfig p;
  p.additional_scan = AdditionalScanConfig{};
  p.additional_scan->states = states;
  return p;
}

double forward_loss(Tiny& m, PeftModel& peft, const Tensor& ids, const Tensor& targets,
                    std::int64_t chunk = 64, Tensor* logits = nullptr, bool backward = false) {
  CausalLM lm(m.cfg, peft.weights(), *m.be, chunk);
  lm.set_hook(peft.hook());
  lm.set_scan_hook(peft.scan_hook());
  lm.forward(ids);
  if (logits) *logits = lm.logits().clone();
  const double loss = lm.loss(targets).loss;
  if (backward) {
    peft.zero_grads();
    lm.backward(targets, peft.base_grads());
    peft.finish_backward();
  }
  return loss;
}

void randomise(PeftModel& peft, std::uint64_t seed, double scale) {
  std::mt19937_64 rng(seed);
  for (TrainableParam& p : peft.trainables()) {
    Tensor host = Tensor::empty(p.value.shape(), DType::F64);
    testing::fill_uniform(host, rng, -scale, scale);
    Tensor converted = host.to(p.value.dtype());
    for (std::int64_t i = 0; i < p.value.numel(); ++i) {
      if (p.value.dtype() == DType::F64)
        p.value.data<double>()[i] += converted.data<double>()[i];
      else
        p.value.data<float>()[i] += converted.data<float>()[i];
    }
  }
}

}  // namespace

TEST_CASE("parallel adapter and additional scan match the PyTorch float64 reference",
          "[peft][modules][methods-parity]") {
  Tiny m(DType::F64);
  const SafetensorsFile ref =
      SafetensorsFile::open(kFixtures / "methods" / "reference.safetensors");
  struct Variant {
    const char* name;
    PeftConfig config;
  };
  // The fixture: r = 6, s = 0.1, no dropout; n = 4 extra states.
  for (const Variant& v : {Variant{"parallel_adapter", parallel_config(6)},
                           Variant{"additional_scan", additional_scan_config(4)}}) {
    // A chunk of 4 puts scan chunk boundaries inside the 9-token sequences.
    for (const std::int64_t chunk : {std::int64_t(64), std::int64_t(4)}) {
      DYNAMIC_SECTION(v.name << " scan chunk " << chunk) {
        PeftModel peft(m.cfg, m.w, v.config, *m.be, 0);
        REQUIRE(peft.trainables().size() == std::size_t(2 * m.cfg.n_layer));
        for (TrainableParam& p : peft.trainables()) {
          INFO(p.name);
          REQUIRE(ref.contains(std::string(v.name) + "." + p.name));
          m.be->copy(ref.tensor(std::string(v.name) + "." + p.name), p.value);
        }
        Tensor logits;
        const double loss = forward_loss(m, peft, m.ids, m.targets, chunk, &logits, true);
        // Tolerances: float64 on both sides, only summation orders differ: logits and loss
        // 1e-12 relative; gradients (one more pass, sums that partly cancel) 1e-10.
        const std::string p = std::string(v.name) + ".";
        testing::require_close(p + "logits", logits, ref.tensor(p + "logits"), 1e-12, 0);
        const double ref_loss = ref.tensor(p + "loss").data<double>()[0];
        REQUIRE(std::fabs(loss - ref_loss) <= 1e-12 * ref_loss);
        for (const TrainableParam& q : peft.trainables())
          testing::require_close(p + "grad." + q.name, q.grad, ref.tensor(p + "grad." + q.name),
                                 1e-10, 0);
      }
    }
  }
}

TEST_CASE("module-method gradients match finite differences, alone and combined",
          "[peft][modules][gradient]") {
  Tiny m(DType::F64);
  const Tensor ids = m.ids.rows(0, 1);  // one short sequence keeps the differences cheap
  const Tensor targets = m.targets.rows(0, 1);
  PeftConfig both = parallel_config(3);
  both.additional_scan = AdditionalScanConfig{};
  both.additional_scan->states = 2;
  both.additional_scan->init = "s4d";
  both.state_offset = "h";   // a second scan hook beside the additional scan
  both.lora = LoraConfig{};  // a second linear hook beside the parallel adapter
  both.lora->rank = 2;
  both.lora->targets = {"out_proj", "x_proj.B"};
  PeftModel peft(m.cfg, m.w, both, *m.be, 1);
  randomise(peft, 3, 0.2);
  forward_loss(m, peft, ids, targets, 4, nullptr, true);
  for (TrainableParam& p : peft.trainables()) {
    if (p.name.rfind("parallel_adapter", 0) != 0 && p.name.rfind("additional_scan", 0) != 0)
      continue;  // LoRA and state offsets have their own gradient tests
    const Tensor analytic = p.grad.clone();
    testing::check_gradient(p.name, p.value, analytic,
                            [&] { return forward_loss(m, peft, ids, targets, 4); });
  }
}

TEST_CASE("initialised module methods leave the model's logits unchanged", "[peft][modules]") {
  Tiny m(DType::F32);
  CausalLM plain(m.cfg, m.w, *m.be);
  plain.forward(m.ids);
  for (const std::string init : {"copy", "s4d"}) {
    DYNAMIC_SECTION("additional scan init " << init) {
      PeftConfig pc = parallel_config(8);
      pc.additional_scan = AdditionalScanConfig{};
      pc.additional_scan->init = init;
      PeftModel peft(m.cfg, m.w, pc, *m.be, 7);
      // W_down and the extra states' B rows are random, W_up and their C rows zero: the terms
      // add exact zeros.
      bool some_nonzero = false;
      for (const TrainableParam& p : peft.trainables())
        for (std::int64_t i = 0; i < p.value.numel(); ++i)
          some_nonzero = some_nonzero || p.value.data<float>()[i] != 0;
      REQUIRE(some_nonzero);
      Tensor logits;
      forward_loss(m, peft, m.ids, m.targets, 64, &logits);
      testing::require_close("logits", logits, plain.logits(), 0, 0);
    }
  }
}

TEST_CASE("module-method trainable counts follow docs/methods.md", "[peft][modules]") {
  Tiny m(DType::F32);
  const std::int64_t L = m.cfg.n_layer, D = m.cfg.d_model, E = m.cfg.d_inner;
  CHECK(PeftModel(m.cfg, m.w, parallel_config(5), *m.be, 0).n_trainable() == L * 5 * (E + D));
  // A_log_add (E, n) and W_add (2n, E).
  CHECK(PeftModel(m.cfg, m.w, additional_scan_config(3), *m.be, 0).n_trainable() == L * 3 * 3 * E);
}

TEST_CASE("the recurrent decoder applies the module methods as the full forward does",
          "[peft][modules][generate]") {
  Tiny m(DType::F32);
  PeftConfig pc = parallel_config(4);
  pc.additional_scan = AdditionalScanConfig{};
  pc.additional_scan->states = 3;
  pc.state_offset = "y";
  PeftModel peft(m.cfg, m.w, pc, *m.be, 2);
  randomise(peft, 11, 0.3);
  const Tensor ids = m.ids.rows(0, 1);
  CausalLM lm(m.cfg, peft.weights(), *m.be);
  lm.set_hook(peft.hook());
  lm.set_scan_hook(peft.scan_hook());
  lm.forward(ids);
  testing::require_decoder_matches_forward(m.cfg, peft.weights(), *m.be, ids, lm.logits(),
                                           peft.unmerged_hook(), peft.scan_hook());
}

TEST_CASE("module methods save, load, and are refused by merge", "[peft][modules][adapter]") {
  Tiny m(DType::F32);
  PeftConfig pc = parallel_config(4);
  pc.additional_scan = AdditionalScanConfig{};
  PeftModel peft(m.cfg, m.w, pc, *m.be, 2);
  randomise(peft, 4, 0.3);
  TempDir dir;
  REQUIRE(peft.save_adapter(dir.path(), "base", {}));
  REQUIRE(fs::exists(dir / "ssmtune_parallel_adapter.safetensors"));
  REQUIRE(fs::exists(dir / "ssmtune_additional_scan.safetensors"));
  REQUIRE(is_adapter_dir(dir.path()));

  PeftModel back(m.cfg, m.w, pc, *m.be, 99);  // another seed: load must overwrite it all
  back.load(dir.path());
  for (std::size_t i = 0; i < peft.trainables().size(); ++i)
    testing::require_close(peft.trainables()[i].name, back.trainables()[i].value,
                           peft.trainables()[i].value, 0, 0);

  // What eval and generate load: the same logits through the loaded model's hooks.
  const LoadedModel loaded = load_model_with_adapter(m.dir, dir.path().string(), *m.be);
  CausalLM a(m.cfg, peft.weights(), *m.be), b(loaded.cfg, loaded.weights, *m.be);
  a.set_hook(peft.hook());
  a.set_scan_hook(peft.scan_hook());
  b.set_hook(loaded.hook());
  b.set_scan_hook(loaded.scan_hook());
  a.forward(m.ids);
  b.forward(m.ids);
  testing::require_close("loaded logits", b.logits(), a.logits(), 0, 0);
  const std::string why = loaded.unmergeable();
  CHECK_THAT(why, Catch::Contains("parallel adapter"));
  CHECK_THAT(why, Catch::Contains("additional scan"));

  // A file that does not match the model is an error naming it and the tensor.
  PeftConfig other = parallel_config(5);
  PeftModel mismatch(m.cfg, m.w, other, *m.be, 0);
  try {
    mismatch.load(dir.path());
    FAIL("a rank-4 adapter loaded into a rank-5 run");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("ssmtune_parallel_adapter.safetensors: tensor "
                                         "parallel_adapter.layers.0.down: expected shape (5, 32)"));
  }
}

TEST_CASE("a hostile method file gets a clear error naming it", "[peft][modules][adapter]") {
  Tiny m(DType::F32);
  TempDir dir;
  const fs::path file = dir / "ssmtune_parallel_adapter.safetensors";
  const Tensor down = Tensor::zeros({4, m.cfg.d_inner}, DType::F32);
  auto expect_error = [&](const std::vector<NamedTensor>& tensors,
                          const std::map<std::string, std::string>& meta,
                          const std::string& fragment) {
    write_safetensors(file, tensors, meta);
    try {
      read_parallel_adapter(dir.path(), m.cfg, DType::F32, *m.be);
      FAIL("accepted a bad file: " << fragment);
    } catch (const Error& e) {
      INFO(e.what());
      CHECK_THAT(e.what(), Catch::Contains(file.string()));
      CHECK_THAT(e.what(), Catch::Contains(fragment));
    }
  };
  expect_error({{"x", down}}, {}, "metadata \"ssmtune.method_config\" is missing");
  expect_error({{"x", down}}, {{"ssmtune.method_config", "[1"}}, "ssmtune.method_config");
  expect_error({{"x", down}}, {{"ssmtune.method_config", R"({"rank": 0})"}}, "rank");
  expect_error({{"x", down}}, {{"ssmtune.method_config", R"({"rank": 4, "dropout": 2})"}},
               "dropout");
  const std::string ok = R"({"rank": 4, "scale": 0.1, "dropout": 0})";
  expect_error({{"x", down}}, {{"ssmtune.method_config", ok}},
               "missing tensor parallel_adapter.layers.0.down");
  std::vector<NamedTensor> all;
  for (std::int64_t i = 0; i < m.cfg.n_layer; ++i) {
    all.push_back({"parallel_adapter.layers." + std::to_string(i) + ".down", down});
    all.push_back({"parallel_adapter.layers." + std::to_string(i) + ".up",
                   Tensor::zeros({m.cfg.d_model, 4}, DType::F32)});
  }
  std::vector<NamedTensor> extra = all;
  extra.push_back({"parallel_adapter.layers.9.down", down});
  expect_error(extra, {{"ssmtune.method_config", ok}},
               "unexpected tensor \"parallel_adapter.layers.9.down\"");
  std::vector<NamedTensor> ints = all;
  ints[0].tensor = Tensor::zeros({4, m.cfg.d_inner}, DType::I64);
  expect_error(ints, {{"ssmtune.method_config", ok}}, "expected a float tensor, got I64");
  write_safetensors(file, all, {{"ssmtune.method_config", ok}});
  CHECK(read_parallel_adapter(dir.path(), m.cfg, DType::F32, *m.be) != nullptr);
}
