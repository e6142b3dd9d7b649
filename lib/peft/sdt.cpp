#include "peft/sdt.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace ssmtune {

namespace {

// The indices of the k largest scores, ties broken by the lower index, returned ascending.
std::vector<std::int64_t> top_k(const std::vector<double>& score, std::int64_t k) {
  std::vector<std::int64_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t a, std::int64_t b) { return score[a] > score[b]; });
  order.resize(std::size_t(k));
  std::sort(order.begin(), order.end());
  return order;
}

Tensor index_tensor(const std::vector<std::int64_t>& idx) {
  Tensor t = Tensor::empty({std::int64_t(idx.size())}, DType::I64);
  std::copy(idx.begin(), idx.end(), t.data<std::int64_t>());
  return t;
}

}  // namespace

std::int64_t sdt_kept(std::int64_t n, double freeze_fraction) {
  const std::int64_t frozen = std::int64_t(std::llround(freeze_fraction * double(n)));
  return std::clamp<std::int64_t>(n - frozen, 1, n);
}

SdtLayerSelection select_sdt_dimensions(const Tensor& G, std::int64_t k_channels,
                                        std::int64_t k_states) {
  check(G.ndim() == 2, "sdt: G must be (E, N), got " + shape_str(G.shape()));
  const std::int64_t E = G.dim(0), N = G.dim(1);
  check(k_channels >= 1 && k_channels <= E && k_states >= 1 && k_states <= N,
        "sdt: kept channels / states out of range");
  const Tensor g = G.to(DType::F64);
  const double* p = g.data<double>();
  std::vector<double> channel_score(std::size_t(E), 0.0);
  for (std::int64_t d = 0; d < E; ++d)
    for (std::int64_t n = 0; n < N; ++n) channel_score[d] += p[d * N + n] * p[d * N + n];
  SdtLayerSelection sel;
  sel.channels = top_k(channel_score, k_channels);
  for (const std::int64_t d : sel.channels) {
    std::vector<double> state_score(static_cast<std::size_t>(N), 0.0);
    for (std::int64_t n = 0; n < N; ++n) state_score[n] = p[d * N + n] * p[d * N + n];
    sel.states.push_back(top_k(state_score, k_states));
  }
  return sel;
}

std::vector<TunedTensor> sdt_warmup_entries(const ModelConfig& cfg) {
  std::vector<TunedTensor> out;
  for (const std::int64_t i : mamba_layers(cfg)) {
    TunedTensor e;
    e.name = "sdt_warmup.layers." + std::to_string(i) + ".A_log";
    e.tensor = mixer_module(cfg, i) + ".A_log";
    e.mode = TuneMode::Delta;
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<TunedTensor> sdt_masked_entries(const ModelConfig& cfg,
                                            const std::vector<SdtLayerSelection>& selection) {
  const std::vector<std::int64_t> layers = mamba_layers(cfg);
  check(selection.size() == layers.size(), "sdt: one selection per Mamba layer");
  const std::int64_t E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank;
  std::vector<TunedTensor> out;
  for (std::size_t j = 0; j < layers.size(); ++j) {
    const std::int64_t i = layers[j];
    const SdtLayerSelection& s = selection[j];
    std::vector<std::int64_t> a_idx, b_idx, c_idx;
    for (std::size_t c = 0; c < s.channels.size(); ++c)
      for (const std::int64_t n : s.states[c]) a_idx.push_back(s.channels[c] * N + n);
    for (std::int64_t n = 0; n < N; ++n)
      for (const std::int64_t d : s.channels) {
        b_idx.push_back((R + n) * E + d);
        c_idx.push_back((R + N + n) * E + d);
      }
    const std::string name = "sdt.layers." + std::to_string(i) + ".";
    const auto masked = [&](const std::string& what, const std::string& tensor,
                            const std::vector<std::int64_t>& idx) {
      TunedTensor e;
      e.name = name + what;
      e.tensor = mixer_module(cfg, i) + "." + tensor;
      e.mode = TuneMode::Masked;
      e.index = index_tensor(idx);
      out.push_back(std::move(e));
    };
    masked("A_log", "A_log", a_idx);
    masked("x_proj.B", "x_proj.weight", b_idx);
    masked("x_proj.C", "x_proj.weight", c_idx);
  }
  return out;
}

std::vector<SdtLayerSelection> sdt_selection_of(const ModelConfig& cfg,
                                                const std::vector<TunedTensor>& masked) {
  const std::vector<std::int64_t> layers = mamba_layers(cfg);
  std::vector<SdtLayerSelection> out(layers.size());
  for (const TunedTensor& e : masked) {
    const std::string prefix = "sdt.layers.", suffix = ".A_log";
    if (e.mode != TuneMode::Masked || e.name.rfind(prefix, 0) != 0 || !e.name.ends_with(suffix))
      continue;
    const std::string num =
        e.name.substr(prefix.size(), e.name.size() - prefix.size() - suffix.size());
    if (num.empty() || num.size() > 9 || num.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const auto at = std::find(layers.begin(), layers.end(), std::stoll(num));
    if (at == layers.end()) continue;
    SdtLayerSelection& s = out[std::size_t(at - layers.begin())];
    const std::int64_t* idx = e.index.data<std::int64_t>();
    for (std::int64_t j = 0; j < e.index.numel(); ++j) {
      const std::int64_t d = idx[j] / cfg.d_state, n = idx[j] % cfg.d_state;
      if (s.channels.empty() || s.channels.back() != d) {
        s.channels.push_back(d);
        s.states.emplace_back();
      }
      s.states.back().push_back(n);
    }
  }
  return out;
}

nlohmann::json sdt_selection_json(const ModelConfig& cfg,
                                  const std::vector<SdtLayerSelection>& selection) {
  const std::vector<std::int64_t> mamba = mamba_layers(cfg);
  check(selection.size() == mamba.size(), "sdt: one selection per Mamba layer");
  nlohmann::json layers = nlohmann::json::array();
  for (std::size_t j = 0; j < selection.size(); ++j)
    layers.push_back({{"layer", mamba[j]},
                      {"channels", selection[j].channels},
                      {"states", selection[j].states}});
  return {{"layers", layers}};
}

}  // namespace ssmtune
