// The CPU Mamba-2 LM against the references data_scripts/make_mamba2_fixtures.py made
// (tests/fixtures/mamba2-*; data_scripts/MAMBA2_FIXTURE.md): transformers 5.25.0's math (=
// mamba_ssm's) on 4.44.2's module, float32 and float64. mamba2-tiny: one group, chunk 4 over
// 10 steps, tied. mamba2-odd: chunk 16 over 11 steps (shorter than a chunk), a right-padded
// batch, biases on in/out_proj and none on the conv, a dt clamp that binds, three shards.
// mamba2-groups: 2 groups of 2 heads, chunk_size 1.
#include <catch2/catch.hpp>

#include "infer/decoder.h"
#include "parity_run.h"

using namespace ssmtune;
using namespace ssmtune::testing;

namespace {

const char* const kMamba2Fixtures[] = {"mamba2-tiny", "mamba2-odd", "mamba2-groups"};

// The logits at the positions the mask keeps (padded positions differ between transformers
// versions, docs/models.md "Mamba-2"; none carries a label).
void require_logits_at_tokens(const Tensor& got, const Tensor& want, const Tensor& mask,
                              double rtol, double atol) {
  if (!mask.defined()) return require_close("logits", got, want, rtol, atol);
  const std::int64_t B = want.dim(0), L = want.dim(1), V = want.dim(2);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < L; ++t)
      if (mask.data<std::int64_t>()[b * L + t])
        require_close("logits at " + std::to_string(b) + "," + std::to_string(t),
                      got.reshape({B * L, V}).rows(b * L + t, b * L + t + 1),
                      want.reshape({B * L, V}).rows(b * L + t, b * L + t + 1), rtol, atol);
}

}  // namespace

TEST_CASE("Mamba-2 LM matches the reference in float32: logits, loss, hidden states, gradients",
          "[model][parity][mamba2]") {
  for (const char* model : kMamba2Fixtures) {
    DYNAMIC_SECTION(model) {
      const auto ref = SafetensorsFile::open(fixture_dir(model) + "/reference.safetensors");
      auto r = run_parity_fixture(model, ref, DType::F32);
      const Tensor mask = ref.contains("attention_mask") ? ref.tensor("attention_mask") : Tensor();
      // MAMBA2_FIXTURE.md: the reference's own float32 run is within 8.4e-7 of float64 in the
      // logits and 4.6e-6 in a gradient (of each tensor's largest entry); ssmtune's float32
      // sums in another order (chunked GEMMs), so 1e-5 for activations and 1e-4 for gradients.
      require_logits_at_tokens(r->lm->logits(), ref.tensor("logits"), mask, 1e-5, 1e-7);
      if (!mask.defined()) {
        // Mamba2Model's output_hidden_states: the output of layer i, then norm_f's output.
        for (std::int64_t i = 0; i < r->cfg.n_layer; ++i)
          require_close("hidden_states." + std::to_string(i), r->lm->residual(i + 1),
                        ref.tensor("hidden_states." + std::to_string(i)), 1e-5, 1e-7);
        require_close("final norm", r->lm->final_norm(),
                      ref.tensor("hidden_states." + std::to_string(r->cfg.n_layer)), 1e-5, 1e-7);
      }
      const double loss = ref.tensor("loss").to(DType::F64).data<double>()[0];
      CHECK(r->loss.loss == Approx(loss).epsilon(1e-6));
      check_parity_grads(*r, ref, 1e-4, 1e-7);
    }
  }
}

TEST_CASE("Mamba-2 LM in float64 matches the reference's float64 run", "[model][parity][mamba2]") {
  for (const char* model : kMamba2Fixtures) {
    DYNAMIC_SECTION(model) {
      const auto ref = SafetensorsFile::open(fixture_dir(model) + "/reference_f64.safetensors");
      auto r = run_parity_fixture(model, ref, DType::F64);
      const Tensor mask = ref.contains("attention_mask") ? ref.tensor("attention_mask") : Tensor();
      // Both sides float64 from the same weights: only the summation order differs.
      require_logits_at_tokens(r->lm->logits(), ref.tensor("logits"), mask, 1e-11, 1e-14);
      const double loss = ref.tensor("loss").to(DType::F64).data<double>()[0];
      CHECK(r->loss.loss == Approx(loss).epsilon(1e-12));
      check_parity_grads(*r, ref, 1e-10, 1e-14);
    }
  }
}

TEST_CASE("Mamba-2 greedy decoding with caches equals the reference's generate token for token",
          "[model][parity][mamba2][generate]") {
  const auto gen = SafetensorsFile::open(fixture_dir("mamba2-odd") + "/generation.safetensors");
  const ModelConfig cfg = load_model_config(fixture_dir("mamba2-odd"));
  const ModelWeights w = load_model_weights(fixture_dir("mamba2-odd"), cfg, DType::F32);
  auto be = make_cpu_backend();
  const Tensor prompt_ids = gen.tensor("prompt_ids"), sequences = gen.tensor("sequences");
  const Tensor step_logits = gen.tensor("step_logits");
  const std::int64_t P = prompt_ids.dim(1), n_new = step_logits.dim(1), V = cfg.vocab_size;
  // Prefill in blocks of 3 so the conv and SSD states cross a block boundary.
  Decoder dec(cfg, w, *be, /*prefill_block=*/3);
  dec.reset();
  const std::int64_t* prompt = prompt_ids.data<std::int64_t>();
  Tensor logits = dec.prefill({prompt, prompt + P}).clone();
  for (std::int64_t s = 0; s < n_new; ++s) {
    const Tensor want = step_logits.reshape({n_new, V}).rows(s, s + 1).reshape({V});
    require_close("step " + std::to_string(s), logits, want, 1e-5, 1e-6);
    std::int64_t best = 0;
    for (std::int64_t v = 1; v < V; ++v)
      if (logits.data<float>()[v] > logits.data<float>()[best]) best = v;
    REQUIRE(best == sequences.data<std::int64_t>()[P + s]);
    if (s + 1 < n_new) logits = dec.step(best).clone();
  }
}
