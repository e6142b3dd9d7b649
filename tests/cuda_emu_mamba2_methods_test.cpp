// The PEFT methods mapped to Mamba-2 on the CUDA backend (compiled against the CUDA-on-CPU
// emulator) against the CPU backend, on tests/fixtures/mamba2-tiny with its reference batch
// (data_scripts/make_mamba2_fixtures.py): the objective and every trainable's gradient after
// random values, as cuda_emu_jamba_methods_test.cpp does for Jamba (jamba_method_run.h's model
// and hooks serve any fixture).
#include <catch2/catch.hpp>

#include "backend/cuda/cuda_backend.h"
#include "jamba_method_run.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::test::jamba_methods;

namespace {

// Partial tuning of Mamba-2's own mixer tensors (lib/peft/partial.cpp), in both modes, one
// with a bias mamba2-tiny lacks (out_proj.bias: created); BitFit; prefix tuning; SDT and SDLoRA
// (each in its warmup and its masked phase); the state methods; affix tuning; the additional
// scan; the parallel adapter; LoRA on in_proj slices and out_proj; DoRA.
std::vector<MethodCase> mamba2_method_cases() {
  std::vector<MethodCase> out;
  const auto add = [&](const std::string& name, auto&& set) {
    MethodCase c{name, PeftConfig{}, false};
    set(c.config);
    out.push_back(std::move(c));
  };
  add("partial direct", [](PeftConfig& p) {
    p.partial = PartialConfig{};
    p.partial->tensors = {"A_log", "D", "dt_bias", "gated_norm", "norm", "norm_f"};
  });
  add("partial delta", [](PeftConfig& p) {
    p.partial = PartialConfig{};
    p.partial->tensors = {"layers.0.conv1d", "in_proj", "out_proj.bias"};
    p.partial->mode = "delta";
  });
  add("bitfit", [](PeftConfig& p) { p.bitfit = true; });
  add("prefix", [](PeftConfig& p) { p.virtual_tokens.prefix_tokens = 2; });
  // Heads as channels: 2 of mamba2-tiny's 4 heads, 4 of its 8 states (B and C rows of in_proj).
  const auto sdt = [](PeftConfig& p) {
    p.sdt = SdtConfig{};
    p.sdt->channel_freeze_fraction = 0.5;
    p.sdt->state_freeze_fraction = 0.5;
  };
  add("sdt", sdt);
  add("sdlora", [&](PeftConfig& p) {
    sdt(p);
    p.lora = LoraConfig{};
    p.lora->targets = {"in_proj", "out_proj"};
    p.lora->rank = 2;
    p.lora->dropout = 0;
  });
  // The state methods on the (H, P, N) state and the conv over x|B|C, the parallel adapter.
  add("initial state + conv state", [](PeftConfig& p) {
    p.initial_state = true;
    p.initial_conv_state = true;
  });
  add("state offset h", [](PeftConfig& p) { p.state_offset = "h"; });
  add("state offset y", [](PeftConfig& p) { p.state_offset = "y"; });
  // Affix steps in front of xBC and dt_in, with the learned conv state in front of them; the
  // additional scan as a second SSD.
  add("affix + initial state", [](PeftConfig& p) {
    p.virtual_tokens.affix_tokens = 2;
    p.initial_state = true;
    p.initial_conv_state = true;
  });
  add("additional scan", [](PeftConfig& p) {
    p.additional_scan = AdditionalScanConfig{};
    p.additional_scan->states = 3;
  });
  add("parallel adapter", [](PeftConfig& p) {
    p.parallel_adapter = ParallelAdapterConfig{};
    p.parallel_adapter->rank = 3;
    p.parallel_adapter->dropout = 0;
  });
  add("lora slices", [](PeftConfig& p) {
    p.lora = LoraConfig{};
    p.lora->targets = {"in_proj.x", "in_proj.B", "in_proj.dt", "out_proj"};
    p.lora->rank = 2;
    p.lora->dropout = 0;
  });
  add("dora", [](PeftConfig& p) {
    p.lora = LoraConfig{};
    p.lora->targets = {"in_proj", "out_proj"};
    p.lora->rank = 2;
    p.lora->dropout = 0;
    p.lora->dora = true;
  });
  return out;
}

}  // namespace

TEST_CASE("PEFT methods on Mamba-2 train on the emulated CUDA backend as on the CPU backend",
          "[cuda-emu][mamba2][peft]") {
  for (const MethodCase& c : mamba2_method_cases())
    for (const bool masked : {false, true}) {
      if (masked && !c.config.sdt) continue;  // SDT also in its masked phase
      DYNAMIC_SECTION(c.name << (masked ? " (masked phase)" : "")) {
        JambaModel cpu("mamba2-tiny", DType::F32);
        JambaModel gpu("mamba2-tiny", DType::F32, make_cuda_backend());
        const auto want_peft = randomised_peft(cpu, c.config, masked, 2);
        const auto got_peft = randomised_peft(gpu, c.config, masked, 2);
        const double want = objective(cpu, *want_peft, /*backward=*/true);
        const double got = objective(gpu, *got_peft, /*backward=*/true);
        // float32 on both, sums in other orders (cuBLAS, block reductions, the SSD kernels), as
        // cuda_emu_mamba2_test.cpp: 1e-5 of the objective, 1e-4 of each gradient's scale.
        CHECK(got == Approx(want).epsilon(1e-5));
        const std::vector<TrainableParam>& ws = want_peft->trainables();
        const std::vector<TrainableParam>& gs = got_peft->trainables();
        REQUIRE(gs.size() == ws.size());
        REQUIRE(!ws.empty());
        for (std::size_t i = 0; i < ws.size(); ++i) {
          REQUIRE(gs[i].name == ws[i].name);
          testing::require_close(ws[i].name, gs[i].value, ws[i].value, 0, 0);
          testing::require_close("grad." + ws[i].name, gs[i].grad, ws[i].grad, 1e-4, 0);
        }
        // Both backends select the same heads and states from the same warmup values.
        for (std::size_t l = 0; l < want_peft->sdt_selection().size(); ++l) {
          CHECK(got_peft->sdt_selection()[l].channels == want_peft->sdt_selection()[l].channels);
          CHECK(got_peft->sdt_selection()[l].states == want_peft->sdt_selection()[l].states);
        }
      }
    }
}
