// SDT and SDLoRA on Mamba-2 (docs/methods.md section 10, "SDT on Mamba-2"): heads are the
// channels, B's and C's in_proj rows carry the states. The selection on known warmup values,
// gradients of the warmup and masked values against central finite differences in float64,
// zero-initialised values leaving the logits' bits alone, the adapter file in either phase, and
// the exact merge. On tests/fixtures/mamba2-groups (data_scripts/make_mamba2_fixtures.py: 4
// heads in 2 groups, d_state 6, d_model 16, biases on in/out_proj): two groups make the
// head -> group mapping matter.
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <random>

#include "gradient_check.h"
#include "io_test_util.h"
#include "peft/merge.h"
#include "peft/peft_model.h"
#include "peft/sdt.h"
#include "peft_method_check.h"
#include "test_compare.h"

using namespace ssmtune;
using ssmtune::test::TempDir;
using namespace ssmtune::testing::method_check;
namespace fs = std::filesystem;

namespace {

PeftConfig sdt_config(double channel_freeze, double state_freeze, bool with_lora) {
  PeftConfig pc;
  pc.sdt = SdtConfig{};
  pc.sdt->channel_freeze_fraction = channel_freeze;
  pc.sdt->state_freeze_fraction = state_freeze;
  if (with_lora) {  // SDLoRA as configs/methods/sdlora.json: LoRA on in_proj and out_proj
    pc.lora = LoraConfig{};
    pc.lora->targets = {"in_proj", "out_proj"};
    pc.lora->rank = 2;
    pc.lora->dropout = 0;
  }
  return pc;
}

// Flat index of element (row, col) of in_proj.weight (rows, d_model).
std::int64_t at(const ModelConfig& cfg, std::int64_t row, std::int64_t col) {
  return row * cfg.d_model + col;
}

}  // namespace

TEST_CASE("SDT on Mamba-2 keeps the top heads and their groups' top B/C states, ties low",
          "[peft][sdt][mamba2]") {
  const ModelConfig cfg = load_model_config((kFixtures / "mamba2-groups").string());
  REQUIRE(cfg.ssm_heads == 4);
  REQUIRE(cfg.n_groups == 2);  // heads 0, 1 read group 0; heads 2, 3 group 1
  REQUIRE(cfg.d_state == 6);
  const std::int64_t N = cfg.d_state, D = cfg.d_model, E = cfg.d_inner;
  const std::int64_t b0 = 2 * E, c0 = 2 * E + 2 * N;  // first B row, first C row of in_proj
  // Head scores G_A^2: 0.01, 0.09, 0.09, 0.0025 (heads 1 and 2 tie).
  Tensor G_A = Tensor::empty({4}, DType::F64);
  const double head_delta[] = {0.1, -0.3, 0.3, 0.05};
  std::copy(head_delta, head_delta + 4, G_A.data<double>());
  Tensor G_B = Tensor::zeros({2 * N * D}, DType::F64), G_C = Tensor::zeros({2 * N * D}, DType::F64);
  const auto set = [&](Tensor& g, std::int64_t group, std::int64_t n, std::int64_t col, double v) {
    g.data<double>()[(group * N + n) * D + col] = v;
  };
  // Group 0: state 4 scores 4 (B), state 0 scores 1 from C alone, state 2 ties it with 1 (B).
  set(G_B, 0, 4, 3, 2.0);
  set(G_C, 0, 0, 0, 1.0);
  set(G_B, 0, 2, 15, 1.0);
  // Group 1: state 5 scores 9 (C), state 1 0.5 (B and C summed); group 0 must not see these.
  set(G_C, 1, 5, 7, 3.0);
  set(G_B, 1, 1, 0, 0.5);
  set(G_C, 1, 1, 1, 0.5);

  // One head: the tie between heads 1 and 2 goes to the lower index.
  const SdtLayerSelection one = select_sdt_heads(cfg, G_A, G_B, G_C, 1, 2);
  CHECK(one.channels == std::vector<std::int64_t>{1});
  // Two states of group 0: state 4, then 0 and 2 tie at 1 and the lower index wins.
  CHECK(one.states == std::vector<std::vector<std::int64_t>>{{0, 4}});

  // Through the config's fractions: 4 - round(0.5 * 4) = 2 heads, 6 - round(0.6 * 6) = 2 states.
  SdtConfig sc;
  sc.channel_freeze_fraction = 0.5;
  sc.state_freeze_fraction = 0.6;
  REQUIRE(sdt_kept_channels(cfg, sc) == 2);
  REQUIRE(sdt_kept_states(cfg, sc) == 2);
  std::vector<TunedTensor> warmup = sdt_warmup_entries(cfg);
  REQUIRE(warmup.size() == 3 * std::size_t(cfg.n_layer));  // A_log, in_proj.B, in_proj.C
  CHECK(warmup[1].name == "sdt_warmup.layers.0.in_proj.B");
  CHECK(warmup[1].index.numel() == 2 * N * D);  // every B row, every column
  CHECK(warmup[1].index.data<std::int64_t>()[0] == at(cfg, b0, 0));
  for (std::size_t j = 0; j < warmup.size(); j += 3) {
    warmup[j].value = G_A;
    warmup[j + 1].value = G_B;
    warmup[j + 2].value = G_C;
  }
  const std::vector<SdtLayerSelection> selection = select_sdt(cfg, sc, warmup);
  REQUIRE(selection.size() == 2);
  CHECK(selection[0].channels == std::vector<std::int64_t>{1, 2});
  CHECK(selection[0].states == std::vector<std::vector<std::int64_t>>{{0, 4}, {1, 5}});

  const std::vector<TunedTensor> masked = sdt_masked_entries(cfg, selection);
  REQUIRE(masked.size() == 6);
  CHECK(masked[0].name == "sdt.layers.0.A_log");
  CHECK(masked[0].tensor == "backbone.layers.0.mixer.A_log");
  REQUIRE(masked[0].index.numel() == 2);
  CHECK(masked[0].index.data<std::int64_t>()[1] == 2);
  // B: rows of (group 0, states 0, 4) and (group 1, states 1, 5), every column, ascending.
  for (const auto& [entry, row0] : {std::pair{1, b0}, std::pair{2, c0}}) {
    const TunedTensor& e = masked[std::size_t(entry)];
    INFO(e.name);
    CHECK(e.tensor == "backbone.layers.0.mixer.in_proj.weight");
    REQUIRE(e.index.numel() == 4 * D);
    const std::int64_t* idx = e.index.data<std::int64_t>();
    const std::int64_t rows[] = {row0 + 0, row0 + 4, row0 + N + 1, row0 + N + 5};
    for (std::int64_t r = 0; r < 4; ++r)
      for (std::int64_t col = 0; col < D; ++col) REQUIRE(idx[r * D + col] == at(cfg, rows[r], col));
  }
  // And back: what a resumed run reports.
  const std::vector<SdtLayerSelection> back = sdt_selection_of(cfg, masked);
  REQUIRE(back.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(back[i].channels == selection[i].channels);
    CHECK(back[i].states == selection[i].states);
  }
  const nlohmann::json json = sdt_selection_json(cfg, selection);
  CHECK(json["layers"][1]["heads"] == nlohmann::json{1, 2});
}

TEST_CASE("SDT on Mamba-2: warmup and masked values' gradients match finite differences",
          "[peft][sdt][mamba2][gradient]") {
  Base b("mamba2-groups");  // float64
  const Tensor ids = testing::random_ids(2, 6, b.cfg.vocab_size, 4);
  const Tensor targets = shift_labels(ids);
  std::mt19937_64 rng(23);
  PeftModel peft(b.cfg, b.w, sdt_config(0.5, 0.5, false), *b.be, 3);
  for (const bool masked : {false, true}) {
    DYNAMIC_SECTION((masked ? "masked phase" : "warmup phase")) {
      if (masked) {
        // Random warmup values give the selection something to rank.
        for (TrainableParam& p : peft.trainables()) testing::fill_uniform(p.value, rng, -0.1, 0.1);
        peft.end_sdt_warmup();
        // 2 heads of A_log; 3 states in each of the groups holding them, B and C, d_model wide.
        std::int64_t n_bc = 0;
        for (const SdtLayerSelection& s : peft.sdt_selection()) {
          REQUIRE(s.channels.size() == 2);
          n_bc += (s.channels[0] / 2 == s.channels[1] / 2 ? 1 : 2) * 3 * 2 * b.cfg.d_model;
        }
        CHECK(peft.n_trainable() == 2 * 2 + n_bc);
      } else {
        CHECK(peft.n_trainable() == 2 * (4 + 2 * 2 * 6 * 16));
      }
      for (TrainableParam& p : peft.trainables()) testing::fill_uniform(p.value, rng, -0.1, 0.1);
      loss_and_grads(b, peft, ids, targets);
      for (TrainableParam& p : peft.trainables()) {
        const Tensor analytic = p.grad.clone();
        // float64: check_gradient's 1e-6 relative (gradient_check.h says why); B and C rows
        // every 7th element (about 55 of 384 in warmup), each costing two forwards.
        const std::int64_t stride = p.value.numel() > 64 ? 7 : 1;
        testing::check_gradient(
            p.name, p.value, analytic, [&] { return loss_only(b, peft, ids, targets); }, 1e-6, 1e-6,
            1e-8, stride);
      }
    }
  }
}

TEST_CASE(
    "SDLoRA on Mamba-2 starts at the base model, saves, resumes in either phase and "
    "merges exactly",
    "[peft][sdt][mamba2][adapter]") {
  Base b("mamba2-groups", DType::F32);
  const Tensor ids = testing::random_ids(2, 6, b.cfg.vocab_size, 8);
  // Zero-initialised SDT values add exact zeros: the logits keep every bit, in both phases.
  {
    PeftModel sdt(b.cfg, b.w, sdt_config(0.5, 0.5, false), *b.be, 0);
    const Tensor plain = logits_of(b.cfg, b.w, *b.be, ids, nullptr);
    testing::require_close("warmup logits", logits_of(b.cfg, sdt.weights(), *b.be, ids, nullptr),
                           plain, 0, 0);
    sdt.end_sdt_warmup();
    testing::require_close("masked logits", logits_of(b.cfg, sdt.weights(), *b.be, ids, nullptr),
                           plain, 0, 0);
  }
  const PeftConfig pc = sdt_config(0.5, 0.5, true);
  std::mt19937_64 rng(5);
  for (const bool past_warmup : {false, true}) {
    DYNAMIC_SECTION((past_warmup ? "masked phase" : "warmup phase")) {
      TempDir dir;
      const auto tuned_model = randomised_sdt_model(b, pc, past_warmup, rng);
      PeftModel& peft = *tuned_model->peft;
      // Resume: a fresh PeftModel (in warmup, as every run starts) takes the file's phase.
      const auto reloaded = save_and_reload(b, pc, peft, dir.path());
      PeftModel& back = *reloaded->peft;
      REQUIRE(back.sdt_warming_up() == !past_warmup);
      if (past_warmup) {
        REQUIRE(back.sdt_selection().size() == peft.sdt_selection().size());
        for (std::size_t i = 0; i < peft.sdt_selection().size(); ++i) {
          CHECK(back.sdt_selection()[i].channels == peft.sdt_selection()[i].channels);
          CHECK(back.sdt_selection()[i].states == peft.sdt_selection()[i].states);
        }
      }
      const Tensor tuned = logits_of(b.cfg, peft.weights(), *b.be, ids, peft.hook());
      testing::require_close(
          "resumed logits", logits_of(b.cfg, back.weights(), *b.be, ids, back.hook()), tuned, 0, 0);

      // Merge (what eval, generate and merge-adapter load): SDT's values and the LoRA both
      // land in in_proj; the same logits from plain weights. Float32 sums in another order
      // (W + scatter + s B A folded before the GEMM instead of beside it): 1e-5 relative.
      const LoadedModel merged = load_model_with_adapter(b.dir, dir.path().string(), *b.be);
      testing::require_close("merged logits",
                             logits_of(merged.cfg, merged.weights, *b.be, ids, nullptr), tuned,
                             1e-5, 1e-6);
      // The merged A_log differs from the base at the kept heads only (masked phase).
      if (past_warmup) {
        for (std::int64_t layer = 0; layer < b.cfg.n_layer; ++layer) {
          const Tensor& base = b.w.layers[std::size_t(layer)].mamba2.A_log;
          const Tensor& got = merged.weights.layers[std::size_t(layer)].mamba2.A_log;
          const std::vector<std::int64_t>& kept = peft.sdt_selection()[std::size_t(layer)].channels;
          for (std::int64_t h = 0; h < b.cfg.ssm_heads; ++h) {
            const bool is_kept = std::find(kept.begin(), kept.end(), h) != kept.end();
            CHECK((got.data<float>()[h] != base.data<float>()[h]) == is_kept);
          }
        }
      }
    }
  }
}

TEST_CASE("SDT on Mamba-2 refuses partial tuning of in_proj and DoRA on in_proj",
          "[peft][sdt][mamba2]") {
  Base b("mamba2-groups", DType::F32);
  PeftConfig partial = sdt_config(0.5, 0.5, false);
  partial.partial = PartialConfig{};
  partial.partial->tensors = {"in_proj"};
  CHECK_THROWS_WITH(PeftModel(b.cfg, b.w, partial, *b.be, 0),
                    Catch::Contains("is SDT's to tune; leave A_log and in_proj out of "
                                    "peft.partial"));
  PeftConfig dora = sdt_config(0.5, 0.5, true);  // LoRA on in_proj and out_proj
  dora.lora->dora = true;
  CHECK_THROWS_WITH(PeftModel(b.cfg, b.w, dora, *b.be, 0),
                    Catch::Contains("trains in_proj's B and C rows, which DoRA would scale"));
  dora.lora->targets = {"out_proj"};  // a module SDT leaves alone: well defined
  CHECK_NOTHROW(PeftModel(b.cfg, b.w, dora, *b.be, 0));
}
