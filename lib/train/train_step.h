// One optimizer step of training, the one place every trainer path goes through (today the
// single-process loop of trainer.cpp; data-parallel ranks will add their gradient reduction
// where the comment in train_step.cpp says):
//   zero the gradients -> forward + backward of each micro-batch (gradients accumulate, each
//   token weighing the same) -> gradients final (methods gather theirs; the reduction point)
//   -> global-norm clip -> AdamW at the scheduled lr -> methods follow the new values.
#pragma once

#include <cstdint>
#include <vector>

#include "data/batcher.h"
#include "model/causal_lm.h"
#include "peft/peft_model.h"
#include "train/adamw.h"

namespace ssmtune {

struct StepResult {
  double loss = 0;               // mean token cross-entropy over the step's loss tokens
  double aux_loss = 0;           // the router load-balancing loss, token-weighted (MoE models)
  double grad_norm = 0;          // before clipping
  std::int64_t loss_tokens = 0;  // tokens with a label over all micro-batches
};

// `lm` runs on peft.weights() with peft's hooks set; `micro` holds the step's micro-batches
// (input_ids, labels: (B, L) I64). lr: this step's scheduled learning rate; grad_clip: the
// optimizer's max norm (0 = no clipping). `step` (1-based) names the step in the error thrown
// when the loss or the gradient norm is not finite, before any parameter changes.
StepResult train_step(CausalLM& lm, PeftModel& peft, AdamW& optimizer,
                      const std::vector<Batch>& micro, double lr, double grad_clip,
                      std::int64_t step);

}  // namespace ssmtune
