#include "peft/merge.h"

#include <set>

#include "model/weight_storage.h"

#include "peft/lora_adapter_io.h"
#include "peft/method_file.h"
#include "peft/param_tuning.h"
#include "peft/additional_scan.h"
#include "peft/parallel_adapter.h"
#include "peft/state_tuning.h"
#include "peft/virtual_tokens.h"

namespace ssmtune {

namespace {

using Reader = std::unique_ptr<PeftMethod> (*)(const std::filesystem::path&, const ModelConfig&,
                                               DType, Backend&);
// A method file's reader (read_state_tuning, ...) as a Reader.
template <auto read>
std::unique_ptr<PeftMethod> read_as_method(const std::filesystem::path& dir, const ModelConfig& c,
                                           DType dtype, Backend& be) {
  return read(dir, c, dtype, be);
}

// The base tensors the adapter's LoRA terms merge into: their modules' weights.
std::set<std::string> lora_weights(const ModelConfig& cfg, const LoraModel& lora) {
  std::set<std::string> names;
  for (const LoraTerm& t : lora.terms())
    names.insert(t.embedding ? embedding_name(cfg) : t.module + ".weight");
  return names;
}

}  // namespace

LoadedModel merged_copy(const ModelConfig& cfg, const ModelWeights& w, const LoraModel* lora,
                        Backend& be) {
  LoadedModel m;
  m.cfg = cfg;
  m.weights = w;
  for_each_param(m.cfg, m.weights, [](const std::string&, Tensor& t) { t = t.clone(); });
  if (m.cfg.tie_word_embeddings) m.weights.lm_head = m.weights.embedding;
  (void)be;
  if (lora) lora->merge_into(m.cfg, m.weights);
  // (state methods stay outside the weights: the caller applies them through the scan hook)
  return m;
}

LoadedModel load_model_with_adapter(const std::string& model_dir, const std::string& adapter_dir,
                                    Backend& be, DType frozen) {
  LoadedModel m;
  m.cfg = load_model_config(model_dir);
  m.weights = load_model_weights(model_dir, m.cfg, frozen);
  if (!adapter_dir.empty()) {
    if (!is_adapter_dir(adapter_dir))
      throw Error(adapter_dir + ": not an adapter directory (no adapter_config.json, " +
                  kStateTuningFile + ", " + kParamTuningFile + " or ssmtune_<method>.safetensors)");
    // Parameter tuning first: a direct entry replaces a tensor that LoRA then adds to.
    if (std::optional<SavedParamTuning> saved = read_param_tuning(adapter_dir, m.cfg, DType::F32)) {
      ModelConfig merged_cfg = m.cfg;
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
      std::unique_ptr<LoraModel> lora = read_lora_adapter(adapter_dir, m.cfg, DType::F32, be);
      if (frozen != DType::F32 && !lora->config().dora) {
        // Over a base held in bf16, LoRA runs beside it as in training: merged into a bf16
        // weight, its delta would be rounded away. DoRA's factor needs W: merged, in fp32.
        m.unmerged.push_back(std::move(lora));
      } else {
        hold_params_in(m.cfg, m.weights, lora_weights(m.cfg, *lora), DType::F32, be);
        lora->merge_into(m.cfg, m.weights);
      }
    }
    // Every method that keeps its own file; each reader returns null when its file is absent.
    const Reader readers[] = {read_as_method<read_state_tuning>, read_as_method<read_additional_scan>,
                              read_as_method<read_parallel_adapter>,
                              read_as_method<read_virtual_tokens>};
    for (const Reader read : readers)
      if (std::unique_ptr<PeftMethod> method = read(adapter_dir, m.cfg, DType::F32, be))
        m.unmerged.push_back(std::move(method));
  }
  m.scan_hooks = std::make_shared<ScanHookList>();
  m.hooks = std::make_shared<LinearHookList>();
  for (const std::shared_ptr<PeftMethod>& method : m.unmerged) {
    if (ScanHook* h = method->scan_hook()) m.scan_hooks->add(h);
    if (LinearHook* h = method->linear_hook()) m.hooks->add(h);
    if (InputHook* h = method->input_hook()) m.input = h;
  }
  return m;
}

std::string LoadedModel::unmergeable() const {
  std::string out;
  for (const std::shared_ptr<PeftMethod>& method : unmerged)
    if (!method->unmergeable_reason().empty())  // LoRA over a bf16 base merges (in fp32)
      out += (out.empty() ? "" : "; ") + method->unmergeable_reason();
  return out;
}

}  // namespace ssmtune
