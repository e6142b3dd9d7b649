#include "peft/merge.h"

#include "peft/lora_adapter_io.h"
#include "peft/method_file.h"
#include "peft/param_tuning.h"

namespace ssmtune {

LoadedModel merged_copy(const MambaConfig& cfg, const MambaWeights& w, const LoraModel* lora,
                        Backend& be) {
  LoadedModel m{cfg, w};
  for_each_param(m.cfg, m.weights, [](const std::string&, Tensor& t) { t = t.clone(); });
  if (m.cfg.tie_word_embeddings) m.weights.lm_head = m.weights.embedding;
  (void)be;
  if (lora) lora->merge_into(m.cfg, m.weights);
  // (state methods stay outside the weights: the caller applies them through the scan hook)
  return m;
}

LoadedModel load_model_with_adapter(const std::string& model_dir, const std::string& adapter_dir,
                                    Backend& be) {
  LoadedModel m;
  m.cfg = load_mamba_config(model_dir);
  m.weights = load_mamba_weights(model_dir, m.cfg, DType::F32);
  if (!adapter_dir.empty()) {
    if (!is_adapter_dir(adapter_dir))
      throw Error(adapter_dir + ": not an adapter directory (no adapter_config.json, " +
                  kStateTuningFile + ", " + kParamTuningFile + " or ssmtune_<method>.safetensors)");
    // Parameter tuning first: a direct entry replaces a tensor that LoRA then adds to.
    if (std::optional<SavedParamTuning> saved = read_param_tuning(adapter_dir, m.cfg, DType::F32)) {
      MambaConfig merged_cfg = m.cfg;
      {
        ParamTuning pt(m.cfg, m.weights, saved->entries, be);
        for (std::size_t i = 0; i < saved->entries.size(); ++i)
          be.copy(saved->entries[i].value, pt.entries()[i].value);
        pt.sync();
        pt.merge_into(merged_cfg, m.weights);
      }
      m.cfg = merged_cfg;
    }
    if (std::filesystem::exists(std::filesystem::path(adapter_dir) / "adapter_config.json")) {
      const std::unique_ptr<LoraModel> lora = read_lora_adapter(adapter_dir, m.cfg, DType::F32, be);
      lora->merge_into(m.cfg, m.weights);
    }
    m.state = read_state_tuning(adapter_dir, m.cfg, DType::F32, be);
    m.additional_scan = read_additional_scan(adapter_dir, m.cfg, DType::F32, be);
    m.parallel_adapter = read_parallel_adapter(adapter_dir, m.cfg, DType::F32, be);
    m.virtual_tokens = read_virtual_tokens(adapter_dir, m.cfg, DType::F32, be);
  }
  m.scan_hooks = std::make_shared<ScanHookList>();
  m.hooks = std::make_shared<LinearHookList>();
  if (m.state) m.scan_hooks->add(m.state.get());
  if (m.additional_scan) m.scan_hooks->add(m.additional_scan.get());
  if (m.parallel_adapter) m.hooks->add(m.parallel_adapter.get());
  return m;
}

std::string LoadedModel::unmergeable() const {
  std::string out;
  const auto add = [&](const std::string& what) { out += (out.empty() ? "" : "; ") + what; };
  if (state)
    add(std::string(kStateTuningFile) +
        " holds initial-state / state-offset tuning, which acts through C_t or before the gate, "
        "not through a weight");
  if (additional_scan)
    add(method_file_name("additional_scan") +
        " holds an additional scan, which needs more states than the model's d_state");
  if (parallel_adapter)
    add(method_file_name("parallel_adapter") +
        " holds a parallel adapter, which is not linear (its ReLU)");
  if (virtual_tokens)
    add(method_file_name("virtual_tokens") +
        " holds virtual tokens (prompt / prefix / affix tuning), which lengthen every sequence");
  return out;
}

}  // namespace ssmtune
