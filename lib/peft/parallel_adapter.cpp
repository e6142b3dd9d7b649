#include "peft/parallel_adapter.h"

#include <cmath>
#include <sstream>

#include "core/error.h"
#include "core/memory_budget.h"
#include "io/json_fields.h"
#include "peft/init_util.h"
#include "peft/method_file.h"

namespace ssmtune {

ParallelAdapter::ParallelAdapter(const ModelConfig& cfg, const ParallelAdapterConfig& config,
                                 DType dtype, Backend& be)
    : config_(config), be_(be) {
  const std::int64_t r = config.rank, E = cfg.d_inner, D = cfg.d_model;
  check_trainables_fit("peft.parallel_adapter.rank = " + std::to_string(r),
                       ssm_layers(cfg).size() * std::uint64_t(r) * std::uint64_t(E + D),
                       dtype_size(dtype), be.free_device_bytes());
  layers_.resize(std::size_t(cfg.n_layer));
  for (const std::int64_t i : ssm_layers(cfg)) {
    Layer& l = layers_[std::size_t(i)];
    l.down = be_.zeros({r, E}, dtype);
    l.up = be_.zeros({D, r}, dtype);
    l.ddown = be_.zeros({r, E}, dtype);
    l.dup = be_.zeros({D, r}, dtype);
  }
}

void ParallelAdapter::init(std::uint64_t seed) {
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    Layer& l = layers_[i];
    if (!l.down.defined()) continue;  // an attention layer
    Rng rng = Rng::for_stream(seed, stream_id(("parallel_adapter:" + std::to_string(i)).c_str()));
    const double bound = 1.0 / std::sqrt(double(l.down.dim(1)));
    Tensor host = Tensor::empty(l.down.shape(), l.down.dtype());
    fill_with(host, [&] { return rng.uniform(-bound, bound); });
    be_.copy(host, l.down);
    l.up.fill_zero();
  }
}

void ParallelAdapter::set_training(bool training, Rng* dropout_rng) {
  check(!training || config_.dropout == 0 || dropout_rng,
        "parallel adapter dropout needs a random generator while training");
  training_ = training;
  dropout_rng_ = dropout_rng;
}

void ParallelAdapter::append_trainables(std::vector<TrainableParam>& out) {
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].down.defined()) continue;
    const std::string p = "parallel_adapter.layers." + std::to_string(i);
    out.push_back({p + ".down", layers_[i].down, layers_[i].ddown});
    out.push_back({p + ".up", layers_[i].up, layers_[i].dup});
  }
}

void ParallelAdapter::linear_forward(const LinearSite& site, const Tensor& x,
                                     std::vector<LinearPart>& out) {
  if (site.name != "out_proj") return;
  Layer& l = layers_.at(std::size_t(site.layer));
  const std::int64_t tokens = x.dim(0), r = l.down.dim(0);
  l.a = be_.empty({tokens, r}, x.dtype());
  be_.gemm(false, true, 1.0, x, l.down, 0.0, l.a);  // a = g W_down^T
  l.h = be_.empty({tokens, r}, x.dtype());
  be_.relu_forward(l.a, l.h);
  if (training_ && config_.dropout > 0) {
    if (!recomputing_) {  // a recomputed forward keeps the first one's mask
      l.keep_scale = be_.empty(l.h.shape(), l.h.dtype());
      be_.dropout_mask(dropout_rng_->next_u64(), config_.dropout, l.keep_scale);
    }
    be_.mul(l.h, l.keep_scale, l.h);
  } else {
    l.keep_scale = Tensor();
  }
  be_.gemm(false, true, config_.scale, l.h, l.up, 1.0, out.at(0).y);  // o += s h W_up^T
}

void ParallelAdapter::linear_backward(const LinearSite& site, const Tensor& x,
                                      const std::vector<LinearPart>& dout, Tensor& dx) {
  if (site.name != "out_proj") return;
  Layer& l = layers_.at(std::size_t(site.layer));
  check(l.a.defined() && l.a.dim(0) == x.dim(0), "parallel adapter backward without its forward");
  const Tensor& dO = dout.at(0).y;
  be_.gemm(true, false, config_.scale, dO, l.h, 1.0, l.dup);  // dW_up += s dO^T h
  Tensor dh = be_.empty(l.h.shape(), l.h.dtype());
  be_.gemm(false, false, config_.scale, dO, l.up, 0.0, dh);  // dh = s dO W_up
  if (l.keep_scale.defined()) be_.mul(dh, l.keep_scale, dh);
  Tensor da = be_.empty(l.a.shape(), l.a.dtype());
  be_.relu_backward(dh, l.a, da);
  be_.gemm(true, false, 1.0, da, x, 1.0, l.ddown);   // dW_down += da^T g
  be_.gemm(false, false, 1.0, da, l.down, 1.0, dx);  // dg += da W_down
}

void ParallelAdapter::save(const std::filesystem::path& dir, const AdapterInfo& info) {
  write_parallel_adapter(dir, *this, info.metadata);
}

void ParallelAdapter::load(const std::filesystem::path& dir) {
  load_trained_method(dir, "parallel_adapter", *this, be_);
}

std::string ParallelAdapter::unmergeable_reason() const {
  return method_file_name("parallel_adapter") +
         " holds a parallel adapter, which is not linear (its ReLU)";
}

std::vector<std::string> ParallelAdapter::summary() {
  std::ostringstream line;
  line << "parallel adapter: rank " << config_.rank << ", scale " << config_.scale << ", dropout "
       << config_.dropout << ", beside out_proj, " << n_trainable(*this) << " parameters";
  return {line.str()};
}

void write_parallel_adapter(const std::filesystem::path& dir, ParallelAdapter& pa,
                            const std::map<std::string, std::string>& metadata) {
  const ParallelAdapterConfig& c = pa.config();
  save_method(dir, "parallel_adapter", pa,
                    {{"rank", c.rank}, {"scale", c.scale}, {"dropout", c.dropout}}, metadata);
}

std::unique_ptr<ParallelAdapter> read_parallel_adapter(const std::filesystem::path& dir,
                                                       const ModelConfig& cfg, DType dtype,
                                                       Backend& be) {
  const std::optional<nlohmann::json> settings = read_method_config(dir, "parallel_adapter");
  if (!settings) return nullptr;
  const JsonFields f(*settings, (dir / method_file_name("parallel_adapter")).string() +
                                    ": metadata ssmtune.method_config");
  ParallelAdapterConfig c;
  c.rank = f.get_int("rank", 1, std::int64_t(1) << 20).value_or(0);
  c.scale = f.get_number("scale").value_or(0);
  c.dropout = f.get_number("dropout").value_or(0);
  if (c.rank < 1) f.fail("rank", "a positive integer");
  if (!std::isfinite(c.scale)) f.fail("scale", "a finite number");
  if (!(c.dropout >= 0 && c.dropout < 1)) f.fail("dropout", "a number in [0, 1)");
  auto pa = std::make_unique<ParallelAdapter>(cfg, c, dtype, be);
  load_method(dir, "parallel_adapter", *pa, be);
  return pa;
}

}  // namespace ssmtune
