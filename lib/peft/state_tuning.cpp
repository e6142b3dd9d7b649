#include "peft/state_tuning.h"

#include <string>

namespace ssmtune {

StateTuning::StateTuning(const MambaConfig& cfg, bool initial_state, StateOffset offset,
                         DType dtype, Backend& be)
    : be_(be), kind_(offset) {
  const std::int64_t E = cfg.d_inner, N = cfg.d_state;
  for (std::int64_t i = 0; i < cfg.n_layer; ++i) {
    if (initial_state) {
      h0_.push_back(be_.zeros({E, N}, dtype));
      dh0_.push_back(be_.zeros({E, N}, dtype));
    }
    if (offset != StateOffset::None) {
      const Shape shape = offset == StateOffset::H ? Shape{E, N} : Shape{E};
      offset_.push_back(be_.zeros(shape, dtype));
      doffset_.push_back(be_.zeros(shape, dtype));
    }
  }
}

void StateTuning::append_trainables(std::vector<TrainableParam>& out) {
  for (std::size_t i = 0; i < h0_.size(); ++i)
    out.push_back({"initial_state.layers." + std::to_string(i) + ".h0", h0_[i], dh0_[i]});
  const char* kind = kind_ == StateOffset::H ? ".h" : ".y";
  for (std::size_t i = 0; i < offset_.size(); ++i)
    out.push_back({"state_offset.layers." + std::to_string(i) + kind, offset_[i], doffset_[i]});
}

Tensor StateTuning::initial_state(std::int64_t layer, std::int64_t batch) {
  if (h0_.empty()) return Tensor();
  // Every sequence of the batch starts from the same learned state.
  const Tensor& h0 = h0_.at(layer);
  Tensor out = be_.empty({batch, h0.dim(0), h0.dim(1)}, h0.dtype());
  for (std::int64_t b = 0; b < batch; ++b) {
    Tensor row = out.rows(b, b + 1).reshape(h0.shape());
    be_.copy(h0, row);
  }
  return out;
}

void StateTuning::initial_state_backward(std::int64_t layer, const Tensor& dh0) {
  if (h0_.empty()) return;
  for (std::int64_t b = 0; b < dh0.dim(0); ++b)  // the batch shares H0: gradients add
    be_.add(dh0.rows(b, b + 1).reshape(dh0_.at(layer).shape()), dh0_.at(layer));
}

void StateTuning::output_forward(std::int64_t layer, const Tensor& Cm, Tensor& y) {
  if (kind_ == StateOffset::H)
    be_.gemm(false, true, 1.0, Cm, offset_.at(layer), 1.0, y);  // y += C h'^T
  else if (kind_ == StateOffset::Y)
    be_.add_bias(y, offset_.at(layer));  // y += y'
}

void StateTuning::output_backward(std::int64_t layer, const Tensor& Cm, const Tensor& dy,
                                  Tensor& dCm) {
  if (kind_ == StateOffset::H) {
    be_.gemm(true, false, 1.0, dy, Cm, 1.0, doffset_.at(layer));   // dh' += dy^T C
    be_.gemm(false, false, 1.0, dy, offset_.at(layer), 1.0, dCm);  // dC += dy h'
  } else if (kind_ == StateOffset::Y) {
    be_.bias_backward(dy, doffset_.at(layer));  // dy' += sum over tokens
  }
}

}  // namespace ssmtune
