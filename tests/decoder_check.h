// The recurrent decoder against the full forward: a PEFT method that acts in training must act
// the same way in every recurrent step (prefilled blocks and single steps alike).
#pragma once

#include <vector>

#include "infer/decoder.h"
#include "test_compare.h"

namespace ssmtune::testing {

// logits: the full forward's (1, L, V) for `ids` (1, L) with the same hooks. Prefills 4 tokens
// in blocks of 3 and 1 (so state crosses a block boundary), then steps one token at a time;
// each position's logits must match. Float32 tolerances as the decoder's own parity tests: the
// same ops, in blocks of another length.
inline void require_decoder_matches_forward(const ModelConfig& cfg, const ModelWeights& w,
                                            Backend& be, const Tensor& ids, const Tensor& logits,
                                            LinearHook* hook, ScanHook* scan_hook,
                                            InputHook* input_hook = nullptr) {
  const std::int64_t L = ids.dim(1), V = cfg.vocab_size;
  Decoder dec(cfg, w, be, /*prefill_block=*/3);
  dec.set_hook(hook);
  dec.set_scan_hook(scan_hook);
  dec.set_input_hook(input_hook);
  dec.reset();
  const std::int64_t* p = ids.data<std::int64_t>();
  std::vector<Tensor> got;
  got.push_back(dec.prefill({p, p + 4}).clone());
  for (std::int64_t t = 4; t < L; ++t) got.push_back(dec.step(p[t]).clone());
  for (std::int64_t t = 3; t < L; ++t) {
    const Tensor want = logits.reshape({L, V}).rows(t, t + 1).reshape({V});
    require_close("logits at " + std::to_string(t), got[t - 3], want, 1e-5, 1e-6);
  }
}

}  // namespace ssmtune::testing
