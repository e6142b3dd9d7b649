// Sparse Dimension Tuning (Galim et al. 2024, P1; docs/methods.md section 3). PeftModel runs the
// phases; this file holds the math of each:
//   warmup   a dense zero-initialised delta G on every layer's A_log (A = -exp(A_log + G)),
//            trained with the rest of the combination (SDLoRA: the LoRA)
//   select   per layer, channel score s_d = sum_n G[d, n]^2, keep the top k_D channels; inside
//            each kept channel keep A's top k_N states by G[d, n]^2 (ties: lower index first);
//            B and C keep all N states of each kept channel
//   train    zero-initialised values at the selected entries only, of A_log (E, N) and of the
//            B and C rows of x_proj (rows [R, R+N) and [R+N, R+2N) of (R+2N, E))
// G is kept in A_log's layout (E, N): G[d, n] is docs/methods.md's G[n, d].
// SDT acts on the Mamba layers (mamba_layers(cfg): every layer of a Mamba model, Jamba's
// non-attention layers); a selection list holds one entry per Mamba layer, in layer order, and
// the entries name the model's tensors (Jamba: model.layers.I.mamba.A_log).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"
#include "peft/param_tuning.h"
#include "peft/peft_config.h"

namespace ssmtune {

struct SdtLayerSelection {
  std::vector<std::int64_t> channels;             // kept channels d, ascending
  std::vector<std::vector<std::int64_t>> states;  // per kept channel: A's kept states, ascending
};

// n - round(freeze_fraction * n), at least 1: how many of n dimensions stay trainable.
std::int64_t sdt_kept(std::int64_t n, double freeze_fraction);

// G: (E, N) F32 or F64, one layer's warmup delta.   1 <= k_channels <= E, 1 <= k_states <= N.
SdtLayerSelection select_sdt_dimensions(const Tensor& G, std::int64_t k_channels,
                                        std::int64_t k_states);

// "sdt_warmup.layers.I.A_log": a dense delta on layer I's A_log, per Mamba layer I.
std::vector<TunedTensor> sdt_warmup_entries(const ModelConfig& cfg);
// "sdt.layers.I.A_log", "sdt.layers.I.x_proj.B", "sdt.layers.I.x_proj.C": masked entries at
// the selection (flat indices d*N + n into A_log, (R + n)*E + d and (R + N + n)*E + d into
// x_proj.weight).
std::vector<TunedTensor> sdt_masked_entries(const ModelConfig& cfg,
                                            const std::vector<SdtLayerSelection>& selection);
// The selection back from masked entries' A_log indices (a resumed run's, for reporting).
std::vector<SdtLayerSelection> sdt_selection_of(const ModelConfig& cfg,
                                                const std::vector<TunedTensor>& masked);

// {"layers": [{"layer": I, "channels": [...], "states": [[...], ...]}, ...]}, I the model's
// layer index of each Mamba layer.
nlohmann::json sdt_selection_json(const ModelConfig& cfg,
                                  const std::vector<SdtLayerSelection>& selection);

}  // namespace ssmtune
