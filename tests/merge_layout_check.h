// What tests/merge_layout_test.cpp checks merged model directories with: base model directories
// made from the committed fixtures (mamba-tiny, mamba-odd: data_scripts/make_fixtures.py;
// jamba-tiny: data_scripts/make_jamba_fixtures.py), converted to BF16 and split into shards with
// the project's safetensors writer; random LoRA adapters; the float64 merge computed from an
// adapter's files; and the checks of a merged directory's layout, values and logits.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io/safetensors_checkpoint.h"
#include "io_test_util.h"
#include "model/causal_lm.h"
#include "model/model_dir_as_base.h"
#include "peft/lora_adapter_io.h"
#include "peft/merge.h"
#include "peft_method_check.h"
#include "test_compare.h"

namespace ssmtune::testing::merge_check {

namespace fs = std::filesystem;
using method_check::kFixtures;
using method_check::logits_of;
using nlohmann::json;
using test::TempDir;

inline DType all_bf16(const std::string&) { return DType::BF16; }

// BF16 except the SSM parameters A_log and D, kept F32 (as mamba_ssm keeps A_log): a base whose
// tensors do not all share one dtype.
inline DType bf16_but_ssm_f32(const std::string& name) {
  return name.ends_with(".A_log") || name.ends_with(".D") ? DType::F32 : DType::BF16;
}

// A base model directory made from the fixture `fixture`: its config.json (torch_dtype
// "bfloat16") and generation_config.json, each tensor converted to dtype_of(name) (rounded to
// nearest even) and written as model.safetensors (n_shards = 0) or as n_shards files
// model-0000k-of-0000n.safetensors, each a run of consecutive tensors in name order, with a
// model.safetensors.index.json as transformers writes it.
inline void make_base(const std::string& fixture, const fs::path& dir, int n_shards,
                      const std::function<DType(const std::string&)>& dtype_of) {
  const fs::path src = kFixtures / fixture;
  fs::create_directories(dir);
  json config = read_json_file(src / "config.json");
  config["torch_dtype"] = "bfloat16";
  std::ofstream(dir / "config.json") << config.dump(2);
  fs::copy_file(src / "generation_config.json", dir / "generation_config.json");
  const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(src);
  const std::vector<std::string> names = ckpt.names();
  if (n_shards == 0) {
    std::vector<NamedTensor> tensors;
    for (const std::string& n : names) tensors.push_back({n, ckpt.tensor(n).to(dtype_of(n))});
    write_safetensors(dir / "model.safetensors", tensors);
    return;
  }
  json weight_map = json::object();
  std::uint64_t total_size = 0;
  for (int k = 0; k < n_shards; ++k) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
    std::vector<NamedTensor> tensors;
    for (std::size_t i = names.size() * k / n_shards; i < names.size() * (k + 1) / n_shards; ++i) {
      tensors.push_back({names[i], ckpt.tensor(names[i]).to(dtype_of(names[i]))});
      weight_map[names[i]] = file;
      total_size += tensors.back().tensor.nbytes();
    }
    write_safetensors(dir / file, tensors);
  }
  const json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
}

// A scratch directory holding a base made by make_base; the paths a test writes to beside it.
struct Scratch {
  TempDir tmp;
  fs::path base = tmp / "base", adapter = tmp / "adapter", out = tmp / "merged";
  Scratch(const std::string& fixture, int n_shards,
          const std::function<DType(const std::string&)>& dtype_of) {
    make_base(fixture, base, n_shards, dtype_of);
  }
};

// A LoRA adapter for the model in base_dir with `lc`'s terms, A and B drawn at random (and a
// DoRA magnitude off ||W||_row) so that every term changes its weight; in PEFT's layout.
inline void write_random_lora(const fs::path& dir, const fs::path& base_dir, const LoraConfig& lc,
                              std::uint64_t seed) {
  const ModelConfig cfg = load_model_config(base_dir.string());
  const ModelWeights w = load_model_weights(base_dir.string(), cfg, DType::F32);
  std::unique_ptr<Backend> be = make_cpu_backend();
  LoraModel lora(cfg, lc, DType::F32, *be);
  lora.set_base_weights(&w);
  lora.init(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  for (LoraTerm& t : lora.terms()) {
    for (Tensor* x : {&t.A, &t.B})
      for (std::int64_t i = 0; i < x->numel(); ++i) x->data<float>()[i] += normal(rng);
    if (t.dora())
      for (std::int64_t i = 0; i < t.magnitude.numel(); ++i)
        t.magnitude.data<float>()[i] *= 1 + normal(rng);
  }
  fs::create_directories(dir);
  write_lora_adapter(dir, lora, base_dir.string());
}

// `v` rounded to nearest even in `dtype` (F32, BF16 or F16), through float: the float step
// errs by 2^-24 relative at most, far inside the slack round_to is used with below.
inline double round_to(DType dtype, double v) {
  const float f = float(v);
  if (dtype == DType::BF16) return bf16_to_f32(f32_to_bf16(f));
  if (dtype == DType::F16) return f16_to_f32(f32_to_f16(f));
  return f;
}

// A merged weight computed from the adapter's files in float64, and a bound on how far the
// float32 merge may be from it.
struct Expected {
  Tensor value;  // F64, the weight's shape
  Tensor slack;  // F64, per element
};

// Every weight the PEFT-layout LoRA adapter in `adapter` changes, merged into the base `base`
// in float64 from the adapter's own files (not ssmtune's reader): W + s B A; DoRA: m_i (W + s B
// A)_i / ||(W + s B A)_i||; the embedding: E + s (B A)^T. s = lora_alpha / r (rsLoRA: / sqrt r).
// Slack: float32's merge of r products errs by < (r + 2) 2^-24 of the sum of |terms|: 2^-20 of
// it for r <= 8; DoRA adds a row norm over <= 64 inputs, a division and a product, 2^-16 of
// |W'|. Both are far below bf16's half ulp (2^-9 relative), so nearly every element is pinned
// to one rounded value.
inline std::map<std::string, Expected> expected_merge(const fs::path& base,
                                                      const fs::path& adapter) {
  const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(base);
  const SafetensorsFile st = SafetensorsFile::open(adapter / "adapter_model.safetensors");
  const json cfg = read_json_file(adapter / "adapter_config.json");
  REQUIRE(cfg["rank_pattern"].empty());  // one scale for every module
  const double r = cfg["r"], alpha = cfg["lora_alpha"];
  const double s = cfg["use_rslora"].get<bool>() ? alpha / std::sqrt(r) : alpha / r;
  const std::string prefix = "base_model.model.";
  std::map<std::string, Expected> out;
  for (const SafetensorsEntry& e : st.entries()) {
    const bool embedding = e.name.ends_with(".lora_embedding_A");
    const std::string a_suffix = embedding ? ".lora_embedding_A" : ".lora_A.weight";
    if (!e.name.ends_with(a_suffix)) continue;
    const std::string module =
        e.name.substr(prefix.size(), e.name.size() - prefix.size() - a_suffix.size());
    const Tensor A = st.tensor(e.name).to(DType::F64);
    const Tensor B =
        st.tensor(prefix + module + (embedding ? ".lora_embedding_B" : ".lora_B.weight"))
            .to(DType::F64);
    Expected x{ckpt.tensor(module + ".weight").to(DType::F64)};
    x.slack = Tensor::zeros(x.value.shape(), DType::F64);
    const std::int64_t rows = x.value.dim(0), cols = x.value.dim(1), rank = A.dim(0);
    double* w = x.value.data<double>();
    double* slack = x.slack.data<double>();
    const double *a = A.data<double>(), *b = B.data<double>();
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < cols; ++j) {
        double sum = 0, size = std::fabs(w[i * cols + j]);
        for (std::int64_t k = 0; k < rank; ++k) {
          // Linear: B (rows, r) A (r, cols). Embedding (V, D): B (D, r), A (r, V), transposed.
          const double term =
              embedding ? b[j * rank + k] * a[k * rows + i] : b[i * rank + k] * a[k * cols + j];
          sum += s * term;
          size += std::fabs(s * term);
        }
        w[i * cols + j] += sum;
        slack[i * cols + j] = std::ldexp(size, -20);
      }
    const std::string magnitude = prefix + module + ".lora_magnitude_vector";
    if (st.contains(magnitude)) {
      const Tensor m = st.tensor(magnitude).to(DType::F64);
      for (std::int64_t i = 0; i < rows; ++i) {
        double norm = 0;
        for (std::int64_t j = 0; j < cols; ++j) norm += w[i * cols + j] * w[i * cols + j];
        const double f = m.data<double>()[i] / std::sqrt(norm);
        for (std::int64_t j = 0; j < cols; ++j) {
          w[i * cols + j] *= f;
          slack[i * cols + j] = std::ldexp(std::fabs(w[i * cols + j]), -16) + slack[i * cols + j];
        }
      }
    }
    out.emplace(module + ".weight", std::move(x));
  }
  return out;
}

inline std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// The merged directory `out` has `base`'s layout: the same files; every tensor of the base in
// the same file with the same dtype and shape (`added`: tensors the merge created, each in the
// file of `added`'s value, the base tensor whose file and dtype it takes); each file's metadata
// kept; an index (when sharded) that names every tensor's file and the right total_size.
inline void check_layout(const fs::path& base, const fs::path& out,
                         const std::map<std::string, std::string>& added = {}) {
  CHECK(files_in(out) == files_in(base));
  const SafetensorsCheckpoint b = SafetensorsCheckpoint::open(base);
  const SafetensorsCheckpoint o = SafetensorsCheckpoint::open(out);  // checks index vs shards
  REQUIRE(o.sharded() == b.sharded());
  std::set<std::string> expected_names;
  for (const std::string& n : b.names()) expected_names.insert(n);
  for (const auto& [n, beside] : added) expected_names.insert(n);
  const std::vector<std::string> names = o.names();
  CHECK(std::set<std::string>(names.begin(), names.end()) == expected_names);
  std::uint64_t total_size = 0;
  for (const std::string& n : names) {
    INFO(n);
    const std::string like = added.count(n) ? added.at(n) : n;
    CHECK(o.file_of(n).path().filename() == b.file_of(like).path().filename());
    CHECK(o.entry(n).dtype == b.entry(like).dtype);
    if (!added.count(n)) CHECK(o.entry(n).shape == b.entry(n).shape);
    total_size += o.entry(n).n_bytes();
  }
  for (std::size_t i = 0; i < o.files().size(); ++i) {
    CHECK(o.files()[i].metadata() == b.files()[i].metadata());
    CHECK(o.files()[i].metadata().at("format") == "pt");  // transformers refuses files without
  }
  if (o.sharded()) {
    const json index = read_json_file(out / "model.safetensors.index.json");
    CHECK(index["metadata"]["total_size"].get<std::uint64_t>() == total_size);
    CHECK(index["weight_map"].size() == names.size());
  }
}

// Base tensors not in `changed` are bit-identical in `out`. Each tensor in `changed` is, bit for
// bit, the float32 merge `merged` (what eval runs) rounded once, to nearest even, to its stored
// dtype; and lies within the rounding of [exact - slack, exact + slack] of the float64 merge
// computed from the adapter's files, which pins it to one value wherever that interval does
// not straddle a rounding boundary (required of 99% of the elements).
inline void check_values(const fs::path& base, const fs::path& out, const LoadedModel& merged,
                         const std::map<std::string, Expected>& changed) {
  const SafetensorsCheckpoint b = SafetensorsCheckpoint::open(base);
  const SafetensorsCheckpoint o = SafetensorsCheckpoint::open(out);
  ModelWeights handles = merged.weights;
  ModelConfig cfg = merged.cfg;
  std::map<std::string, Tensor> f32;
  for (const ParamSlot& s : param_slots(cfg, handles)) f32[s.name] = *s.tensor;
  for (const std::string& n : b.names())
    if (!changed.count(n)) {
      INFO(n << " is unchanged");
      CHECK(testing::same_bits(o.tensor(n), b.tensor(n)));
    }
  REQUIRE(!changed.empty());
  std::int64_t pinned = 0, elements = 0;
  for (const auto& [n, x] : changed) {
    INFO(n << " is merged");
    const Tensor got = o.tensor(n);
    const DType dtype = got.dtype();
    REQUIRE(f32.at(n).dtype() == DType::F32);
    const Tensor rounded = f32.at(n).to(dtype);  // float -> store: f32_to_bf16 for BF16
    CHECK(testing::same_bits(got, rounded));
    CHECK(!testing::same_bits(got, b.tensor(n)));
    const Tensor g = got.to(DType::F64);
    std::int64_t outside = 0;
    for (std::int64_t i = 0; i < g.numel(); ++i) {
      const double v = x.value.data<double>()[i], slack = x.slack.data<double>()[i];
      const double lo = round_to(dtype, v - slack), hi = round_to(dtype, v + slack);
      const double y = g.data<double>()[i];
      outside += !(lo <= y && y <= hi);
      pinned += lo == hi;
    }
    elements += g.numel();
    CHECK(outside == 0);
  }
  CHECK(pinned >= elements * 99 / 100);
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(DType::F64), y = b.to(DType::F64);
  double d = 0;
  for (std::int64_t i = 0; i < x.numel(); ++i)
    d = std::max(d, std::fabs(x.data<double>()[i] - y.data<double>()[i]));
  return d;
}

// max |a - b| relative to max |b|.
inline double rel_diff(const Tensor& a, const Tensor& b) {
  const Tensor y = b.to(DType::F64);
  double largest = 0;
  for (std::int64_t i = 0; i < y.numel(); ++i)
    largest = std::max(largest, std::fabs(y.data<double>()[i]));
  return max_abs_diff(a, b) / largest;
}

inline Tensor reference_ids(const std::string& fixture) {
  return SafetensorsFile::open(kFixtures / fixture / "reference.safetensors").tensor("input_ids");
}

inline Tensor plain_logits(const fs::path& dir, Backend& be, const Tensor& ids) {
  const ModelConfig cfg = load_model_config(dir.string());
  return logits_of(cfg, load_model_weights(dir.string(), cfg), be, ids, nullptr);
}

// The tolerance for a merged model's logits against the adapter model's (float32), relative to
// the largest logit. Merging rounds each merged weight once to bf16, a relative change of at
// most 2^-9 per weight; how far such a rounding moves the logits depends on the model (the tiny
// Jamba is far more sensitive than the tiny Mamba), so it is measured on the same kind of
// change: the fixture in float32 against `base`, its weights rounded to bf16 (mamba-tiny:
// 0.27% of the largest logit; jamba-tiny: 3.0%; merging moved them by 0.06% to 0.2% and by
// 1.9%). The merged model may be about as far from the adapter model: twice that.
inline double bf16_logits_rel(const std::string& fixture, const fs::path& base, Backend& be) {
  const Tensor ids = reference_ids(fixture);
  const double rounding =
      rel_diff(plain_logits(base, be, ids), plain_logits(kFixtures / fixture, be, ids));
  REQUIRE(rounding > 0);
  return 2 * rounding;
}

// The merged model, loaded back from `out` as ssmtune loads any model, computes the adapter
// model's logits (the base with the LoRA adapter's hook, float32) within bf16_logits_rel. The
// adapter must move the logits by more than that, or the check would be empty.
inline void check_logits(const fs::path& base, const fs::path& adapter, const fs::path& out,
                         const std::string& fixture) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  const Tensor ids = reference_ids(fixture);
  const ModelConfig cfg = load_model_config(base.string());
  const ModelWeights w = load_model_weights(base.string(), cfg, DType::F32);
  const auto lora = read_lora_adapter(adapter, cfg, DType::F32, *be);
  lora->set_base_weights(&w);
  const Tensor with_adapter = logits_of(cfg, w, *be, ids, lora.get());
  const double rel = bf16_logits_rel(fixture, base, *be);
  testing::require_close("merged logits", plain_logits(out, *be, ids), with_adapter, rel, 0);
  CHECK(rel_diff(logits_of(cfg, w, *be, ids, nullptr), with_adapter) > 2 * rel);
}

// What merge-adapter runs (apps/ssmtune/cmd_merge_adapter.cpp): the float32 merge, written in
// the base's layout with its generation_config.json.
inline LoadedModel merge(const fs::path& base, const fs::path& adapter, const fs::path& out) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  LoadedModel m = load_model_with_adapter(base.string(), adapter.string(), *be);
  const WrittenModelDir written = write_model_dir_as_base(
      out.string(), base.string(), m.cfg, m.weights, false, {base / "generation_config.json"});
  CHECK(written.tensors >= written.changed);
  CHECK(written.changed > 0);
  return m;
}

inline json config_of(const fs::path& dir) { return read_json_file(dir / "config.json"); }

}  // namespace ssmtune::testing::merge_check
