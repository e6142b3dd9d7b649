#include "peft/lora.h"

#include <cmath>
#include <map>

#include "core/error.h"
#include "peft/init_util.h"
#include "peft/target_names.h"

namespace ssmtune {

namespace {

struct SliceRows {
  LinearSite site;
  std::int64_t row0, rows, in, module_rows;
};

// The weight rows a target name (without its layer prefix) updates, METHODS.md 0.
std::map<std::string, SliceRows> target_table(const MambaConfig& c) {
  const std::int64_t D = c.d_model, E = c.d_inner, N = c.d_state, R = c.dt_rank;
  using S = LinearSite;
  return {
      {"in_proj", {S::InProj, 0, 2 * E, D, 2 * E}},
      {"in_proj.x", {S::InProj, 0, E, D, 2 * E}},
      {"in_proj.z", {S::InProj, E, E, D, 2 * E}},
      {"x_proj", {S::XProj, 0, R + 2 * N, E, R + 2 * N}},
      {"x_proj.dt", {S::XProj, 0, R, E, R + 2 * N}},
      {"x_proj.B", {S::XProj, R, N, E, R + 2 * N}},
      {"x_proj.C", {S::XProj, R + N, N, E, R + 2 * N}},
      {"dt_proj", {S::DtProj, 0, E, R, E}},
      {"out_proj", {S::OutProj, 0, D, E, D}},
  };
}

std::string valid_targets_text() {
  return "in_proj, in_proj.x, in_proj.z, x_proj, x_proj.dt, x_proj.B, x_proj.C, dt_proj, "
         "out_proj, embeddings (optionally prefixed by layers.I. or layers.I-J.)";
}

}  // namespace

std::vector<LoraTerm> plan_lora_terms(const MambaConfig& c, const LoraConfig& lora, DType dtype) {
  const auto table = target_table(c);
  const double scale = lora.scale > 0 ? lora.scale
                       : lora.rslora  ? lora.alpha / std::sqrt(double(lora.rank))
                                      : lora.alpha / double(lora.rank);
  std::vector<LoraTerm> terms;
  for (const std::string& original : lora.targets) {
    std::string target = original;
    std::int64_t first = 0, last = 0;
    const bool restricted =
        take_layer_range(target, c.n_layer, first, last, "peft.lora.targets", original);
    if (target == "embeddings") {
      if (restricted)
        throw UsageError("peft.lora.targets: \"" + original +
                         "\": the embedding is not part of a layer; write \"embeddings\"");
      LoraTerm t;
      t.name = "embeddings";
      t.module = "backbone.embeddings";
      t.embedding = true;
      t.rows = t.module_rows = c.d_model;
      t.in = c.vocab_size;
      t.rank = lora.rank;
      t.scale = scale;
      t.A = Tensor::zeros({c.vocab_size, lora.rank}, dtype);
      t.B = Tensor::zeros({c.d_model, lora.rank}, dtype);
      terms.push_back(std::move(t));
      continue;
    }
    const auto it = table.find(target);
    if (it == table.end())
      throw UsageError("peft.lora.targets: unknown target \"" + original +
                       "\"; valid: " + valid_targets_text());
    const SliceRows& s = it->second;
    for (std::int64_t layer = first; layer <= last; ++layer) {
      LoraTerm t;
      t.name = "layers." + std::to_string(layer) + "." + target;
      t.module = "backbone.layers." + std::to_string(layer) + ".mixer." + linear_site_name(s.site);
      t.layer = layer;
      t.site = s.site;
      t.row0 = s.row0;
      t.rows = s.rows;
      t.module_rows = s.module_rows;
      t.in = s.in;
      t.rank = lora.rank;
      t.scale = scale;
      t.A = Tensor::zeros({lora.rank, s.in}, dtype);
      t.B = Tensor::zeros({s.rows, lora.rank}, dtype);
      terms.push_back(std::move(t));
    }
  }
  // Two terms on the same rows of one module would be one LoRA written twice: refuse.
  for (std::size_t i = 0; i < terms.size(); ++i)
    for (std::size_t j = i + 1; j < terms.size(); ++j) {
      const LoraTerm &a = terms[i], &b = terms[j];
      const bool same_module = a.module == b.module;
      const bool overlap = a.row0 < b.row0 + b.rows && b.row0 < a.row0 + a.rows;
      if (same_module && overlap)
        throw UsageError("peft.lora.targets: \"" + a.name + "\" and \"" + b.name +
                         "\" both update rows of " + a.module + "; keep one of them");
    }
  return terms;
}

LoraModel::LoraModel(const MambaConfig& cfg, const LoraConfig& lora, DType dtype, Backend& be)
    : LoraModel(lora, plan_lora_terms(cfg, lora, dtype), be) {}

LoraModel::LoraModel(LoraConfig lora, std::vector<LoraTerm> terms, Backend& be)
    : config_(std::move(lora)), be_(be), terms_(std::move(terms)) {
  for (LoraTerm& t : terms_) {
    t.dA = be_.zeros(t.A.shape(), t.A.dtype());
    t.dB = be_.zeros(t.B.shape(), t.B.dtype());
  }
}

void LoraModel::init(std::uint64_t seed) {
  for (LoraTerm& t : terms_) {
    Rng rng = Rng::for_stream(seed, stream_id(("lora:" + t.name).c_str()));
    const auto fill = [](Tensor& x, auto draw) { fill_with(x, draw); };
    if (t.embedding) {  // PEFT: A = 0, B ~ N(0, 1)
      t.A.fill_zero();
      fill(t.B, [&] { return rng.normal(); });
    } else if (config_.init == "gaussian") {
      fill(t.A, [&] { return rng.normal() / double(t.rank); });
      t.B.fill_zero();
    } else {  // kaiming_uniform(a = sqrt(5)): bound = gain * sqrt(3 / fan_in) = 1 / sqrt(in)
      const double bound = 1.0 / std::sqrt(double(t.in));
      fill(t.A, [&] { return rng.uniform(-bound, bound); });
      t.B.fill_zero();
    }
  }
}

void LoraModel::set_training(bool training, Rng* dropout_rng) {
  check(!training || config_.dropout == 0 || dropout_rng,
        "LoRA dropout needs a random generator while training");
  training_ = training;
  dropout_rng_ = dropout_rng;
}

void LoraModel::append_trainables(std::vector<TrainableParam>& out) {
  for (LoraTerm& t : terms_) {
    out.push_back({"lora." + t.name + ".A", t.A, t.dA});
    out.push_back({"lora." + t.name + ".B", t.B, t.dB});
  }
}

void LoraModel::linear_forward(std::int64_t layer, LinearSite site, const Tensor& x,
                               std::vector<LinearPart>& out) {
  const std::int64_t tokens = x.dim(0);
  for (LoraTerm& t : terms_) {
    if (t.embedding || t.layer != layer || t.site != site) continue;
    const Tensor* input = &x;
    if (training_ && config_.dropout > 0) {
      t.keep_scale = dropout_keep_scale(x.shape(), x.dtype(), config_.dropout, *dropout_rng_);
      t.x_dropped = be_.empty(x.shape(), x.dtype());
      be_.mul(x, t.keep_scale, t.x_dropped);
      input = &t.x_dropped;
    } else {
      t.keep_scale = Tensor();
      t.x_dropped = Tensor();
    }
    t.U = be_.empty({tokens, t.rank}, x.dtype());
    be_.gemm(false, true, 1.0, *input, t.A, 0.0, t.U);  // U = x A^T
    for (LinearPart& p : out) {
      const std::int64_t n = p.y.dim(1);
      if (p.row0 + n <= t.row0 || p.row0 >= t.row0 + t.rows) continue;  // disjoint
      check(p.row0 >= t.row0 && p.row0 + n <= t.row0 + t.rows,
            "LoRA term " + t.name + " covers part of an output slice");
      const Tensor Bp = t.B.rows(p.row0 - t.row0, p.row0 - t.row0 + n);
      be_.gemm(false, true, t.scale, t.U, Bp, 1.0, p.y);  // y += s U B^T
    }
  }
}

void LoraModel::linear_backward(std::int64_t layer, LinearSite site, const Tensor& x,
                                const std::vector<LinearPart>& dout, Tensor& dx) {
  const std::int64_t tokens = x.dim(0);
  for (LoraTerm& t : terms_) {
    if (t.embedding || t.layer != layer || t.site != site) continue;
    check(t.U.defined() && t.U.dim(0) == tokens, "LoRA backward without its forward");
    Tensor dU = be_.zeros({tokens, t.rank}, x.dtype());
    for (const LinearPart& p : dout) {
      const std::int64_t n = p.y.dim(1);
      if (p.row0 + n <= t.row0 || p.row0 >= t.row0 + t.rows) continue;
      const std::int64_t b0 = p.row0 - t.row0;
      const Tensor Bp = t.B.rows(b0, b0 + n);
      Tensor dBp = t.dB.rows(b0, b0 + n);
      be_.gemm(true, false, t.scale, p.y, t.U, 1.0, dBp);  // dB += s dY^T U
      be_.gemm(false, false, t.scale, p.y, Bp, 1.0, dU);   // dU += s dY B
    }
    const Tensor& input = t.x_dropped.defined() ? t.x_dropped : x;
    be_.gemm(true, false, 1.0, dU, input, 1.0, t.dA);  // dA += dU^T x
    if (t.keep_scale.defined()) {
      Tensor dxd = be_.empty(x.shape(), x.dtype());
      be_.gemm(false, false, 1.0, dU, t.A, 0.0, dxd);
      be_.mul(dxd, t.keep_scale, dxd);
      be_.add(dxd, dx);
    } else {
      be_.gemm(false, false, 1.0, dU, t.A, 1.0, dx);  // dx += dU A
    }
  }
}

void LoraModel::embedding_forward(const Tensor& ids, Tensor& out) {
  for (LoraTerm& t : terms_) {
    if (!t.embedding) continue;
    t.U = be_.empty({ids.numel(), t.rank}, out.dtype());
    be_.embedding_forward(ids, t.A, t.U);                // U = A^T[ids]
    be_.gemm(false, true, t.scale, t.U, t.B, 1.0, out);  // out += s U B^T
  }
}

void LoraModel::embedding_backward(const Tensor& ids, const Tensor& dout) {
  for (LoraTerm& t : terms_) {
    if (!t.embedding) continue;
    Tensor dU = be_.empty({ids.numel(), t.rank}, dout.dtype());
    be_.gemm(false, false, t.scale, dout, t.B, 0.0, dU);   // dU = s dout B
    be_.gemm(true, false, t.scale, dout, t.U, 1.0, t.dB);  // dB += s dout^T U
    be_.embedding_backward(ids, dU, t.dA);
  }
}

void LoraModel::merge_into(MambaConfig& cfg, MambaWeights& w) const {
  for (const LoraTerm& t : terms_) {
    if (t.embedding) {
      if (cfg.tie_word_embeddings) {
        w.lm_head = w.embedding.clone();  // the head keeps the unmerged embedding
        w.embedding = w.embedding.clone();
        cfg.tie_word_embeddings = false;
      }
      be_.gemm(false, true, t.scale, t.A, t.B, 1.0, w.embedding);  // W += s (B A)^T
      continue;
    }
    MambaLayerWeights& lw = w.layers.at(t.layer);
    Tensor& W = t.site == LinearSite::InProj   ? lw.in_proj
                : t.site == LinearSite::XProj  ? lw.x_proj
                : t.site == LinearSite::DtProj ? lw.dt_proj
                                               : lw.out_proj;
    Tensor rows = W.rows(t.row0, t.row0 + t.rows);
    be_.gemm(false, false, t.scale, t.B, t.A, 1.0, rows);  // W += s B A
  }
}

}  // namespace ssmtune
