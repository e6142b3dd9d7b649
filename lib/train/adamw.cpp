#include "train/adamw.h"

#include <cmath>
#include <set>

#include "core/error.h"
#include "io/finite_tensors.h"
#include "io/safetensors.h"

namespace ssmtune {

bool decays(const std::string& name, const std::vector<std::string>& no_decay) {
  std::size_t start = 0;
  while (start <= name.size()) {
    const std::size_t dot = name.find('.', start);
    const std::string part = name.substr(start, dot == std::string::npos ? dot : dot - start);
    for (const std::string& nd : no_decay)
      if (part == nd || part.rfind(nd + "_", 0) == 0) return false;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return true;
}

AdamW::AdamW(const OptimizerConfig& cfg, std::vector<TrainableParam>& params, Backend& be)
    : cfg_(cfg), params_(params), be_(be) {
  reset();
}

void AdamW::reset() {
  m_.clear();
  v_.clear();
  weight_decay_.clear();
  for (const TrainableParam& p : params_) {
    m_.push_back(be_.zeros(p.value.shape(), p.value.dtype()));
    v_.push_back(be_.zeros(p.value.shape(), p.value.dtype()));
    weight_decay_.push_back(p.weight_decay_multiplier
                                ? cfg_.weight_decay * *p.weight_decay_multiplier
                            : decays(p.name, cfg_.no_decay) ? cfg_.weight_decay
                                                            : 0.0);
  }
  step_ = 0;
}

double AdamW::clip_grad_norm(double max_norm) {
  std::vector<Tensor> grads;
  for (const TrainableParam& p : params_) grads.push_back(p.grad);
  const double norm = std::sqrt(be_.sum_squares_of(grads));
  const double coef = max_norm / (norm + 1e-6);
  if (max_norm > 0 && coef < 1.0)
    for (TrainableParam& p : params_) be_.scale(p.grad, coef);
  return norm;
}

void AdamW::step(double lr) {
  ++step_;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    Backend::AdamWStep s;
    s.lr = lr * params_[i].lr_multiplier;
    s.beta1 = cfg_.beta1;
    s.beta2 = cfg_.beta2;
    s.eps = cfg_.eps;
    s.weight_decay = weight_decay_[i];
    s.step = step_;
    be_.adamw_update(params_[i].value, params_[i].grad, m_[i], v_[i], s);
  }
}

void AdamW::save(const std::filesystem::path& file) const {
  std::vector<NamedTensor> tensors;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    tensors.push_back({"m." + params_[i].name, m_[i]});
    tensors.push_back({"v." + params_[i].name, v_[i]});
  }
  write_safetensors(file, tensors,
                    {{"ssmtune.optimizer", "adamw"}, {"ssmtune.step", std::to_string(step_)}});
}

void AdamW::load(const std::filesystem::path& file) {
  reset();  // the parameter list may have changed since construction (SDT's phases)
  const SafetensorsFile st = SafetensorsFile::open(file);
  check_finite_tensors(st);
  const std::string where = file.string();
  const auto& meta = st.metadata();
  const auto it = meta.find("ssmtune.step");
  if (it == meta.end() || it->second.empty() || it->second.size() > 18 ||
      it->second.find_first_not_of("0123456789") != std::string::npos)
    throw Error(where + ": metadata \"ssmtune.step\": expected a step count");
  std::set<std::string> expected;
  for (std::size_t i = 0; i < params_.size(); ++i)
    for (const char* kind : {"m.", "v."}) {
      const std::string name = kind + params_[i].name;
      expected.insert(name);
      if (!st.contains(name)) throw Error(where + ": missing tensor " + name);
      const SafetensorsEntry& e = st.entry(name);
      if (e.shape != params_[i].value.shape() || e.dtype != params_[i].value.dtype())
        throw Error(where + ": tensor " + name + ": expected " +
                    shape_str(params_[i].value.shape()) + " " +
                    std::string(dtype_name(params_[i].value.dtype())) + ", got " +
                    shape_str(e.shape) + " " + std::string(dtype_name(e.dtype)));
    }
  for (const SafetensorsEntry& e : st.entries())
    if (!expected.count(e.name)) throw Error(where + ": unexpected tensor " + e.name);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    be_.copy(st.tensor("m." + params_[i].name), m_[i]);
    be_.copy(st.tensor("v." + params_[i].name), v_[i]);
  }
  step_ = std::stoll(it->second);
}

}  // namespace ssmtune
