// Helpers for the ssmtune init tests (mamba_init_test.cpp, jamba_init_test.cpp): tensors by HF
// name, their sample moments, and checks of a tensor against the distribution it was drawn from.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/causal_lm.h"
#include "model/model_weights.h"

namespace ssmtune::test {

inline std::map<std::string, Tensor> by_name(const ModelConfig& c, ModelWeights& w) {
  std::map<std::string, Tensor> m;
  for_each_param(c, w, [&](const std::string& name, Tensor& t) { m[name] = t; });
  return m;
}

inline std::vector<double> values(const Tensor& t) {
  const Tensor d = t.to(DType::F64);
  return std::vector<double>(d.data<double>(), d.data<double>() + d.numel());
}

struct Moments {
  double mean = 0, std = 0, max_abs = 0;
};

inline Moments moments(const std::vector<double>& v) {
  Moments m;
  for (double x : v) m.mean += x, m.max_abs = std::max(m.max_abs, std::fabs(x));
  m.mean /= double(v.size());
  for (double x : v) m.std += (x - m.mean) * (x - m.mean);
  m.std = std::sqrt(m.std / double(v.size()));
  return m;
}

// N(0, sigma), with tolerances from the sample size n: mean 0 within 6 standard errors
// (sigma / sqrt(n)); std within 7 standard errors (a normal sample's std has relative standard
// error 1 / sqrt(2n): 3.9% at n = 16000, 31% at n = 256, still less than the 44% by which
// PyTorch's kaiming-uniform default U(+-1/sqrt(64)) misses sigma = 0.05); and, for n >= 4096,
// normal rather than uniform: 68.27% within one sigma (a uniform of that std gives 57.7%),
// within 6 binomial standard errors (<= 0.044).
inline void check_normal(const std::string& name, const std::vector<double>& v, double sigma) {
  const double n = double(v.size());
  INFO(name << ": N(0, " << sigma << "), " << v.size() << " values");
  const Moments m = moments(v);
  CHECK(std::fabs(m.mean) <= 6 * sigma / std::sqrt(n));
  CHECK(std::fabs(m.std / sigma - 1) <= 7 / std::sqrt(2 * n));
  if (n >= 4096) {
    const double within =
        double(std::count_if(v.begin(), v.end(), [&](double x) { return std::fabs(x) < sigma; }));
    CHECK(std::fabs(within / n - 0.6827) <= 6 * std::sqrt(0.6827 * 0.3173 / n));
  }
}

inline void check_normal(const std::string& name, const Tensor& t, double sigma) {
  check_normal(name, values(t), sigma);
}

inline void check_constant(const std::string& name, const Tensor& t, float value) {
  INFO(name << " == " << value);
  const float* p = t.data<float>();
  CHECK(std::all_of(p, p + t.numel(), [&](float x) { return x == value; }));
}

inline bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The names in `dir`, sorted.
inline std::vector<std::string> entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Every tensor of `a` (weights of config `c`) equals the tensor of the same name in `b`
// (weights of `cb`, which may have more layers), byte for byte.
inline void check_tensors_kept(const ModelConfig& c, ModelWeights& a, const ModelConfig& cb,
                               ModelWeights& b) {
  const auto ta = by_name(c, a), tb = by_name(cb, b);
  for (const auto& [name, t] : ta) {
    INFO(name);
    REQUIRE(tb.count(name) == 1);
    CHECK(same_bytes(t, tb.at(name)));
  }
}

// `a` and `b`, both weights of config `c`, hold the same tensors, byte for byte.
inline void check_same_tensors(const ModelConfig& c, ModelWeights& a, ModelWeights& b) {
  REQUIRE(by_name(c, a).size() == by_name(c, b).size());
  check_tensors_kept(c, a, c, b);
}

// init(c, seed) twice gives the same bytes; another seed changes exactly the tensors whose names
// `is_random` accepts.
inline void check_seed_determinism(
    const ModelConfig& c,
    const std::function<ModelWeights(const ModelConfig&, std::uint64_t)>& init,
    const std::function<bool(const std::string&)>& is_random) {
  ModelWeights a = init(c, 42), b = init(c, 42), other = init(c, 43);
  check_same_tensors(c, a, b);
  const auto ta = by_name(c, a), to = by_name(c, other);
  for (const auto& [name, t] : ta) {
    INFO(name);
    CHECK(same_bytes(t, to.at(name)) == !is_random(name));
  }
}

// Loads the model directory `dir`, checks that it holds config `c` and weights `w` (byte for
// byte), and returns the loaded weights.
inline ModelWeights check_reloads(const std::filesystem::path& dir, const ModelConfig& c,
                                  ModelWeights& w) {
  const ModelConfig loaded = load_model_config(dir.string());
  CHECK(model_config_to_json(loaded) == model_config_to_json(c));
  ModelWeights lw = load_model_weights(dir.string(), loaded);
  check_same_tensors(c, w, lw);
  return lw;
}

// A CPU forward pass over a (2, 7) batch of ids (i * stride) % V: checks the logits are
// (2, 7, V), finite and not all equal; returns the loss on the shifted ids.
inline LmLoss forward_loss(const ModelConfig& c, const ModelWeights& w, std::int64_t stride) {
  auto be = make_cpu_backend();
  CausalLM lm(c, w, *be);
  Tensor ids = Tensor::empty({2, 7}, DType::I64);
  for (std::int64_t i = 0; i < ids.numel(); ++i)
    ids.data<std::int64_t>()[i] = (i * stride) % c.vocab_size;
  lm.forward(ids);
  const Tensor& logits = lm.logits();
  REQUIRE(logits.shape() == Shape{2, 7, c.vocab_size});
  const float* p = logits.data<float>();
  CHECK(std::all_of(p, p + logits.numel(), [](float x) { return std::isfinite(x); }));
  CHECK(moments(values(logits)).std > 0);
  return lm.loss(shift_labels(ids));
}

}  // namespace ssmtune::test
