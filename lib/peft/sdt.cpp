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

TunedTensor masked_entry(const std::string& name, const std::string& tensor,
                         const std::vector<std::int64_t>& idx) {
  TunedTensor e;
  e.name = name;
  e.tensor = tensor;
  e.mode = TuneMode::Masked;
  e.index = index_tensor(idx);
  return e;
}

// Mamba-2's in_proj rows z | x | B | C | dt: the first B row and the first C row.
std::int64_t b_row0(const ModelConfig& cfg) { return 2 * cfg.d_inner; }
std::int64_t c_row0(const ModelConfig& cfg) { return 2 * cfg.d_inner + cfg.n_groups * cfg.d_state; }

// Every column of the given in_proj rows (ascending): flat indices into (rows, d_model).
std::vector<std::int64_t> row_indices(const ModelConfig& cfg,
                                      const std::vector<std::int64_t>& rows) {
  std::vector<std::int64_t> idx;
  idx.reserve(rows.size() * std::size_t(cfg.d_model));
  for (const std::int64_t r : rows)
    for (std::int64_t c = 0; c < cfg.d_model; ++c) idx.push_back(r * cfg.d_model + c);
  return idx;
}

// Mamba-2: the group whose B and C head h reads.
std::int64_t group_of(const ModelConfig& cfg, std::int64_t h) {
  return h / (cfg.ssm_heads / cfg.n_groups);
}

// Mamba-2: kept (group, state) pairs of a selection, as in_proj rows from `row0`, ascending.
std::vector<std::int64_t> kept_rows(const ModelConfig& cfg, const SdtLayerSelection& s,
                                    std::int64_t row0) {
  std::vector<std::int64_t> rows;
  for (std::size_t i = 0; i < s.channels.size(); ++i)
    for (const std::int64_t n : s.states[i])
      rows.push_back(row0 + group_of(cfg, s.channels[i]) * cfg.d_state + n);
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());  // heads sharing a group
  return rows;
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

SdtLayerSelection select_sdt_heads(const ModelConfig& cfg, const Tensor& G_A, const Tensor& G_B,
                                   const Tensor& G_C, std::int64_t k_heads, std::int64_t k_states) {
  const std::int64_t H = cfg.ssm_heads, N = cfg.d_state, G = cfg.n_groups, D = cfg.d_model;
  check(G_A.numel() == H && G_B.numel() == G * N * D && G_C.numel() == G * N * D,
        "sdt: Mamba-2 warmup values must be (H), (G N D), (G N D)");
  check(k_heads >= 1 && k_heads <= H && k_states >= 1 && k_states <= N,
        "sdt: kept heads / states out of range");
  const Tensor a = G_A.to(DType::F64), b = G_B.to(DType::F64), c = G_C.to(DType::F64);
  std::vector<double> head_score(std::size_t(H), 0.0);
  for (std::int64_t h = 0; h < H; ++h) head_score[h] = a.data<double>()[h] * a.data<double>()[h];
  SdtLayerSelection sel;
  sel.channels = top_k(head_score, k_heads);
  for (const std::int64_t h : sel.channels) {
    const std::int64_t g = group_of(cfg, h);
    std::vector<double> state_score(std::size_t(N), 0.0);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t col = 0; col < D; ++col) {
        const std::int64_t at = (g * N + n) * D + col;
        state_score[n] += b.data<double>()[at] * b.data<double>()[at] +
                          c.data<double>()[at] * c.data<double>()[at];
      }
    sel.states.push_back(top_k(state_score, k_states));
  }
  return sel;
}

std::int64_t sdt_kept_channels(const ModelConfig& cfg, const SdtConfig& sc) {
  return sdt_kept(cfg.is_mamba2() ? cfg.ssm_heads : cfg.d_inner, sc.channel_freeze_fraction);
}

std::int64_t sdt_kept_states(const ModelConfig& cfg, const SdtConfig& sc) {
  return sdt_kept(cfg.d_state, sc.state_freeze_fraction);
}

std::vector<SdtLayerSelection> select_sdt(const ModelConfig& cfg, const SdtConfig& sc,
                                          const std::vector<TunedTensor>& warmup) {
  const std::int64_t kc = sdt_kept_channels(cfg, sc), ks = sdt_kept_states(cfg, sc);
  const std::size_t per_layer = cfg.is_mamba2() ? 3 : 1;  // A_log (+ in_proj.B, in_proj.C)
  check(warmup.size() == per_layer * ssm_layers(cfg).size(), "sdt: one warmup set per layer");
  std::vector<SdtLayerSelection> out;
  for (std::size_t j = 0; j < warmup.size(); j += per_layer)
    out.push_back(cfg.is_mamba2() ? select_sdt_heads(cfg, warmup[j].value, warmup[j + 1].value,
                                                     warmup[j + 2].value, kc, ks)
                                  : select_sdt_dimensions(warmup[j].value, kc, ks));
  return out;
}

std::vector<TunedTensor> sdt_warmup_entries(const ModelConfig& cfg) {
  std::vector<TunedTensor> out;
  for (const std::int64_t i : ssm_layers(cfg)) {
    const std::string name = "sdt_warmup.layers." + std::to_string(i) + ".";
    TunedTensor e;
    e.name = name + "A_log";
    e.tensor = mixer_module(cfg, i) + ".A_log";
    e.mode = TuneMode::Delta;
    out.push_back(std::move(e));
    if (!cfg.is_mamba2()) continue;
    std::vector<std::int64_t> rows(std::size_t(cfg.n_groups * cfg.d_state));
    const std::string in_proj = mixer_module(cfg, i) + ".in_proj.weight";
    std::iota(rows.begin(), rows.end(), b_row0(cfg));
    out.push_back(masked_entry(name + "in_proj.B", in_proj, row_indices(cfg, rows)));
    std::iota(rows.begin(), rows.end(), c_row0(cfg));
    out.push_back(masked_entry(name + "in_proj.C", in_proj, row_indices(cfg, rows)));
  }
  return out;
}

std::vector<TunedTensor> sdt_masked_entries(const ModelConfig& cfg,
                                            const std::vector<SdtLayerSelection>& selection) {
  const std::vector<std::int64_t> layers = ssm_layers(cfg);
  check(selection.size() == layers.size(), "sdt: one selection per state-space layer");
  const std::int64_t E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank;
  std::vector<TunedTensor> out;
  for (std::size_t j = 0; j < layers.size(); ++j) {
    const std::int64_t i = layers[j];
    const SdtLayerSelection& s = selection[j];
    const std::string name = "sdt.layers." + std::to_string(i) + ".", mixer = mixer_module(cfg, i);
    if (cfg.is_mamba2()) {
      out.push_back(masked_entry(name + "A_log", mixer + ".A_log", s.channels));
      out.push_back(masked_entry(name + "in_proj.B", mixer + ".in_proj.weight",
                                 row_indices(cfg, kept_rows(cfg, s, b_row0(cfg)))));
      out.push_back(masked_entry(name + "in_proj.C", mixer + ".in_proj.weight",
                                 row_indices(cfg, kept_rows(cfg, s, c_row0(cfg)))));
      continue;
    }
    std::vector<std::int64_t> a_idx, b_idx, c_idx;
    for (std::size_t c = 0; c < s.channels.size(); ++c)
      for (const std::int64_t n : s.states[c]) a_idx.push_back(s.channels[c] * N + n);
    for (std::int64_t n = 0; n < N; ++n)
      for (const std::int64_t d : s.channels) {
        b_idx.push_back((R + n) * E + d);
        c_idx.push_back((R + N + n) * E + d);
      }
    out.push_back(masked_entry(name + "A_log", mixer + ".A_log", a_idx));
    out.push_back(masked_entry(name + "x_proj.B", mixer + ".x_proj.weight", b_idx));
    out.push_back(masked_entry(name + "x_proj.C", mixer + ".x_proj.weight", c_idx));
  }
  return out;
}

std::vector<SdtLayerSelection> sdt_selection_of(const ModelConfig& cfg,
                                                const std::vector<TunedTensor>& masked) {
  const std::vector<std::int64_t> layers = ssm_layers(cfg);
  std::vector<SdtLayerSelection> out(layers.size());
  // Mamba-2: per layer and group, the kept states read off in_proj.B's rows.
  std::vector<std::vector<std::vector<std::int64_t>>> group_states(
      layers.size(), std::vector<std::vector<std::int64_t>>(std::size_t(cfg.n_groups)));
  const std::string prefix = "sdt.layers.";
  for (const TunedTensor& e : masked) {
    if (e.mode != TuneMode::Masked || e.name.rfind(prefix, 0) != 0) continue;
    const std::size_t dot = e.name.find('.', prefix.size());
    if (dot == std::string::npos) continue;
    const std::string num = e.name.substr(prefix.size(), dot - prefix.size());
    const std::string what = e.name.substr(dot + 1);
    if (num.empty() || num.size() > 9 || num.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const auto at = std::find(layers.begin(), layers.end(), std::stoll(num));
    if (at == layers.end()) continue;
    const std::size_t j = std::size_t(at - layers.begin());
    SdtLayerSelection& s = out[j];
    const std::int64_t* idx = e.index.data<std::int64_t>();
    if (what == "A_log" && cfg.is_mamba2()) {
      s.channels.assign(idx, idx + e.index.numel());
    } else if (what == "A_log") {
      for (std::int64_t k = 0; k < e.index.numel(); ++k) {
        const std::int64_t d = idx[k] / cfg.d_state, n = idx[k] % cfg.d_state;
        if (s.channels.empty() || s.channels.back() != d) {
          s.channels.push_back(d);
          s.states.emplace_back();
        }
        s.states.back().push_back(n);
      }
    } else if (what == "in_proj.B" && cfg.is_mamba2()) {
      for (std::int64_t k = 0; k < e.index.numel(); k += cfg.d_model) {  // one per row
        const std::int64_t r = idx[k] / cfg.d_model - b_row0(cfg);
        if (r >= 0 && r < cfg.n_groups * cfg.d_state)
          group_states[j][std::size_t(r / cfg.d_state)].push_back(r % cfg.d_state);
      }
    }
  }
  if (cfg.is_mamba2())
    for (std::size_t j = 0; j < out.size(); ++j)
      for (const std::int64_t h : out[j].channels)
        out[j].states.push_back(group_states[j][std::size_t(group_of(cfg, h))]);
  return out;
}

nlohmann::json sdt_selection_json(const ModelConfig& cfg,
                                  const std::vector<SdtLayerSelection>& selection) {
  const std::vector<std::int64_t> ssm = ssm_layers(cfg);
  check(selection.size() == ssm.size(), "sdt: one selection per state-space layer");
  nlohmann::json layers = nlohmann::json::array();
  for (std::size_t j = 0; j < selection.size(); ++j)
    layers.push_back({{"layer", ssm[j]},
                      {cfg.is_mamba2() ? "heads" : "channels", selection[j].channels},
                      {"states", selection[j].states}});
  return {{"layers", layers}};
}

}  // namespace ssmtune
