// DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"; docs/methods.md section 1) on one
// LoRA term over a whole nn.Linear W (out, in), as PEFT 0.12's DoraLinearLayer computes it:
//   W' = f (W + s B A),  f = m / n,  n = ||W + s B A||_row (out),  m (out) trained,
// with n a constant in backward (PEFT detaches it, after the paper's section 4.3). The model has
// already added x W^T + b, so the term adds, with xd = dropout(x) (x when no dropout),
//   y += xd D^T,   D = f (W + s B A) - W   (out, in)
// which is PEFT's (f - 1) F.linear(xd, W) + f s lora_B(lora_A(xd)): the bias stays unscaled and,
// as in PEFT, dropout reaches the (f - 1) W part too. Forming D costs one weight-sized product
// (r x in into out x in) and lets the whole term be one product with the tokens, like the base.
// Backward, dY (tokens, out), U = xd A^T (tokens, r) saved by forward, n constant:
//   dm += rowsum((dY^T xd) * (W + s B A)) / n,   dB += s f * (dY^T U),
//   dU += s dY (f * B),   dxd += dY D           (dA += dU^T xd and dropout' are LoRA's).
// Every "f *" scales rows (the backend's row ops, so nothing leaves a GPU). The weight-sized pieces (W + s B A, D) are recomputed in backward
// from the same A, B and the saved n instead of being kept: they are as large as the weight.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "model/linear_hook.h"
#include "peft/lora.h"

namespace ssmtune {

// W + s B A of term t on its module's weight W (out, in): the direction before normalising,
// (out, in), and its row norms n (out), accumulated in double.
struct DoraDirection {
  Tensor M, norm;
};
DoraDirection dora_direction(Backend& be, const LoraTerm& t, const Tensor& W);

// f = m / n: (out), the factor each output row is scaled by.
Tensor dora_factor(Backend& be, const Tensor& magnitude, const Tensor& norm);

// x_in: (tokens, in) the term's input xd; out: the projection's parts (their row0 index W's rows).
// Adds xd D^T to every part and saves n in t.norm.
void dora_forward(Backend& be, LoraTerm& t, const Tensor& W, const Tensor& x_in,
                  std::vector<LinearPart>& out);

// x_in: as in forward; dout: the parts' gradients dY. Accumulates t.dB and t.dmagnitude, adds
// s dY (f * B) to dU: (tokens, r) and dY D to dxd: (tokens, in).
void dora_backward(Backend& be, LoraTerm& t, const Tensor& W, const Tensor& x_in,
                   const std::vector<LinearPart>& dout, Tensor& dU, Tensor& dxd);

// W: (out, in) = f (W + s B A), PEFT's merge of a DoRA layer (n from the current A, B).
void dora_merge(Backend& be, const LoraTerm& t, Tensor& W);

}  // namespace ssmtune
