#include "peft/peft_model.h"

#include <map>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "peft/lora_adapter_io.h"

namespace fs = std::filesystem;

namespace ssmtune {

PeftModel::PeftModel(const MambaConfig& cfg, MambaWeights& base, const PeftConfig& peft,
                     Backend& be, std::uint64_t seed)
    : cfg_(cfg), base_(base), config_(peft), be_(be) {
  const bool state_on = peft.initial_state || !peft.state_offset.empty();
  if (!peft.lora && !peft.full && !state_on)
    throw UsageError(
        "peft: no method enabled (set peft.lora, peft.full, peft.initial_state or "
        "peft.state_offset)");
  if (!peft.init_from.empty() && !peft.lora)
    throw UsageError("peft.init_from continues a LoRA adapter: it needs peft.lora");
  const DType dtype = base.embedding.dtype();
  if (!peft.init_from.empty()) {
    if (!is_adapter_dir(peft.init_from))
      throw UsageError("peft.init_from: " + peft.init_from +
                       " is not an adapter directory (no adapter_config.json)");
    lora_ = read_lora_adapter(peft.init_from, cfg, dtype, be);
  } else if (peft.lora) {
    lora_ = std::make_unique<LoraModel>(cfg, *peft.lora, dtype, be);
    lora_->init(seed);
  }
  if (state_on)  // zero-initialised: the model is unchanged at step 0
    state_ = std::make_unique<StateTuning>(cfg, peft.initial_state,
                                           peft.state_offset == "h"   ? StateOffset::H
                                           : peft.state_offset == "y" ? StateOffset::Y
                                                                      : StateOffset::None,
                                           dtype, be);
  if (peft.full) base_grads_ = zeros_like_params(cfg, dtype);
  if (lora_) lora_->append_trainables(trainables_);
  if (state_) state_->append_trainables(trainables_);
  if (peft.full)
    for_each_param(cfg_, base_grads_, [&](const std::string& name, Tensor& grad) {
      trainables_.push_back({name, Tensor(), grad});
    });
  // Values of the base trainables: the same names in the base weights.
  std::map<std::string, Tensor> base_by_name;
  for_each_param(cfg_, base_, [&](const std::string& name, Tensor& t) { base_by_name[name] = t; });
  for (TrainableParam& p : trainables_)
    if (!p.value.defined()) p.value = base_by_name.at(p.name);
}

std::int64_t PeftModel::n_trainable() const {
  std::int64_t n = 0;
  for (const TrainableParam& p : trainables_) n += p.value.numel();
  return n;
}

void PeftModel::zero_grads() {
  for (TrainableParam& p : trainables_) p.grad.fill_zero();
}

void PeftModel::set_training(bool training, Rng* dropout_rng) {
  if (lora_) lora_->set_training(training, dropout_rng);
}

std::vector<std::string> PeftModel::summary() const {
  std::vector<std::string> lines;
  if (lora_) {
    // Group the terms by what the user targeted (the part of the name after "layers.I.").
    std::map<std::string, std::pair<std::int64_t, std::int64_t>> groups;  // target -> (n, params)
    for (const LoraTerm& t : lora_->terms()) {
      const std::string target =
          t.embedding ? "embeddings" : t.name.substr(t.name.find('.', 7) + 1);
      auto& g = groups[target];
      g.first += 1;
      g.second += t.A.numel() + t.B.numel();
    }
    const LoraConfig& lc = lora_->config();
    std::ostringstream head;
    head << "lora: rank " << lc.rank << ", alpha " << lc.alpha << (lc.rslora ? " (rsLoRA)" : "")
         << ", scale " << lora_->terms().front().scale << ", dropout " << lc.dropout;
    lines.push_back(head.str());
    for (const auto& [target, g] : groups)
      lines.push_back("  " + target + ": " + std::to_string(g.first) + " module" +
                      (g.first == 1 ? "" : "s") + ", " + std::to_string(g.second) + " parameters");
  }
  if (config_.full) {
    std::int64_t n = 0;
    for (const TrainableParam& p : trainables_)  // the base tensors: HF names
      if (p.name.rfind("backbone.", 0) == 0 || p.name == "lm_head.weight") n += p.value.numel();
    lines.push_back("full fine-tuning: every base tensor, " + std::to_string(n) + " parameters");
  }
  if (config_.initial_state)
    lines.push_back("initial-state tuning: h0 (d_inner x d_state) per layer, " +
                    std::to_string(cfg_.n_layer * cfg_.d_inner * cfg_.d_state) + " parameters");
  if (!config_.state_offset.empty()) {
    const std::int64_t per_layer =
        config_.state_offset == "h" ? cfg_.d_inner * cfg_.d_state : cfg_.d_inner;
    lines.push_back("state-offset tuning (" + config_.state_offset +
                    "): " + std::to_string(cfg_.n_layer * per_layer) + " parameters");
  }
  return lines;
}

void PeftModel::save(const fs::path& dir, const std::string& base_model,
                     const std::map<std::string, std::string>& metadata) const {
  if (lora_) write_lora_adapter(dir, *lora_, base_model, metadata);
  if (state_) write_state_tuning(dir, *state_, metadata);
  if (config_.full) {
    std::vector<NamedTensor> tensors;
    for_each_param(cfg_, base_, [&](const std::string& name, Tensor& t) {
      tensors.push_back({name, t});
    });
    write_safetensors(dir / "model.safetensors", tensors, metadata);
    write_file_atomic(dir / "config.json", mamba_config_to_json(cfg_).dump(2) + "\n");
  }
}

void PeftModel::load(const fs::path& dir) {
  if (lora_) {
    const std::unique_ptr<LoraModel> saved =
        read_lora_adapter(dir, cfg_, lora_->terms().front().A.dtype(), be_);
    std::vector<LoraTerm>& mine = lora_->terms();
    const std::vector<LoraTerm>& theirs = saved->terms();
    const std::string file = (dir / "adapter_model.safetensors").string();
    if (theirs.size() != mine.size())
      throw Error(file + ": holds " + std::to_string(theirs.size()) + " LoRA terms, this run has " +
                  std::to_string(mine.size()));
    for (std::size_t i = 0; i < mine.size(); ++i) {
      if (theirs[i].name != mine[i].name || theirs[i].A.shape() != mine[i].A.shape() ||
          theirs[i].B.shape() != mine[i].B.shape())
        throw Error(file + ": LoRA term " + theirs[i].name + " does not match this run's " +
                    mine[i].name);
      be_.copy(theirs[i].A, mine[i].A);
      be_.copy(theirs[i].B, mine[i].B);
    }
  }
  if (state_) {
    const std::unique_ptr<StateTuning> saved =
        read_state_tuning(dir, cfg_, base_.embedding.dtype(), be_);
    const std::string file = (dir / kStateTuningFile).string();
    if (!saved) throw Error(file + ": missing (this run trains state methods)");
    std::vector<TrainableParam> mine, theirs;
    state_->append_trainables(mine);
    saved->append_trainables(theirs);
    if (mine.size() != theirs.size() || saved->offset() != state_->offset() ||
        saved->initial_state_on() != state_->initial_state_on())
      throw Error(file + ": holds other state methods than this run trains");
    for (std::size_t i = 0; i < mine.size(); ++i) be_.copy(theirs[i].value, mine[i].value);
  }
  if (config_.full) {
    MambaWeights saved = load_mamba_weights(dir.string(), cfg_, base_.embedding.dtype());
    std::map<std::string, Tensor> by_name;
    for_each_param(cfg_, saved, [&](const std::string& name, Tensor& t) { by_name[name] = t; });
    for_each_param(cfg_, base_,
                   [&](const std::string& name, Tensor& t) { be_.copy(by_name.at(name), t); });
  }
}

}  // namespace ssmtune
