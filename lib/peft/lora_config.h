// What the "peft.lora" section of an experiment config says (docs/config.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtune {

struct LoraConfig {
  // Module names: in_proj, x_proj, dt_proj, out_proj, embeddings, or slices in_proj.x,
  // in_proj.z, x_proj.dt, x_proj.B, x_proj.C. Each target may be prefixed by "layers.I." or
  // "layers.I-J." to restrict it to some layers; otherwise every layer.
  std::vector<std::string> targets = {"in_proj", "out_proj"};
  std::int64_t rank = 8;  // r >= 1
  double alpha = 8;       // scale = alpha / r (alpha / sqrt(r) with rslora)
  double dropout = 0.0;   // on the LoRA branch's input, [0, 1)
  bool rslora = false;
  double scale = 0;               // > 0: a fixed scale s instead of alpha / r (MambaPEFT uses 0.1)
  std::string init = "kaiming";  // "kaiming" (PEFT default: A kaiming-uniform a=sqrt(5), B = 0)
                                 // or "gaussian" (A ~ N(0, 1/r), B = 0)
  // DoRA (PEFT's use_dora): W' = m (W + s B A) / ||W + s B A||_row with a trained magnitude m
  // per output row. Whole modules only (no slices, no embedding).
  bool dora = false;
};

}  // namespace ssmtune
