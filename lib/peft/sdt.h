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
// Mamba-2 (docs/methods.md section 10, "SDT on Mamba-2"): A is one scalar per head, so heads are
// the channels and the states live in B and C alone, which in_proj makes for each group:
//   warmup   dense zero-initialised deltas on A_log (H) and on in_proj's B and C rows
//            (rows [2E, 2E+GN) and [2E+GN, 2E+2GN) of (2E+2GN+H, D)): A's delta has no state
//            axis to rank states by, B's and C's have
//   select   head score G_A[h]^2, keep the top k_H heads; per group holding a kept head, state
//            score sum_c G_B[gN+n, c]^2 + G_C[gN+n, c]^2, keep the top k_N states
//   train    A_log at the kept heads; the B and C rows of the kept states of those groups, every
//            column (a group's B and C feed each of its heads: they cannot differ per head)
// SDT acts on the state-space layers (ssm_layers(cfg): every layer of a Mamba or Mamba-2 model,
// Jamba's non-attention layers); a selection list holds one entry per such layer, in layer
// order, and the entries name the model's tensors (Jamba: model.layers.I.mamba.A_log).
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
  std::vector<std::int64_t> channels;             // kept channels d (Mamba-2: heads), ascending
  std::vector<std::vector<std::int64_t>> states;  // per kept channel: A's kept states, ascending
                                                  // (Mamba-2: B's and C's, of the head's group)
};

// n - round(freeze_fraction * n), at least 1: how many of n dimensions stay trainable.
std::int64_t sdt_kept(std::int64_t n, double freeze_fraction);

// G: (E, N) F32 or F64, one layer's warmup delta.   1 <= k_channels <= E, 1 <= k_states <= N.
SdtLayerSelection select_sdt_dimensions(const Tensor& G, std::int64_t k_channels,
                                        std::int64_t k_states);

// Mamba-2. G_A: (H) warmup delta of A_log; G_B, G_C: (G N D) warmup values of in_proj's B and C
// rows, row-major (G N rows of D = d_model columns).  1 <= k_heads <= H, 1 <= k_states <= N.
SdtLayerSelection select_sdt_heads(const ModelConfig& cfg, const Tensor& G_A, const Tensor& G_B,
                                   const Tensor& G_C, std::int64_t k_heads, std::int64_t k_states);

// How many channels (Mamba-2: heads) and states of each layer stay trainable.
std::int64_t sdt_kept_channels(const ModelConfig& cfg, const SdtConfig& sc);
std::int64_t sdt_kept_states(const ModelConfig& cfg, const SdtConfig& sc);

// Every layer's selection from the warmup entries' values (sdt_warmup_entries' order).
std::vector<SdtLayerSelection> select_sdt(const ModelConfig& cfg, const SdtConfig& sc,
                                          const std::vector<TunedTensor>& warmup);

// "sdt_warmup.layers.I.A_log": a dense delta on layer I's A_log, per layer I; Mamba-2 adds
// "sdt_warmup.layers.I.in_proj.B" and ".in_proj.C": masked entries covering all of in_proj's
// B and C rows.
std::vector<TunedTensor> sdt_warmup_entries(const ModelConfig& cfg);
// "sdt.layers.I.A_log", "sdt.layers.I.x_proj.B", "sdt.layers.I.x_proj.C": masked entries at
// the selection (flat indices d*N + n into A_log, (R + n)*E + d and (R + N + n)*E + d into
// x_proj.weight). Mamba-2: "sdt.layers.I.A_log" (indices h), "sdt.layers.I.in_proj.B" and
// ".in_proj.C" (every column of rows 2E + gN + n and 2E + GN + gN + n of in_proj.weight).
std::vector<TunedTensor> sdt_masked_entries(const ModelConfig& cfg,
                                            const std::vector<SdtLayerSelection>& selection);
// The selection back from masked entries' A_log indices (Mamba-2: and in_proj.B's rows), a
// resumed run's, for reporting.
std::vector<SdtLayerSelection> sdt_selection_of(const ModelConfig& cfg,
                                                const std::vector<TunedTensor>& masked);

// {"layers": [{"layer": I, "channels": [...], "states": [[...], ...]}, ...]}, I the model's
// layer index of each state-space layer; Mamba-2 says "heads" for "channels".
nlohmann::json sdt_selection_json(const ModelConfig& cfg,
                                  const std::vector<SdtLayerSelection>& selection);

}  // namespace ssmtune
