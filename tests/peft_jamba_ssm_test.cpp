// The SSM-specific PEFT methods on Jamba (docs/methods.md section 10): partial tuning, BitFit, SDT
// (warmup and masked phases), initial-state (+ conv state) and state-offset tuning, the parallel
// adapter, the additional scan, prefix and affix tuning act on the Mamba layers of
// tests/fixtures/jamba-tiny and jamba-odd (data_scripts/make_jamba_fixtures.py): their gradients
// against central finite differences in float64, the attention layers untouched, the counts,
// and configs naming what an attention layer lacks refused with the method and the module.
#include <algorithm>
#include <catch2/catch.hpp>
#include <set>

#include "gradient_check.h"
#include "jamba_method_run.h"
#include "model/linear_hook.h"
#include "peft/partial.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::test::jamba_methods;

namespace {

bool is_attention(const ModelConfig& cfg, std::int64_t layer) {
  return layer_kind(cfg, layer).mixer == MixerKind::Attention;
}

// The expected UsageError of a PeftModel built from `pc`, containing every fragment.
void require_refused(JambaModel& m, const PeftConfig& pc,
                     const std::vector<std::string>& fragments) {
  try {
    PeftModel peft(m.cfg, m.w, pc, *m.be, 0);
  } catch (const UsageError& e) {
    INFO(e.what());
    for (const std::string& f : fragments) CHECK_THAT(e.what(), Catch::Contains(f));
    return;
  }
  FAIL("expected a UsageError containing " << fragments.front());
}

}  // namespace

TEST_CASE("SSM methods on Jamba: gradients match central finite differences in float64",
          "[peft][jamba][gradient][sdt][state]") {
  // jamba-tiny: Mamba layers 0, 2 (attention 1, 3), its first sequence (9 tokens). jamba-odd:
  // Mamba layers 0, 1, 3, 4 (attention 2), no conv bias (BitFit creates it), projection biases,
  // and the last sequence of its batch: 5 tokens and 6 of padding, with the attention mask.
  struct Batch {
    const char* fixture;
    std::int64_t row;
  };
  for (const Batch& batch : {Batch{"jamba-tiny", 0}, Batch{"jamba-odd", 2}}) {
    for (const MethodPhase& c : ssm_method_phases()) {
      DYNAMIC_SECTION(batch.fixture << ": " << c.label()) {
        JambaModel m(batch.fixture, DType::F64);
        m.batch_rows(batch.row, batch.row + 1);
        const auto peft = randomised_peft(m, c.method.config, c.masked, 3, 0.1);
        objective(m, *peft, /*backward=*/true);
        REQUIRE(!peft->trainables().empty());
        for (TrainableParam& p : peft->trainables()) {
          const Tensor analytic = p.grad.clone();
          // check_gradient's tolerance: float64, h = 1e-6, 1e-6 relative + 1e-8 absolute. About
          // 64 elements of each tensor, spread over its layers: each costs two forwards of the
          // whole model, and every element of these methods' gradients is checked on Mamba
          // (peft_param_tuning_test, peft_state_tuning_test, peft_modules_test,
          // peft_virtual_tokens_test); here what is new is the path through
          // the attention layers between the Mamba layers.
          const std::int64_t stride = std::max<std::int64_t>(1, p.value.numel() / 64);
          testing::check_gradient(p.name, p.value, analytic, [&] { return objective(m, *peft); },
                                  1e-6, 1e-6, 1e-8, stride);
        }
      }
    }
  }
}

TEST_CASE("SSM methods on Jamba train the Mamba layers only and leave attention layers untouched",
          "[peft][jamba][sdt][state]") {
  JambaModel m("jamba-tiny", DType::F32);
  const std::vector<std::int64_t> mamba = mamba_layers(m.cfg);
  REQUIRE(mamba == std::vector<std::int64_t>{0, 2});
  const std::vector<LinearSite> sites = linear_sites(m.cfg);
  for (const MethodPhase& c : ssm_method_phases()) {
    DYNAMIC_SECTION(c.label()) {
      const ModelWeights base = load_model_weights(m.dir, m.cfg, DType::F32);
      const auto owned = randomised_peft(m, c.method.config, c.masked, 1);
      PeftModel& peft = *owned;
      // Every trainable belongs to a Mamba layer (or is model-level: norm_f), and its layer's
      // tensors carry the Jamba mixer's module name.
      std::set<std::int64_t> layers;
      for (const TrainableParam& p : peft.trainables()) {
        INFO(p.name);
        const std::int64_t layer = layer_of(p.name);
        if (layer < 0) continue;
        CHECK(!is_attention(m.cfg, layer));
        layers.insert(layer);
        if (p.name.find("model.layers.") != std::string::npos)
          CHECK_THAT(p.name,
                     Catch::Contains(".mamba.") || Catch::EndsWith("input_layernorm.weight"));
      }
      CHECK(layers == std::set<std::int64_t>(mamba.begin(), mamba.end()));
      // The weights the model runs on: an attention layer's are the base model's, bit for bit,
      // and none of its tensors asks for a gradient (methods that train no base tensor ask
      // for none at all: no layers).
      ModelWeights eff = peft.weights(), grads = peft.base_grads(), want = base;
      const bool base_trains = !grads.layers.empty();
      if (!base_trains) grads.layers.resize(std::size_t(m.cfg.n_layer));
      const std::vector<ParamSlot> es = param_slots(m.cfg, eff), gs = param_slots(m.cfg, grads),
                                   ws = param_slots(m.cfg, want);
      CHECK(base_trains ==
            (c.method.config.partial || c.method.config.bitfit || c.method.config.sdt));
      for (std::size_t i = 0; i < es.size(); ++i) {
        const std::int64_t layer = layer_of(es[i].name);
        if (layer < 0 || !is_attention(m.cfg, layer) || !ws[i].tensor->defined()) continue;
        INFO(es[i].name);
        testing::require_close(es[i].name, *es[i].tensor, *ws[i].tensor, 0, 0);
        CHECK(!gs[i].tensor->defined());
      }
      // The hooks add nothing at an attention layer: no term beside q/k/v/o_proj or the
      // feed-forward's projections, no prefix, affix or learned state.
      if (LinearHook* hook = peft.hook()) {
        std::mt19937_64 rng(4);
        for (const LinearSite& s : sites) {
          if (!is_attention(m.cfg, s.layer)) continue;
          const Tensor x = testing::random_f64({3, s.in}, rng).to(DType::F32);
          std::vector<LinearPart> parts{{0, Tensor::zeros({3, s.out}, DType::F32)}};
          hook->linear_forward(s, x, parts);
          const Tensor y = parts[0].y.to(DType::F64);
          INFO(s.module);
          for (std::int64_t k = 0; k < y.numel(); ++k) REQUIRE(y.data<double>()[k] == 0);
        }
      }
      for (std::int64_t i = 0; i < m.cfg.n_layer; ++i) {
        if (!is_attention(m.cfg, i)) continue;
        if (InputHook* in = peft.input_hook()) {
          CHECK(!in->prefix(i).defined());
          CHECK(!in->affix(i).defined());
        }
        if (ScanHook* scan = peft.scan_hook()) {
          CHECK(!scan->initial_state(i, 1).defined());
          CHECK(!scan->initial_conv_state(i).defined());
        }
      }
    }
  }
}

TEST_CASE("SSM method parameter counts on Jamba are docs/methods.md's, over the Mamba layers",
          "[peft][jamba][sdt][state]") {
  JambaModel m("jamba-tiny", DType::F32);
  const std::int64_t L = 2;  // Mamba layers 0 and 2 of 4
  const std::int64_t D = m.cfg.d_model, E = m.cfg.d_inner, N = m.cfg.d_state;
  const std::int64_t K = m.cfg.d_conv;
  const auto count = [&](const std::string& name) {
    for (const MethodCase& c : ssm_method_cases())
      if (c.name == name) return PeftModel(m.cfg, m.w, c.config, *m.be, 0).n_trainable();
    FAIL("no case " << name);
    return std::int64_t(0);
  };
  // D, dt_proj.bias, the mixer's norm, dt/B/C norms per Mamba layer; norm_f.
  CHECK(count("partial direct") == L * (E + E + D + m.cfg.dt_rank + 2 * N) + D);
  CHECK(count("partial delta") == E * K + L * D);  // layer 0's conv1d, out_proj.bias
  CHECK(count("bitfit") == L * 2 * E);
  CHECK(count("sdt") == L * E * N);  // the warmup's dense delta on A_log
  CHECK(count("initial state + conv state") == L * (E * N + (K - 1) * E));
  CHECK(count("state offset h") == L * E * N);
  CHECK(count("state offset y") == L * E);
  CHECK(count("parallel adapter") == L * 2 * (E + D));
  CHECK(count("additional scan") == L * 3 * 2 * E);
  CHECK(count("prefix") == L * 2 * D);
  CHECK(count("affix") == L * 2 * E);
}

TEST_CASE(
    "a Jamba config naming what an attention layer lacks is refused, naming the method "
    "and the module",
    "[peft][jamba][partial]") {
  JambaModel m("jamba-tiny", DType::F32);
  PeftConfig pc;
  pc.partial = PartialConfig{};
  pc.partial->tensors = {"layers.1.A_log"};
  require_refused(m, pc,
                  {"peft.partial.tensors", "\"layers.1.A_log\"", "model.layers.1.self_attn",
                   "attention layer", "Mamba layers (0, 2)"});
  pc.partial->tensors = {"layers.3.norm"};
  require_refused(m, pc, {"peft.partial.tensors", "model.layers.3.self_attn"});
  // A range acts on its Mamba layers: layers.0-1 is layer 0's A_log alone.
  pc.partial->tensors = {"layers.0-1.A_log"};
  {
    PeftModel peft(m.cfg, m.w, pc, *m.be, 0);
    REQUIRE(peft.trainables().size() == 1);
    CHECK(peft.trainables()[0].name == "partial.model.layers.0.mamba.A_log");
  }
  // A tensor no layer of the model has: Mamba-1's mixer has no inner norms.
  PartialConfig inner_norm;
  inner_norm.tensors = {"b_layernorm"};
  try {
    plan_partial_entries(ModelConfig{}, &inner_norm, false);
    FAIL("b_layernorm was accepted on a Mamba-1 model");
  } catch (const UsageError& e) {
    CHECK_THAT(e.what(), Catch::Contains("unknown tensor \"b_layernorm\""));
  }
  // A model whose every layer is attention gives the SSM methods nothing to act on.
  ModelConfig all_attention = m.cfg;
  all_attention.attn_layer_period = 1;
  all_attention.attn_layer_offset = 0;
  PeftConfig state;
  state.state_offset = "h";
  state.virtual_tokens.affix_tokens = 2;
  try {
    PeftModel peft(all_attention, m.w, state, *m.be, 0);
    FAIL("state-offset tuning was accepted on a model without Mamba layers");
  } catch (const UsageError& e) {
    CHECK_THAT(e.what(), Catch::Contains("peft.state_offset, peft.affix"));
    CHECK_THAT(e.what(), Catch::Contains("model.layers.0.self_attn"));
  }
}
