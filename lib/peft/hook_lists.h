// Several PEFT methods on one extension point of the model (LoRA beside a parallel adapter;
// state tuning beside an additional scan): the model sees one hook, which adds each method's
// terms in turn. Backward visits them in the same order; each only adds to the gradients.
#pragma once

#include <vector>

#include "core/error.h"
#include "model/linear_hook.h"
#include "model/scan_hook.h"

namespace ssmtune {

class LinearHookList final : public LinearHook {
 public:
  void add(LinearHook* h) { hooks_.push_back(h); }
  bool empty() const { return hooks_.empty(); }
  // The hook the model should get: null, the only one, or this list.
  LinearHook* get() { return hooks_.empty() ? nullptr : hooks_.size() == 1 ? hooks_[0] : this; }

  void linear_forward(const LinearSite& site, const Tensor& x,
                      std::vector<LinearPart>& out) override {
    for (LinearHook* h : hooks_) h->linear_forward(site, x, out);
  }
  void linear_backward(const LinearSite& site, const Tensor& x,
                       const std::vector<LinearPart>& dout, Tensor& dx) override {
    for (LinearHook* h : hooks_) h->linear_backward(site, x, dout, dx);
  }
  void embedding_forward(const Tensor& ids, Tensor& out) override {
    for (LinearHook* h : hooks_) h->embedding_forward(ids, out);
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout) override {
    for (LinearHook* h : hooks_) h->embedding_backward(ids, dout);
  }
  void set_recomputing(bool on) override {
    for (LinearHook* h : hooks_) h->set_recomputing(on);
  }

 private:
  std::vector<LinearHook*> hooks_;
};

// At most one of the hooks may set the initial state and at most one may carry decoding state
// (checked): the methods that do (initial-state tuning, additional scan) are one each.
class ScanHookList final : public ScanHook {
 public:
  void add(ScanHook* h) { hooks_.push_back(h); }
  bool empty() const { return hooks_.empty(); }
  ScanHook* get() { return hooks_.empty() ? nullptr : hooks_.size() == 1 ? hooks_[0] : this; }

  Tensor initial_state(std::int64_t layer, std::int64_t batch) override {
    Tensor out;
    for (ScanHook* h : hooks_) {
      Tensor t = h->initial_state(layer, batch);
      check(!(t.defined() && out.defined()), "two scan hooks set the initial state");
      if (t.defined()) out = t;
    }
    return out;
  }
  void initial_state_backward(std::int64_t layer, const Tensor& dh0) override {
    for (ScanHook* h : hooks_) h->initial_state_backward(layer, dh0);
  }
  Shape carried_state_shape(std::int64_t layer) const override {
    Shape out;
    for (const ScanHook* h : hooks_) {
      const Shape s = h->carried_state_shape(layer);
      check(s.empty() || out.empty(), "two scan hooks carry decoding state");
      if (!s.empty()) out = s;
    }
    return out;
  }
  void output_forward(std::int64_t layer, const ScanIO& in, Tensor& y, Tensor* carry) override {
    for (ScanHook* h : hooks_)
      h->output_forward(layer, in, y, h->carried_state_shape(layer).empty() ? nullptr : carry);
  }
  void output_backward(std::int64_t layer, const ScanIO& in, const Tensor& dy,
                       ScanIOGrads& grads) override {
    for (ScanHook* h : hooks_) h->output_backward(layer, in, dy, grads);
  }

 private:
  std::vector<ScanHook*> hooks_;
};

}  // namespace ssmtune
