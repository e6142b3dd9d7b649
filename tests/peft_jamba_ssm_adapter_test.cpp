// The SSM-specific PEFT methods' adapters on Jamba (tests/fixtures/jamba-tiny and jamba-odd,
// data_scripts/make_jamba_fixtures.py): written under the model's own module and layer names,
// loaded back exactly (SDT in either phase), loaded for eval/generate with the same logits,
// merged exactly where the method merges (a created bias turning mamba_proj_bias /
// mamba_conv_bias on in the written model), refused by merge where it does not, and applied by
// the recurrent decoder as by the full forward.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "decoder_check.h"
#include "io_test_util.h"
#include "jamba_method_run.h"
#include "model/mamba_init.h"
#include "peft/lora_adapter_io.h"
#include "peft/merge.h"
#include "peft/method_file.h"
#include "test_compare.h"

using namespace ssmtune;
using namespace ssmtune::test::jamba_methods;
using ssmtune::test::TempDir;
namespace fs = std::filesystem;

namespace {

// Every tensor name in the adapter's ssmtune_*.safetensors files, and the HF tensors the
// parameter-tuning entries act on.
std::vector<std::string> saved_names(const fs::path& dir, std::vector<std::string>& hf_tensors) {
  std::vector<std::string> names;
  for (const auto& f : fs::directory_iterator(dir)) {
    if (f.path().extension() != ".safetensors") continue;
    const SafetensorsFile st = SafetensorsFile::open(f.path());
    for (const SafetensorsEntry& e : st.entries()) names.push_back(e.name);
    const auto it = st.metadata().find("ssmtune.param_tuning");
    if (it == st.metadata().end()) continue;
    const nlohmann::json meta = nlohmann::json::parse(it->second);
    for (const nlohmann::json& e : meta["entries"]) hf_tensors.push_back(e["tensor"]);
  }
  return names;
}

}  // namespace

TEST_CASE("SSM method adapters on Jamba save under the model's names and load back exactly",
          "[peft][jamba][adapter][sdt][state]") {
  for (const char* fixture : {"jamba-tiny", "jamba-odd"}) {
    for (const MethodPhase& phase : ssm_method_phases()) {
      const MethodCase& c = phase.method;
      DYNAMIC_SECTION(fixture << ": " << phase.label()) {
        JambaModel m(fixture, DType::F32);
        const auto owned = randomised_peft(m, c.config, phase.masked, 2);
        PeftModel& peft = *owned;
        TempDir dir;
        REQUIRE(peft.save_adapter(dir.path(), m.dir, {}));
        REQUIRE(is_adapter_dir(dir.path()));
        // Layer numbers are the model's (Mamba layers only); parameter tuning names the HF
        // tensors: model.layers.I.mamba.*, input_layernorm, model.final_layernorm.
        std::vector<std::string> hf_tensors;
        for (const std::string& name : saved_names(dir.path(), hf_tensors)) {
          INFO(name);
          const std::int64_t layer = layer_of(name);
          if (layer >= 0) CHECK(layer_kind(m.cfg, layer).mixer == MixerKind::Mamba);
        }
        for (const std::string& t : hf_tensors) {
          INFO(t);
          CHECK_THAT(t, Catch::StartsWith("model."));
          if (layer_of(t) >= 0)
            CHECK_THAT(t, Catch::Contains(".mamba.") || Catch::EndsWith(".input_layernorm.weight"));
        }
        if (c.config.sdt || c.config.bitfit || c.config.partial) CHECK(!hf_tensors.empty());

        // Resume: another seed (and, for SDT, the warmup phase every run starts in) is
        // overwritten by the file.
        ModelWeights w2 = load_model_weights(m.dir, m.cfg, DType::F32);
        PeftModel back(m.cfg, w2, c.config, *m.be, 99);
        back.load(dir.path());
        CHECK(back.sdt_warming_up() == peft.sdt_warming_up());
        REQUIRE(back.trainables().size() == peft.trainables().size());
        for (std::size_t i = 0; i < peft.trainables().size(); ++i) {
          REQUIRE(back.trainables()[i].name == peft.trainables()[i].name);
          testing::require_close(peft.trainables()[i].name, back.trainables()[i].value,
                                 peft.trainables()[i].value, 0, 0);
        }

        // What eval and generate run: the base with the adapter merged or hooked in.
        Tensor want;
        objective(m, peft, false, &want);
        const LoadedModel loaded = load_model_with_adapter(m.dir, dir.path().string(), *m.be);
        CHECK(loaded.unmergeable().empty() == c.mergeable);
        CausalLM lm(loaded.cfg, loaded.weights, *m.be, 4);
        lm.set_hook(loaded.hook());
        lm.set_scan_hook(loaded.scan_hook());
        lm.set_input_hook(loaded.input_hook());
        lm.forward(m.ids, m.mask);
        // Exact, float32 on both sides: hooked methods run the same ops on the same values, and
        // a merged tensor is the adapter model's effective tensor (W + delta, rounded to float32
        // once, by the same op), value for value; a created zero bias adds exact zeros.
        testing::require_close("logits", lm.logits(), want, 0, 0);
      }
    }
  }
}

TEST_CASE("partial tuning, BitFit and SDT on Jamba merge into a Jamba model directory exactly",
          "[peft][jamba][merge][sdt]") {
  for (const char* fixture : {"jamba-tiny", "jamba-odd"}) {
    for (const MethodCase& c : ssm_method_cases()) {
      if (!c.mergeable) continue;
      DYNAMIC_SECTION(fixture << ": " << c.name) {
        JambaModel m(fixture, DType::F32);
        const ModelWeights base = load_model_weights(m.dir, m.cfg, DType::F32);
        const auto owned = randomised_peft(m, c.config, c.config.sdt.has_value(), 2);
        PeftModel& peft = *owned;
        Tensor want;
        objective(m, peft, false, &want);
        TempDir dir;
        REQUIRE(peft.save_adapter(dir.path(), m.dir, {}));
        // merge-adapter: the adapter folded in, written as a model directory transformers
        // loads, then loaded back as a plain model.
        const LoadedModel merged = load_model_with_adapter(m.dir, dir.path().string(), *m.be);
        REQUIRE(merged.unmergeable().empty());
        write_mamba_model_dir((dir / "merged").string(), merged.cfg, merged.weights, false, {});
        const ModelConfig cfg = load_model_config((dir / "merged").string());
        ModelWeights w = load_model_weights((dir / "merged").string(), cfg, DType::F32);
        CHECK(cfg.is_jamba());
        // A bias the model lacked (jamba-tiny's out_proj.bias, jamba-odd's conv1d.bias) is
        // created, so the config asks for it.
        if (c.name == "partial delta") CHECK(cfg.use_bias);
        if (c.name == "bitfit") CHECK(cfg.use_conv_bias);
        CausalLM plain(cfg, w, *m.be, 4);
        plain.set_router_aux_coef(cfg.router_aux_loss_coef);
        plain.forward(m.ids, m.mask);
        // Exact: float32 values stored and read back unchanged, the same ops (as above).
        testing::require_close("merged logits", plain.logits(), want, 0, 0);
        // The attention layers come out as they went in.
        ModelWeights b = base;
        const std::vector<ParamSlot> ms = param_slots(cfg, w), bs = param_slots(m.cfg, b);
        REQUIRE(ms.size() == bs.size());
        for (std::size_t i = 0; i < ms.size(); ++i) {
          const std::int64_t layer = layer_of(ms[i].name);
          if (layer < 0 || layer_kind(cfg, layer).mixer != MixerKind::Attention) continue;
          REQUIRE(ms[i].name == bs[i].name);
          if (bs[i].tensor->defined())
            testing::require_close(ms[i].name, *ms[i].tensor, *bs[i].tensor, 0, 0);
        }
      }
    }
  }
}

TEST_CASE("the recurrent decoder applies the SSM methods on Jamba as the full forward does",
          "[peft][jamba][generate][state]") {
  JambaModel m("jamba-tiny", DType::F32);
  m.batch_rows(0, 1);
  for (const MethodCase& c : ssm_method_cases()) {
    if (c.mergeable) continue;  // decoding runs on merged weights: the decoder's own tests
    DYNAMIC_SECTION(c.name) {
      const auto owned = randomised_peft(m, c.config, false, 6, 0.3);
      PeftModel& peft = *owned;
      CausalLM lm(m.cfg, peft.weights(), *m.be);
      lm.set_hook(peft.hook());
      lm.set_scan_hook(peft.scan_hook());
      lm.set_input_hook(peft.input_hook());
      lm.forward(m.ids);
      testing::require_decoder_matches_forward(m.cfg, peft.weights(), *m.be, m.ids, lm.logits(),
                                               peft.unmerged_hook(), peft.scan_hook(),
                                               peft.input_hook());
    }
  }
}
