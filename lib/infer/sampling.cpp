#include "infer/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace ssmtune {

namespace {

std::vector<double> to_doubles(const Tensor& logits) {
  check(logits.defined() && logits.ndim() == 1 && logits.numel() > 0,
        "sample_token: logits must be a non-empty vector, got " +
            (logits.defined() ? shape_str(logits.shape()) : std::string("none")));
  const Tensor d = logits.to(DType::F64);
  const double* p = d.data<double>();
  std::vector<double> v(p, p + d.numel());
  for (std::size_t i = 0; i < v.size(); ++i)
    if (std::isnan(v[i]) || v[i] == std::numeric_limits<double>::infinity())
      throw Error("sample_token: logit " + std::to_string(i) + " is " + std::to_string(v[i]) +
                  " (the model produced a non-finite value)");
  return v;
}

}  // namespace

void check_sampling_options(const SamplingOptions& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    throw UsageError("sampling: temperature must be a finite number >= 0 (0 = greedy), got " +
                     std::to_string(o.temperature));
  if (o.top_k < 0)
    throw UsageError("sampling: top_k must be >= 0 (0 = off), got " + std::to_string(o.top_k));
  if (!(o.top_p > 0 && o.top_p <= 1))
    throw UsageError("sampling: top_p must be in (0, 1] (1 = off), got " + std::to_string(o.top_p));
  if (o.max_new_tokens < 0)
    throw UsageError("sampling: max_new_tokens must be >= 0, got " +
                     std::to_string(o.max_new_tokens));
  if (std::any_of(o.stop.begin(), o.stop.end(), [](const std::string& s) { return s.empty(); }))
    throw UsageError("sampling: a stop string is empty");
}

std::int64_t sample_token(const Tensor& logits, const SamplingOptions& opts, Rng& rng) {
  check_sampling_options(opts);
  const std::vector<double> z = to_doubles(logits);
  const std::int64_t V = std::int64_t(z.size());
  const std::int64_t best = std::max_element(z.begin(), z.end()) - z.begin();  // first max
  if (z[best] == -std::numeric_limits<double>::infinity())
    throw Error("sample_token: every logit is -inf");
  if (opts.temperature == 0) return best;

  // Unnormalised softmax(z / T), shifted by the max so the largest weight is 1.
  std::vector<double> p(V);
  for (std::int64_t i = 0; i < V; ++i) p[i] = std::exp((z[i] - z[best]) / opts.temperature);

  // Candidates, most likely first (ties: lower id first) where a filter needs the order.
  std::vector<std::int64_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  const auto more_likely = [&](std::int64_t a, std::int64_t b) {
    return p[a] != p[b] ? p[a] > p[b] : a < b;
  };
  std::int64_t n_keep = V;
  if (opts.top_k > 0 && opts.top_k < V) {
    n_keep = opts.top_k;
    std::nth_element(ids.begin(), ids.begin() + n_keep, ids.end(), more_likely);
    std::sort(ids.begin(), ids.begin() + n_keep, more_likely);
  } else if (opts.top_p < 1) {
    std::sort(ids.begin(), ids.end(), more_likely);
  }
  double mass = 0;
  for (std::int64_t r = 0; r < n_keep; ++r) mass += p[ids[r]];
  if (opts.top_p < 1) {
    // Nucleus over the top-k-renormalised distribution: the shortest prefix reaching top_p.
    const double target = opts.top_p * mass;
    double cum = 0;
    std::int64_t r = 0;
    while (r < n_keep) {
      cum += p[ids[r++]];
      if (cum >= target) break;
    }
    n_keep = r;
    mass = cum;
  }

  // Inverse-CDF draw over the kept candidates in their order.
  const double u = rng.uniform() * mass;
  double cum = 0;
  for (std::int64_t r = 0; r < n_keep; ++r) {
    cum += p[ids[r]];
    if (u < cum) return ids[r];
  }
  // Rounding can leave u just above the last partial sum: the last candidate with weight.
  for (std::int64_t r = n_keep - 1; r >= 0; --r)
    if (p[ids[r]] > 0) return ids[r];
  return best;
}

}  // namespace ssmtune
