#include "peft/lora.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/memory_budget.h"
#include "model/weight_storage.h"
#include "peft/dora.h"
#include "peft/init_util.h"
#include "peft/lora_adapter_io.h"
#include "peft/target_names.h"

namespace ssmtune {

namespace {

// What a target (without its layer prefix) names: a module ("in_proj") or a slice of one
// ("in_proj.x"). A module name matches a site whose name is it or ends in ".<name>", as PEFT's
// target_modules match module names.
struct Target {
  std::string module, slice;  // slice "" = the whole module
};

bool names_site(const std::string& module, const LinearSite& site) {
  const std::string& n = site.name;
  return n == module || (n.size() > module.size() + 1 && n.ends_with(module) &&
                         n[n.size() - module.size() - 1] == '.');
}

}  // namespace

std::string lora_target_names(const std::vector<LinearSite>& sites, bool with_slices) {
  std::vector<std::string> names;
  for (const LinearSite& s : sites) {
    std::vector<std::string> mine{s.name};
    if (with_slices)
      for (const LinearSlice& sl : s.slices) mine.push_back(s.name + "." + sl.name);
    for (const std::string& n : mine)
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  }
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

namespace {

// Splits "in_proj.x" into module and slice when some site has that slice; else the whole
// target is a module name.
Target parse_target(const std::string& target, const std::vector<LinearSite>& sites) {
  const std::size_t dot = target.rfind('.');
  if (dot != std::string::npos) {
    const Target t{target.substr(0, dot), target.substr(dot + 1)};
    for (const LinearSite& s : sites)
      if (names_site(t.module, s))
        for (const LinearSlice& sl : s.slices)
          if (sl.name == t.slice) return t;
  }
  return {target, ""};
}

}  // namespace

std::vector<LoraTerm> plan_lora_terms(const ModelConfig& c, const LoraConfig& lora, DType dtype,
                                      std::uint64_t device_free_bytes) {
  const std::vector<LinearSite> sites = linear_sites(c);
  const double scale = lora.scale > 0 ? lora.scale
                       : lora.rslora  ? lora.alpha / std::sqrt(double(lora.rank))
                                      : lora.alpha / double(lora.rank);
  std::vector<LoraTerm> terms;
  for (const std::string& original : lora.targets) {
    std::string target = original;
    std::int64_t first = 0, last = 0;
    const bool restricted =
        take_layer_range(target, c.n_layer, first, last, "peft.lora.targets", original);
    // PEFT's DoRA has one magnitude per module's output row: a slice or the embedding has no
    // such vector in its adapter layout, so they stay LoRA-only.
    const auto refuse_dora = [&](const char* what) {
      throw UsageError("peft.lora.targets: \"" + original + "\" is " + what +
                       ": DoRA (peft.lora.dora) works on whole modules only (" +
                       lora_target_names(sites, false) + "); target the module, or turn dora off");
    };
    if (target == "embeddings") {
      if (lora.dora) refuse_dora("the embedding");
      if (restricted)
        throw UsageError("peft.lora.targets: \"" + original +
                         "\": the embedding is not part of a layer; write \"embeddings\"");
      LoraTerm t;
      t.name = "embeddings";
      t.module = embedding_module(c);
      t.embedding = true;
      t.rows = t.module_rows = c.d_model;
      t.in = c.vocab_size;
      t.rank = lora.rank;
      t.scale = scale;
      terms.push_back(std::move(t));
      continue;
    }
    const Target tg = parse_target(target, sites);
    const bool known = std::any_of(sites.begin(), sites.end(), [&](const LinearSite& s) {
      return names_site(tg.module, s);
    });
    if (!known)
      throw UsageError("peft.lora.targets: unknown target \"" + original + "\"; valid: " +
                       lora_target_names(sites, true) +
                       ", embeddings (optionally prefixed by layers.I. or layers.I-J.)");
    if (lora.dora && !tg.slice.empty()) refuse_dora("a slice");
    const std::size_t before = terms.size();
    for (const LinearSite& site : sites) {
      if (site.layer < first || site.layer > last || !names_site(tg.module, site)) continue;
      std::int64_t row0 = 0, rows = site.out;
      for (const LinearSlice& sl : site.slices)
        if (sl.name == tg.slice) row0 = sl.row0, rows = sl.rows;
      LoraTerm t;
      // Unique per module (checkpoints key the optimizer state on it): an MoE layer has a
      // gate_proj per expert.
      t.name = "layers." + std::to_string(site.layer) + "." +
               (site.expert >= 0 ? "experts." + std::to_string(site.expert) + "." : "") +
               site.name + (tg.slice.empty() ? "" : "." + tg.slice);
      t.module = site.module;
      t.layer = site.layer;
      t.site = site;
      t.row0 = row0;
      t.rows = rows;
      t.module_rows = site.out;
      t.in = site.in;
      t.rank = lora.rank;
      t.scale = scale;
      terms.push_back(std::move(t));
    }
    if (terms.size() == before) {  // a layer range whose layers' kinds lack it (Jamba)
      std::string modules;
      for (std::int64_t i = first; i <= last && i < first + 4; ++i) {
        modules += (modules.empty() ? "" : ", ") + mixer_module(c, i);
        if (layer_kind(c, i).ffn != FeedForwardKind::None) modules += ", " + ffn_module(c, i);
      }
      throw UsageError("peft.lora.targets: \"" + original + "\" matches no module: no " +
                       tg.module + " in " + modules + (last >= first + 4 ? ", ..." : ""));
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
  // The sizes first, then the memory: a rank too large for this machine is refused by name.
  std::uint64_t n_params = 0;
  for (const LoraTerm& t : terms)
    n_params += std::uint64_t(t.rank) * std::uint64_t(t.in + t.rows) +
                (lora.dora ? std::uint64_t(t.rows) : 0);
  check_trainables_fit("peft.lora.rank = " + std::to_string(lora.rank) + " on " +
                           std::to_string(terms.size()) + " modules",
                       n_params, dtype_size(dtype), device_free_bytes);
  for (LoraTerm& t : terms) {
    // The embedding's A is stored transposed, (V, r), as PEFT's lora_embedding_A^T.
    t.A = t.embedding ? Tensor::zeros({t.in, t.rank}, dtype) : Tensor::zeros({t.rank, t.in}, dtype);
    t.B = Tensor::zeros({t.rows, t.rank}, dtype);
    if (lora.dora) t.magnitude = Tensor::zeros({t.rows}, dtype);
  }
  return terms;
}

LoraModel::LoraModel(const ModelConfig& cfg, const LoraConfig& lora, DType dtype, Backend& be)
    : LoraModel(cfg, lora, plan_lora_terms(cfg, lora, dtype, be.free_device_bytes()), be) {}

LoraModel::LoraModel(const ModelConfig& cfg, LoraConfig lora, std::vector<LoraTerm> terms,
                     Backend& be)
    : cfg_(cfg), config_(std::move(lora)), be_(be), terms_(std::move(terms)) {
  for (LoraTerm& t : terms_) {
    t.dA = be_.zeros(t.A.shape(), t.A.dtype());
    t.dB = be_.zeros(t.B.shape(), t.B.dtype());
    if (t.dora()) t.dmagnitude = be_.zeros(t.magnitude.shape(), t.magnitude.dtype());
  }
}

Tensor LoraModel::base_weight(const LoraTerm& t) const {
  check(base_weights_ != nullptr,
        "DoRA term " + t.name + " needs the base weights (LoraModel::set_base_weights)");
  check(t.layer >= 0 && t.layer < std::int64_t(base_weights_->layers.size()),
        "DoRA term " + t.name + ": the base weights have no layer " + std::to_string(t.layer));
  const Tensor W = linear_weight(*base_weights_, t.site);
  check_shape(W, {t.module_rows, t.in}, t.module + ".weight (DoRA's base weight)");
  // A frozen weight held in bf16 is widened (exactly) to the values the model computes with.
  return in_dtype(be_, W, t.A.dtype());
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
    if (t.dora()) be_.copy(dora_direction(be_, t, base_weight(t)).norm, t.magnitude);
  }
}

void LoraModel::init(const ModelWeights&, std::uint64_t seed) {
  if (init_from_.empty()) {
    init(seed);
    return;
  }
  const std::unique_ptr<LoraModel> saved =
      read_lora_adapter(init_from_, cfg_, terms_.front().A.dtype(), be_);
  copy_values_from(*saved, (init_from_ / "adapter_model.safetensors").string());
}

void LoraModel::save(const std::filesystem::path& dir, const AdapterInfo& info) {
  write_lora_adapter(dir, *this, info.base_model, info.metadata);
}

void LoraModel::load(const std::filesystem::path& dir) {
  const std::unique_ptr<LoraModel> saved =
      read_lora_adapter(dir, cfg_, terms_.front().A.dtype(), be_);
  copy_values_from(*saved, (dir / "adapter_model.safetensors").string());
}

std::vector<std::string> LoraModel::summary() {
  // Group the terms by what the user targeted (the part of the name after "layers.I." and
  // "experts.E.").
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> groups;  // target -> (n, params)
  for (const LoraTerm& t : terms_) {
    std::string target = t.embedding ? "embeddings" : t.name.substr(t.name.find('.', 7) + 1);
    if (t.site.expert >= 0) target = target.substr(target.find('.', 8) + 1);
    auto& g = groups[target];
    g.first += 1;
    g.second += t.A.numel() + t.B.numel() + (t.dora() ? t.magnitude.numel() : 0);
  }
  std::ostringstream head;
  head << "lora: rank " << config_.rank << ", alpha " << config_.alpha
       << (config_.rslora ? " (rsLoRA)" : "") << ", scale " << terms_.front().scale
       << ", dropout " << config_.dropout
       << (config_.dora ? ", DoRA (a magnitude per output row)" : "");
  std::vector<std::string> lines{head.str()};
  for (const auto& [target, g] : groups)
    lines.push_back("  " + target + ": " + std::to_string(g.first) + " module" +
                    (g.first == 1 ? "" : "s") + ", " + std::to_string(g.second) + " parameters");
  return lines;
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
    if (t.dora()) out.push_back({"lora." + t.name + ".magnitude", t.magnitude, t.dmagnitude});
  }
}

void LoraModel::copy_values_from(const LoraModel& saved, const std::string& file) {
  const std::vector<LoraTerm>& theirs = saved.terms();
  if (theirs.size() != terms_.size())
    throw Error(file + ": holds " + std::to_string(theirs.size()) + " LoRA terms, this run has " +
                std::to_string(terms_.size()));
  for (std::size_t i = 0; i < terms_.size(); ++i) {
    LoraTerm& mine = terms_[i];
    const LoraTerm& t = theirs[i];
    if (t.name != mine.name || t.A.shape() != mine.A.shape() || t.B.shape() != mine.B.shape() ||
        t.dora() != mine.dora())
      throw Error(file + ": LoRA term " + t.name + (t.dora() ? " (DoRA)" : "") +
                  " does not match this run's " + mine.name + (mine.dora() ? " (DoRA)" : ""));
    be_.copy(t.A, mine.A);
    be_.copy(t.B, mine.B);
    if (mine.dora()) be_.copy(t.magnitude, mine.magnitude);
  }
}

void LoraModel::linear_forward(const LinearSite& site, const Tensor& x,
                               std::vector<LinearPart>& out) {
  const std::int64_t tokens = x.dim(0);
  for (LoraTerm& t : terms_) {
    if (t.embedding || t.site.index != site.index) continue;
    const Tensor* input = &x;
    if (training_ && config_.dropout > 0) {
      if (!recomputing_) {  // a recomputed forward keeps the first one's mask
        t.keep_scale = be_.empty(x.shape(), x.dtype());
        be_.dropout_mask(dropout_rng_->next_u64(), config_.dropout, t.keep_scale);
      }
      t.x_dropped = be_.empty(x.shape(), x.dtype());
      be_.mul(x, t.keep_scale, t.x_dropped);
      input = &t.x_dropped;
    } else {
      t.keep_scale = Tensor();
      t.x_dropped = Tensor();
    }
    t.U = be_.empty({tokens, t.rank}, x.dtype());
    be_.gemm(false, true, 1.0, *input, t.A, 0.0, t.U);  // U = x A^T
    if (t.dora()) {
      dora_forward(be_, t, base_weight(t), *input, out);
      continue;
    }
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

void LoraModel::linear_backward(const LinearSite& site, const Tensor& x,
                                const std::vector<LinearPart>& dout, Tensor& dx) {
  const std::int64_t tokens = x.dim(0);
  for (LoraTerm& t : terms_) {
    if (t.embedding || t.site.index != site.index) continue;
    check(t.U.defined() && t.U.dim(0) == tokens, "LoRA backward without its forward");
    const Tensor& input = t.x_dropped.defined() ? t.x_dropped : x;
    // dxd: the gradient w.r.t. this term's input; without dropout that is x, so it adds to dx
    // in place (dxd shares dx's storage).
    Tensor dxd = t.keep_scale.defined() ? be_.zeros(x.shape(), x.dtype()) : dx;
    Tensor dU = be_.zeros({tokens, t.rank}, x.dtype());
    if (t.dora()) {
      dora_backward(be_, t, base_weight(t), input, dout, dU, dxd);
    } else {
      for (const LinearPart& p : dout) {
        const std::int64_t n = p.y.dim(1);
        if (p.row0 + n <= t.row0 || p.row0 >= t.row0 + t.rows) continue;
        const std::int64_t b0 = p.row0 - t.row0;
        const Tensor Bp = t.B.rows(b0, b0 + n);
        Tensor dBp = t.dB.rows(b0, b0 + n);
        be_.gemm(true, false, t.scale, p.y, t.U, 1.0, dBp);  // dB += s dY^T U
        be_.gemm(false, false, t.scale, p.y, Bp, 1.0, dU);   // dU += s dY B
      }
      be_.gemm(false, false, 1.0, dU, t.A, 1.0, dxd);  // dxd += dU A
    }
    be_.gemm(true, false, 1.0, dU, input, 1.0, t.dA);  // dA += dU^T x
    if (t.keep_scale.defined()) {
      be_.mul(dxd, t.keep_scale, dxd);
      be_.add(dxd, dx);
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

void LoraModel::merge_into(ModelConfig& cfg, ModelWeights& w) const {
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
    Tensor W = linear_weight(w, t.site);
    if (t.dora()) {
      dora_merge(be_, t, W);
      continue;
    }
    Tensor rows = W.rows(t.row0, t.row0 + t.rows);
    be_.gemm(false, false, t.scale, t.B, t.A, 1.0, rows);  // W += s B A
  }
}

}  // namespace ssmtune
