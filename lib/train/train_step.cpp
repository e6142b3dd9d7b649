#include "train/train_step.h"

#include <cmath>
#include <string>

#include "core/error.h"

namespace ssmtune {

namespace {

// "nan", "inf" or "-inf" (std::to_string writes "-nan" for some NaNs), else the number.
std::string value_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return std::to_string(v);
}

}  // namespace

StepResult train_step(CausalLM& lm, PeftModel& peft, AdamW& optimizer,
                      const std::vector<Batch>& micro, double lr, double grad_clip,
                      std::int64_t step) {
  StepResult r;
  for (const Batch& b : micro) r.loss_tokens += b.n_loss_tokens;
  peft.zero_grads();
  double loss_sum = 0, aux_sum = 0;
  for (const Batch& b : micro) {
    lm.forward_for_training(b.input_ids, b.attention_mask);
    const Tensor targets = shift_labels(b.labels);
    // Each micro-batch's loss is its token sum over the step's token count: the accumulated
    // gradient is the gradient of the step's mean.
    const LmLoss l = lm.loss_and_backward(targets, peft.base_grads(), r.loss_tokens);
    loss_sum += l.loss * double(l.n_tokens);
    aux_sum += l.aux_loss * double(l.n_tokens);
  }
  peft.finish_backward();
  // The gradients of every trainable tensor are final here: a data-parallel run reduces them
  // (and the loss sum and token count) across ranks at this point, before clipping.
  r.loss = r.loss_tokens ? loss_sum / double(r.loss_tokens) : 0.0;
  r.aux_loss = r.loss_tokens ? aux_sum / double(r.loss_tokens) : 0.0;
  if (!std::isfinite(r.loss))
    throw Error("training diverged at step " + std::to_string(step) + ": the loss is " +
                value_text(r.loss) + "; lower optimizer.lr");
  r.grad_norm = optimizer.clip_grad_norm(grad_clip);
  // A finite loss can still have an Inf or NaN gradient (an overflow in backward); AdamW would
  // write it into every parameter, so the step stops here too, nothing changed yet.
  if (!std::isfinite(r.grad_norm))
    throw Error("training diverged at step " + std::to_string(step) + ": the gradient norm is " +
                value_text(r.grad_norm) + "; lower optimizer.lr");
  optimizer.step(lr);
  peft.after_step();
  return r;
}

}  // namespace ssmtune
