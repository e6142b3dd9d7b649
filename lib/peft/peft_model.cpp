#include "peft/peft_model.h"

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/memory_budget.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/weight_storage.h"
#include "peft/lora_adapter_io.h"
#include "peft/method_file.h"
#include "peft/partial.h"

namespace fs = std::filesystem;

namespace ssmtune {

namespace {

// The SSM methods act on the SSM layers alone (on Jamba: not the attention layers, which have
// no scan, no SSM tensors and no conv). A Jamba config whose every layer is attention gives them
// nothing to act on: refused, naming them.
void refuse_without_ssm_layers(const ModelConfig& cfg, const PeftConfig& peft) {
  if (!ssm_layers(cfg).empty()) return;
  std::vector<std::string> asked;
  if (peft.partial) asked.push_back("peft.partial");
  if (peft.bitfit) asked.push_back("peft.bitfit");
  if (peft.sdt) asked.push_back("peft.sdt");
  if (peft.initial_state || peft.initial_conv_state) asked.push_back("peft.initial_state");
  if (!peft.state_offset.empty()) asked.push_back("peft.state_offset");
  if (peft.parallel_adapter) asked.push_back("peft.parallel_adapter");
  if (peft.additional_scan) asked.push_back("peft.additional_scan");
  if (peft.virtual_tokens.prefix_tokens > 0) asked.push_back("peft.prefix");
  if (peft.virtual_tokens.affix_tokens > 0) asked.push_back("peft.affix");
  if (asked.empty()) return;
  std::string list;
  for (const std::string& a : asked) list += (list.empty() ? "" : ", ") + a;
  throw UsageError(list + ": acts on Mamba layers, and every layer of this model is attention (" +
                   mixer_module(cfg, 0) + ", ...); use peft.lora, peft.full or peft.prompt");
}

// Whether some parameter of w is held in another dtype than dt (frozen weights in bf16).
bool holds_other_than(const ModelConfig& cfg, ModelWeights& w, DType dt) {
  bool other = false;
  for_each_param(cfg, w, [&](const std::string&, Tensor& t) { other = other || t.dtype() != dt; });
  return other;
}

std::set<std::string> tensors_of(const std::vector<TunedTensor>& entries) {
  std::set<std::string> names;
  for (const TunedTensor& e : entries) names.insert(e.tensor);
  return names;
}

}  // namespace

PeftModel::PeftModel(const ModelConfig& cfg, ModelWeights& base, const PeftConfig& peft,
                     Backend& be, std::uint64_t seed)
    : cfg_(cfg), base_(base), config_(peft), be_(be), seed_(seed) {
  const bool state_on = peft.initial_state || peft.initial_conv_state || !peft.state_offset.empty();
  const bool params_on = peft.partial || peft.bitfit || peft.sdt;
  const bool modules_on =
      peft.parallel_adapter || peft.additional_scan || peft.virtual_tokens.any();
  if (!peft.lora && !peft.full && !state_on && !params_on && !modules_on)
    throw UsageError(
        "peft: no method enabled (set peft.lora, peft.full, peft.partial, peft.bitfit, "
        "peft.sdt, peft.parallel_adapter, peft.additional_scan, peft.prompt, peft.prefix, "
        "peft.affix, peft.initial_state or peft.state_offset)");
  if (!peft.init_from.empty() && !peft.lora)
    throw UsageError("peft.init_from continues a LoRA adapter: it needs peft.lora");
  if (peft.full && params_on)
    throw UsageError(
        "peft.full trains every base tensor already: drop peft.partial, "
        "peft.bitfit and peft.sdt, or peft.full");
  refuse_without_ssm_layers(cfg, peft);
  const DType dtype = compute_dtype(base);  // frozen base tensors may be held in bf16
  if (peft.full && holds_other_than(cfg, base, dtype))
    throw UsageError(
        "peft.full trains every base tensor, so none is frozen to hold in bf16: set "
        "training.frozen_weights to \"fp32\" (the default), or train a PEFT method");
  if (!peft.init_from.empty()) {
    if (!is_adapter_dir(peft.init_from))
      throw UsageError("peft.init_from: " + peft.init_from +
                       " is not an adapter directory (no adapter_config.json)");
    std::unique_ptr<LoraModel> lora = read_lora_adapter(peft.init_from, cfg, dtype, be);
    lora->set_init_from(peft.init_from);
    methods_.push_back(std::move(lora));
  } else if (peft.lora) {
    methods_.push_back(std::make_unique<LoraModel>(cfg, *peft.lora, dtype, be));
  }
  if (!methods_.empty()) {
    lora_ = static_cast<LoraModel*>(methods_.back().get());
    // DoRA's W: base_ outlives this object and holds what the model multiplies by for every
    // DoRA module, since those weights may not train (checked below). init() needs it too.
    lora_->set_base_weights(&base_);
  }
  if (state_on)
    methods_.push_back(std::make_unique<StateTuning>(
        cfg, peft.initial_state,
        peft.state_offset == "h"   ? StateOffset::H
        : peft.state_offset == "y" ? StateOffset::Y
                                   : StateOffset::None,
        dtype, be, peft.initial_conv_state));
  if (peft.parallel_adapter)
    methods_.push_back(std::make_unique<ParallelAdapter>(cfg, *peft.parallel_adapter, dtype, be));
  if (peft.additional_scan)
    methods_.push_back(std::make_unique<AdditionalScan>(cfg, *peft.additional_scan, dtype, be));
  if (peft.virtual_tokens.any())
    methods_.push_back(std::make_unique<VirtualTokens>(cfg, peft.virtual_tokens, dtype, be));
  for (const std::unique_ptr<PeftMethod>& m : methods_) {
    m->init(base_, seed);  // LoRA from peft.init_from takes that adapter's values again
    if (LinearHook* h = m->linear_hook()) {
      hooks_.add(h);
      if (!m->unmergeable_reason().empty()) unmerged_hooks_.add(h);
    }
    if (ScanHook* h = m->scan_hook()) scan_hooks_.add(h);
    if (InputHook* h = m->input_hook()) input_hook_ = h;
  }
  if (peft.full) {
    // Every base tensor trains: its gradient and AdamW's moments come on top of the weights.
    std::uint64_t n_base = 0;
    for_each_param(cfg, base_, [&](const std::string&, Tensor& t) { n_base += t.numel(); });
    check_trainables_fit("peft.full", n_base, dtype_size(dtype), be.free_device_bytes());
    base_grads_ = zeros_like_params(cfg, dtype);
  }
  partial_plan_ = plan_partial_entries(cfg, peft.partial ? &*peft.partial : nullptr, peft.bitfit);
  hold_params_in(cfg_, base_, tensors_of(partial_plan_), dtype, be_);  // trained: not bf16
  if (peft.sdt) {
    std::set<std::string> direct;  // trained in place: their pretrained values for the reset
    // SDT's tensors: A_log and the B and C rows of x_proj (Mamba-2: of in_proj).
    const std::string bc = cfg.is_mamba2() ? "in_proj" : "x_proj";
    for (const TunedTensor& e : partial_plan_) {
      if (e.tensor.ends_with(".A_log") || e.tensor.ends_with("." + bc + ".weight"))
        throw UsageError("peft.partial: " + e.tensor + " is SDT's to tune; leave A_log and " + bc +
                         " out of peft.partial when peft.sdt is on");
      if (e.mode == TuneMode::Direct) direct.insert(e.tensor);
    }
    for (ParamSlot& slot : param_slots(cfg_, base_))
      if (direct.count(slot.name) && slot.tensor->defined())
        pristine_.push_back({*slot.tensor, slot.tensor->clone()});
    sdt_phase_ = SdtPhase::Warmup;
  }
  if (lora_ && lora_->config().dora) refuse_trained_dora_weights();
  model_weights_ = base_;
  model_grads_ = base_grads_;
  if (params_on) {
    build_params(sdt_phase_ == SdtPhase::Warmup ? sdt_warmup_entries(cfg)
                                                : std::vector<TunedTensor>{});
  } else {
    collect_trainables();
  }
}

void PeftModel::refuse_trained_dora_weights() const {
  // The model computes a trained weight's gradient as dY^T x, which misses DoRA's row factor
  // m / n, and DoRA would read a stale W from base_: keep DoRA modules' weights frozen.
  if (config_.full)
    throw UsageError(
        "peft.lora.dora: DoRA with peft.full is not supported (the base weights under DoRA "
        "would train without its m / n factor); use plain LoRA with peft.full, or drop it");
  for (const LoraTerm& t : lora_->terms()) {
    const std::string weight = t.module + ".weight";
    for (const TunedTensor& e : partial_plan_)
      if (e.tensor == weight)
        throw UsageError("peft.partial: " + weight + " carries DoRA (peft.lora.dora on " + t.name +
                         "); a DoRA module's weight must stay frozen: leave it out of " +
                         "peft.partial or of peft.lora.targets");
    // DoRA takes whole modules only: on Mamba-2 any DoRA on in_proj covers B and C.
    const std::string bc = cfg_.is_mamba2() ? "in_proj" : "x_proj";
    if (config_.sdt && t.site.name == bc)
      throw UsageError("peft.lora.targets: " + t.name + ": SDT (peft.sdt) trains " + bc +
                       "'s B and C rows, which DoRA would scale; leave " + bc +
                       " out of the DoRA targets");
  }
}

void PeftModel::build_params(std::vector<TunedTensor> sdt_entries) {
  std::vector<TunedTensor> entries = partial_plan_;
  for (TunedTensor& e : sdt_entries) entries.push_back(std::move(e));
  params_ = std::make_unique<ParamTuning>(cfg_, base_, std::move(entries), be_);
  model_weights_ = params_->weights();
  model_grads_ = params_->grads();
  collect_trainables();
}

void PeftModel::collect_trainables() {
  trainables_.clear();
  for (const std::unique_ptr<PeftMethod>& m : methods_) m->append_trainables(trainables_);
  if (params_) params_->append_trainables(trainables_);
  if (config_.full) {
    // Values of the base trainables: the same names in the base weights.
    std::map<std::string, Tensor> base_by_name;
    for_each_param(cfg_, base_,
                   [&](const std::string& name, Tensor& t) { base_by_name[name] = t; });
    for_each_param(cfg_, base_grads_, [&](const std::string& name, Tensor& grad) {
      trainables_.push_back({name, base_by_name.at(name), grad});
    });
  }
}

std::int64_t PeftModel::n_trainable() const {
  std::int64_t n = 0;
  for (const TrainableParam& p : trainables_) n += p.value.numel();
  return n;
}

void PeftModel::zero_grads() {
  for (TrainableParam& p : trainables_) p.grad.fill_zero();
  if (params_) params_->zero_grads();
}

void PeftModel::finish_backward() {
  if (params_) params_->gather_grads();
}

void PeftModel::after_step() {
  if (params_) params_->sync();
}

void PeftModel::set_training(bool training, Rng* dropout_rng) {
  for (const std::unique_ptr<PeftMethod>& m : methods_) m->set_training(training, dropout_rng);
}

const std::vector<SdtLayerSelection>& PeftModel::end_sdt_warmup() {
  check(sdt_phase_ == SdtPhase::Warmup, "end_sdt_warmup: SDT is not warming up");
  std::vector<TunedTensor> warmup;
  for (const TunedTensor& e : params_->entries())
    if (e.name.rfind("sdt_warmup.", 0) == 0) warmup.push_back(e);
  sdt_selection_ = select_sdt(cfg_, *config_.sdt, warmup);
  // Reset (docs/methods.md section 3, step 3): the pretrained model, fresh adapters from the seed.
  restore_pristine();
  for (const std::unique_ptr<PeftMethod>& m : methods_) m->init(base_, seed_);
  build_params(sdt_masked_entries(cfg_, sdt_selection_));
  sdt_phase_ = SdtPhase::Train;
  return sdt_selection_;
}

void PeftModel::restore_pristine() {
  for (auto& [live, pretrained] : pristine_) be_.copy(pretrained, live);
}

LoadedModel PeftModel::merged() const {
  LoadedModel m;
  m.cfg = cfg_;
  m.weights = base_;
  const DType dtype = compute_dtype(base_);  // merged in the compute dtype, not a bf16 base's
  for_each_param(m.cfg, m.weights, [&](const std::string&, Tensor& t) { t = t.to(dtype); });
  if (m.cfg.tie_word_embeddings) m.weights.lm_head = m.weights.embedding;
  if (params_) params_->merge_into(m.cfg, m.weights);
  for (const std::unique_ptr<PeftMethod>& method : methods_)
    if (method->unmergeable_reason().empty()) method->merge_into(m.cfg, m.weights);
  return m;
}

std::string PeftModel::sdt_json() const {
  if (!config_.sdt) return "{}";
  const SdtConfig& sc = *config_.sdt;
  return nlohmann::json{{"sdt",
                         {{"phase", sdt_phase_ == SdtPhase::Warmup ? "warmup" : "train"},
                          {"warmup_steps", sc.warmup_steps},
                          {"channel_freeze_fraction", sc.channel_freeze_fraction},
                          {"state_freeze_fraction", sc.state_freeze_fraction}}}}
      .dump();
}

std::string PeftModel::sdt_summary(std::int64_t n_sdt) const {
  const bool m2 = cfg_.is_mamba2();
  const std::string bc = m2 ? "in_proj.B, in_proj.C" : "x_proj.B, x_proj.C";
  if (sdt_phase_ == SdtPhase::Train)
    return "sdt: masked A_log, " + bc + ", " + std::to_string(n_sdt) + " parameters";
  const SdtConfig& sc = *config_.sdt;
  const std::int64_t kc = sdt_kept_channels(cfg_, sc), ks = sdt_kept_states(cfg_, sc);
  const std::int64_t n_layers = std::int64_t(ssm_layers(cfg_).size());
  // Mamba-2: B and C rows of the kept states in each group holding a kept head, d_model wide.
  const std::int64_t after =
      n_layers * (m2 ? kc + 2 * std::min(kc, cfg_.n_groups) * ks * cfg_.d_model
                     : kc * ks + 2 * kc * cfg_.d_state);
  const std::string what =
      m2 ? " heads of A_log + " + bc + " rows of " + std::to_string(ks) +
               " states in each group holding a kept head: at most "
         : " channels x " + std::to_string(ks) + " states of A_log + B, C of those channels: ";
  return "sdt warmup: dense delta on A_log" + std::string(m2 ? " and " + bc + " rows" : "") + ", " +
         std::to_string(n_sdt) + " parameters, for " + std::to_string(sc.warmup_steps) +
         " steps; then per layer " + std::to_string(kc) + what + std::to_string(after) +
         " parameters";
}

std::vector<std::string> PeftModel::summary() const {
  std::vector<std::string> lines;
  for (const std::unique_ptr<PeftMethod>& m : methods_)
    for (std::string& line : m->summary()) lines.push_back(std::move(line));
  if (config_.full) {
    std::int64_t n = 0;
    for (const TrainableParam& p : trainables_)  // the base tensors: HF names
      if (p.name.rfind("backbone.", 0) == 0 || p.name.rfind("model.", 0) == 0 ||
          p.name == "lm_head.weight")
        n += p.value.numel();
    lines.push_back("full fine-tuning: every base tensor, " + std::to_string(n) + " parameters");
  }
  if (params_) {
    std::int64_t n_partial = 0, n_tensors = 0, n_sdt = 0;
    for (const TunedTensor& e : params_->entries()) {
      if (e.name.rfind("partial.", 0) == 0) {
        n_partial += e.value.numel();
        n_tensors += 1;
      } else {
        n_sdt += e.value.numel();
      }
    }
    if (n_tensors > 0) {
      const std::string what = config_.partial && config_.bitfit ? "partial tuning + BitFit"
                               : config_.bitfit                  ? "BitFit"
                                                                 : "partial tuning";
      lines.push_back(what + " (" + (config_.partial ? config_.partial->mode : "direct") +
                      "): " + std::to_string(n_tensors) + " tensors, " + std::to_string(n_partial) +
                      " parameters");
    }
    if (sdt_phase_ != SdtPhase::Off) lines.push_back(sdt_summary(n_sdt));
  }
  return lines;
}

bool PeftModel::save_adapter(const fs::path& dir, const std::string& base_model,
                             const std::map<std::string, std::string>& metadata) const {
  bool wrote = false;
  for (const std::unique_ptr<PeftMethod>& m : methods_) {
    if (m.get() == lora_ && config_.full) continue;  // merged into the run's model/ instead
    m->save(dir, {base_model, metadata});
    wrote = true;
  }
  if (params_) write_param_tuning(dir, *params_, sdt_json(), metadata);
  return wrote || params_;
}

void PeftModel::save(const fs::path& dir, const std::string& base_model,
                     const std::map<std::string, std::string>& metadata) const {
  save_adapter(dir, base_model, metadata);
  if (lora_ && config_.full) lora_->save(dir, {base_model, metadata});
  if (config_.full) {
    std::vector<NamedTensor> tensors;
    for_each_param(cfg_, base_, [&](const std::string& name, Tensor& t) {
      tensors.push_back({name, t});
    });
    write_safetensors(dir / "model.safetensors", tensors, metadata);
    const std::string config = dump_python_json(model_config_to_json(cfg_), 2);
    write_file_atomic(dir / "config.json", config + "\n");
  }
}

void PeftModel::load(const fs::path& dir) {
  for (const std::unique_ptr<PeftMethod>& m : methods_) m->load(dir);
  if (params_) load_params(dir);
  if (config_.full) {
    ModelWeights saved = load_model_weights(dir.string(), cfg_, compute_dtype(base_));
    std::map<std::string, Tensor> by_name;
    for_each_param(cfg_, saved, [&](const std::string& name, Tensor& t) { by_name[name] = t; });
    for_each_param(cfg_, base_,
                   [&](const std::string& name, Tensor& t) { be_.copy(by_name.at(name), t); });
  }
}

void PeftModel::load_params(const fs::path& dir) {
  const std::string file = (dir / kParamTuningFile).string();
  std::optional<SavedParamTuning> saved = read_param_tuning(dir, cfg_, compute_dtype(base_));
  if (!saved) throw Error(file + ": missing (this run tunes base tensors)");
  if (config_.sdt) {
    const nlohmann::json extra = nlohmann::json::parse(saved->extra_json);
    const auto* sdt = extra.contains("sdt") && extra["sdt"].is_object() ? &extra["sdt"] : nullptr;
    const std::string phase = sdt && sdt->contains("phase") && (*sdt)["phase"].is_string()
                                  ? (*sdt)["phase"].get<std::string>()
                                  : "";
    if (phase != "warmup" && phase != "train")
      throw Error(file +
                  ": metadata ssmtune.param_tuning: expected \"sdt\": {\"phase\": "
                  "\"warmup\" or \"train\"} (this run trains SDT)");
    if (phase == "train" && sdt_phase_ == SdtPhase::Warmup) {
      // A checkpoint of masked training: take its selection, then its values below.
      sdt_selection_ = sdt_selection_of(cfg_, saved->entries);
      for (const SdtLayerSelection& s : sdt_selection_)
        if (s.channels.empty())
          throw Error(file +
                      ": SDT's masked training has no A_log entry for every state-space layer");
      restore_pristine();
      build_params(sdt_masked_entries(cfg_, sdt_selection_));
      sdt_phase_ = SdtPhase::Train;
    } else if (phase == "warmup" && sdt_phase_ == SdtPhase::Train) {
      throw Error(file + ": holds SDT's warmup, but this run is past it");
    }
  }
  std::vector<TunedTensor>& mine = params_->entries();
  if (saved->entries.size() != mine.size())
    throw Error(file + ": holds " + std::to_string(saved->entries.size()) +
                " tuned tensors, this run tunes " + std::to_string(mine.size()));
  for (std::size_t i = 0; i < mine.size(); ++i) {
    const TunedTensor& theirs = saved->entries[i];
    const bool same_index = theirs.index.defined() == mine[i].index.defined() &&
                            (!theirs.index.defined() ||
                             (theirs.index.numel() == mine[i].index.numel() &&
                              std::equal(theirs.index.data<std::int64_t>(),
                                         theirs.index.data<std::int64_t>() + theirs.index.numel(),
                                         mine[i].index.data<std::int64_t>())));
    if (theirs.name != mine[i].name || theirs.tensor != mine[i].tensor ||
        theirs.mode != mine[i].mode || !same_index)
      throw Error(file + ": entry " + theirs.name + " (" + tune_mode_name(theirs.mode) + " on " +
                  theirs.tensor + ") does not match this run's " + mine[i].name);
    be_.copy(theirs.value, mine[i].value);
  }
  params_->sync();
}

}  // namespace ssmtune
