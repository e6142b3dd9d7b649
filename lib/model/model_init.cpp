#include "model/model_init.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/jamba_init.h"
#include "model/mamba2_init.h"
#include "model/mamba_init.h"

namespace ssmtune {

namespace {

// p: n values, `last` the length of their last dimension (kLogA counts along it: d_state;
// Mamba-2's heads).
void fill(const ModelConfig& c, const InitRule& r, Rng& rng, float* p, std::int64_t n,
          std::int64_t last) {
  switch (r.kind) {
    case InitRule::kNormal:
      for (std::int64_t i = 0; i < n; ++i) p[i] = float(r.scale * rng.normal());
      break;
    case InitRule::kUniform:
      for (std::int64_t i = 0; i < n; ++i) p[i] = float(rng.uniform(-r.scale, r.scale));
      break;
    case InitRule::kConstant:
      for (std::int64_t i = 0; i < n; ++i) p[i] = float(r.scale);
      break;
    case InitRule::kLogA: {
      for (std::int64_t i = 0; i < n; ++i) p[i] = float(std::log(double(i % last + 1)));
      break;
    }
    case InitRule::kDtBias: {
      const double log_min = std::log(c.time_step_min), log_max = std::log(c.time_step_max);
      for (std::int64_t i = 0; i < n; ++i) {
        const double dt =
            std::max(std::exp(log_min + rng.uniform() * (log_max - log_min)), c.time_step_floor);
        p[i] = float(dt + std::log(-std::expm1(-dt)));
      }
      break;
    }
  }
}

std::int64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? std::int64_t(pages) * page : INT64_MAX;
}

std::string gib(std::int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", double(bytes) / double(1ll << 30));
  return buf;
}

}  // namespace

ModelWeights draw_model_weights(const ModelConfig& c, std::uint64_t seed, std::int64_t param_count,
                                const std::function<InitRule(const std::string& name)>& rule_for,
                                DType held) {
  // The parse limits bound each size but not their product; check before allocating.
  const std::int64_t bytes = param_count * std::int64_t(sizeof(float));
  if (bytes > physical_memory_bytes())
    throw Error("a model of " + std::to_string(param_count) + " parameters needs " + gib(bytes) +
                " in F32, more than this machine's " + gib(physical_memory_bytes()) + " of memory");
  ModelWeights w = zeros_like_params(c, held);
  for_each_param(c, w, [&](const std::string& name, Tensor& t) {
    Rng rng = Rng::for_stream(seed, stream_id(name.c_str()));
    const std::int64_t n = t.numel(), last = t.shape().back();
    if (held == DType::F32) return fill(c, rule_for(name), rng, t.data<float>(), n, last);
    // Drawn in F32 scratch and rounded into t in place: no F32 copy of the model, and no
    // tensor-sized blocks left in the host-block cache (core/host_blocks.h).
    std::vector<float> drawn(static_cast<std::size_t>(n));
    fill(c, rule_for(name), rng, drawn.data(), n, last);
    auto* bits = static_cast<std::uint16_t*>(t.raw());
    for (std::int64_t i = 0; i < n; ++i) bits[i] = f32_to_bf16(drawn[std::size_t(i)]);
  });
  return w;  // zeros_like_params already made a tied lm_head share the embedding
}

ModelWeights init_model_weights(const ModelConfig& c, std::uint64_t seed, DType held) {
  if (c.is_mamba2()) return init_mamba2_weights(c, seed, held);
  return c.is_jamba() ? init_jamba_weights(c, seed, held) : init_mamba_weights(c, seed, held);
}

std::int64_t model_param_count(const ModelConfig& c) {
  if (c.is_mamba2()) return mamba2_param_count(c);
  return c.is_jamba() ? jamba_param_count(c) : mamba_param_count(c);
}

}  // namespace ssmtune
