#include "peft/additional_scan.h"

#include <cmath>

#include "core/error.h"
#include "io/json_fields.h"
#include "peft/init_util.h"
#include "peft/method_file.h"

namespace ssmtune {

AdditionalScan::AdditionalScan(const ModelConfig& cfg, const AdditionalScanConfig& config,
                               DType dtype, Backend& be, std::int64_t scan_chunk)
    : cfg_(cfg), config_(config), be_(be), scan_chunk_(scan_chunk) {
  const std::int64_t n = config.states, E = cfg.d_inner;
  if (cfg.is_mamba2() && config.init != "copy")
    throw UsageError("peft.additional_scan.init \"" + config.init +
                     "\": Mamba-2 decays each head's states at one rate, so there is no decay per "
                     "state to set; use \"copy\" (docs/methods.md section 10)");
  const Shape A_shape = cfg.is_mamba2() ? Shape{cfg.ssm_heads} : Shape{E, n};
  layers_.resize(std::size_t(cfg.n_layer));
  for (const std::int64_t i : ssm_layers(cfg)) {
    Layer& l = layers_[std::size_t(i)];
    l.A_log = be_.zeros(A_shape, dtype);
    l.W = be_.zeros({2 * n, E}, dtype);
    l.dA_log = be_.zeros(A_shape, dtype);
    l.dW = be_.zeros({2 * n, E}, dtype);
  }
}

void AdditionalScan::init(const ModelWeights& base, std::uint64_t seed) {
  const std::int64_t n = config_.states, E = cfg_.d_inner, N = cfg_.d_state;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    Layer& l = layers_[i];
    // An attention layer has no additional scan.
    if (!l.A_log.defined()) continue;
    Tensor a = Tensor::empty(l.A_log.shape(), l.A_log.dtype());
    if (cfg_.is_mamba2()) {  // the head's own A_log, (H)
      be_.copy(base.layers.at(i).mamba2.A_log, a);
    } else {
      const Tensor base_A_log = base.layers.at(i).mamba.A_log.to(DType::F64);  // (E, N)
      std::int64_t k = 0;
      fill_with(a, [&] {
        const std::int64_t d = k / n, j = k % n;
        ++k;
        return config_.init == "copy" ? base_A_log.data<double>()[d * N]
                                      : std::log(double(N + 1 + j));
      });
    }
    be_.copy(a, l.A_log);
    // W_B: kaiming_uniform(a = sqrt(5)) over fan_in E; W_C: zero.
    Rng rng = Rng::for_stream(seed, stream_id(("additional_scan:" + std::to_string(i)).c_str()));
    const double bound = 1.0 / std::sqrt(double(E));
    Tensor w = Tensor::zeros({2 * n, E}, l.W.dtype());
    Tensor w_B = w.rows(0, n);
    fill_with(w_B, [&] { return rng.uniform(-bound, bound); });
    be_.copy(w, l.W);
  }
}

void AdditionalScan::append_trainables(std::vector<TrainableParam>& out) {
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i].A_log.defined()) continue;
    const std::string p = "additional_scan.layers." + std::to_string(i);
    out.push_back({p + ".A_log", layers_[i].A_log, layers_[i].dA_log});
    out.push_back({p + ".x_proj", layers_[i].W, layers_[i].dW});
  }
}

Shape AdditionalScan::carried_state_shape(std::int64_t) const {
  if (cfg_.is_mamba2()) return {cfg_.ssm_heads, cfg_.ssm_head_dim, config_.states};
  return {cfg_.d_inner, config_.states};
}

void AdditionalScan::scan_forward(Layer& l, const ScanIO& in, const Tensor& h0,
                                  std::int64_t chunk, Tensor& y_add, Tensor& h_last) {
  const std::int64_t B = in.u.dim(0), L = in.u.dim(1), E = in.u.dim(2), n = config_.states;
  const std::int64_t n_chunks = (L + chunk - 1) / chunk;
  if (cfg_.is_mamba2()) {  // heads of P channels, one group of n states, no D
    const std::int64_t H = cfg_.ssm_heads, P = cfg_.ssm_head_dim;
    l.h_saved = be_.empty({B, n_chunks, H, P, n}, y_add.dtype());
    Tensor y4 = y_add.reshape({B, L, H, P});
    be_.ssd_forward({in.u.reshape({B, L, H, P}), in.delta, l.A, l.Bm.reshape({B, L, 1, n}),
                     l.Cm.reshape({B, L, 1, n}), Tensor(), h0, chunk},
                    y4, l.h_saved, h_last);
  } else {
    l.h_saved = be_.empty({B, n_chunks, E, n}, y_add.dtype());
    be_.selective_scan_forward({in.u, in.delta, l.A, l.Bm, l.Cm, Tensor(), h0, chunk}, y_add,
                               l.h_saved, h_last);
  }
}

std::pair<Tensor, Tensor> AdditionalScan::scan_backward(Layer& l, const ScanIO& in,
                                                        const Tensor& dy, ScanIOGrads& grads) {
  const std::int64_t B = in.u.dim(0), L = in.u.dim(1), E = in.u.dim(2), n = config_.states;
  const DType dt = in.u.dtype();
  Tensor dA = be_.zeros(l.A.shape(), dt), dBm = be_.empty({B, L, n}, dt);
  Tensor dCm = be_.empty({B, L, n}, dt);
  if (cfg_.is_mamba2()) {
    const std::int64_t H = cfg_.ssm_heads, P = cfg_.ssm_head_dim;
    Backend::SsdGrads sg;
    sg.dx = be_.empty({B, L, H, P}, dt);
    sg.ddt = be_.empty({B, L, H}, dt);
    sg.dA = dA;
    sg.dBm = dBm.reshape({B, L, 1, n});
    sg.dCm = dCm.reshape({B, L, 1, n});
    be_.ssd_backward({in.u.reshape({B, L, H, P}), in.delta, l.A, l.Bm.reshape({B, L, 1, n}),
                      l.Cm.reshape({B, L, 1, n}), Tensor(), Tensor(), cfg_.chunk_size},
                     l.h_saved, dy.reshape({B, L, H, P}), sg);
    be_.add(sg.dx.reshape({B, L, E}), grads.du);
    be_.add(sg.ddt, grads.ddelta);
  } else {
    Backend::ScanGrads sg;
    sg.du = be_.empty({B, L, E}, dt);
    sg.ddelta = be_.empty({B, L, E}, dt);
    sg.dA = dA;
    sg.dBm = dBm;
    sg.dCm = dCm;
    be_.selective_scan_backward({in.u, in.delta, l.A, l.Bm, l.Cm, Tensor(), Tensor(), scan_chunk_},
                                l.h_saved, dy, sg);
    be_.add(sg.du, grads.du);
    be_.add(sg.ddelta, grads.ddelta);
  }
  be_.ssm_A_backward(dA, l.A, l.dA_log);
  return {dBm, dCm};
}

void AdditionalScan::output_forward(std::int64_t layer, const ScanIO& in, Tensor& y,
                                    Tensor* carry) {
  Layer& l = layers_.at(std::size_t(layer));
  const std::int64_t B = in.u.dim(0), L = in.u.dim(1), E = in.u.dim(2), n = config_.states;
  const DType dt = in.u.dtype();
  const Tensor u2 = in.u.reshape({B * L, E});
  l.Bm = be_.empty({B, L, n}, dt);
  l.Cm = be_.empty({B, L, n}, dt);
  Tensor B2 = l.Bm.reshape({B * L, n}), C2 = l.Cm.reshape({B * L, n});
  be_.gemm(false, true, 1.0, u2, l.W.rows(0, n), 0.0, B2);      // B_add = u W_B^T
  be_.gemm(false, true, 1.0, u2, l.W.rows(n, 2 * n), 0.0, C2);  // C_add = u W_C^T
  l.A = be_.empty(l.A_log.shape(), dt);
  be_.ssm_A_forward(l.A_log, l.A);
  // The SSD's chunk is the model's; the selective scan's only sets how many states are saved.
  const std::int64_t chunk = cfg_.is_mamba2() ? cfg_.chunk_size : carry ? L : scan_chunk_;
  Tensor y_add = be_.empty({B, L, E}, dt);
  Tensor h_last;
  if (carry) h_last = be_.empty(carry->shape(), dt);
  scan_forward(l, in, carry ? *carry : Tensor(), chunk, y_add, h_last);
  if (carry) *carry = h_last;
  be_.add(y_add, y);
}

void AdditionalScan::output_backward(std::int64_t layer, const ScanIO& in, const Tensor& dy,
                                     ScanIOGrads& grads) {
  Layer& l = layers_.at(std::size_t(layer));
  check(l.Bm.defined() && l.Bm.dim(0) == in.u.dim(0) && l.Bm.dim(1) == in.u.dim(1),
        "additional scan backward without its forward");
  const std::int64_t B = in.u.dim(0), L = in.u.dim(1), E = in.u.dim(2), n = config_.states;
  const auto [dBm, dCm] = scan_backward(l, in, dy, grads);
  const Tensor u2 = in.u.reshape({B * L, E});
  Tensor du2 = grads.du.reshape({B * L, E});
  const Tensor dB2 = dBm.reshape({B * L, n}), dC2 = dCm.reshape({B * L, n});
  Tensor dW_B = l.dW.rows(0, n), dW_C = l.dW.rows(n, 2 * n);
  be_.gemm(true, false, 1.0, dB2, u2, 1.0, dW_B);  // dW_B += dB_add^T u
  be_.gemm(true, false, 1.0, dC2, u2, 1.0, dW_C);
  be_.gemm(false, false, 1.0, dB2, l.W.rows(0, n), 1.0, du2);  // du += dB_add W_B
  be_.gemm(false, false, 1.0, dC2, l.W.rows(n, 2 * n), 1.0, du2);
}

void AdditionalScan::save(const std::filesystem::path& dir, const AdapterInfo& info) {
  write_additional_scan(dir, *this, info.metadata);
}

void AdditionalScan::load(const std::filesystem::path& dir) {
  load_trained_method(dir, "additional_scan", *this, be_);
}

std::string AdditionalScan::unmergeable_reason() const {
  return method_file_name("additional_scan") +
         " holds an additional scan, which needs more states than the model's d_state";
}

std::vector<std::string> AdditionalScan::summary() {
  return {"additional scan: " + std::to_string(config_.states) + " extra states (init " +
          config_.init + "), " + std::to_string(n_trainable(*this)) + " parameters"};
}

void write_additional_scan(const std::filesystem::path& dir, AdditionalScan& as,
                           const std::map<std::string, std::string>& metadata) {
  save_method(dir, "additional_scan", as,
                    {{"states", as.config().states}, {"init", as.config().init}}, metadata);
}

std::unique_ptr<AdditionalScan> read_additional_scan(const std::filesystem::path& dir,
                                                     const ModelConfig& cfg, DType dtype,
                                                     Backend& be) {
  const std::optional<nlohmann::json> settings = read_method_config(dir, "additional_scan");
  if (!settings) return nullptr;
  const JsonFields f(*settings, (dir / method_file_name("additional_scan")).string() +
                                    ": metadata ssmtune.method_config");
  AdditionalScanConfig c;
  c.states = f.get_int("states", 1, 1024).value_or(0);
  if (c.states < 1) f.fail("states", "an integer in [1, 1024]");
  c.init = f.get_choice("init", {"copy", "s4d"}).value_or("copy");
  if (cfg.is_mamba2() && c.init != "copy")
    f.fail("init", "\"copy\" (the only init on Mamba-2, whose decay is one rate per head)");
  auto as = std::make_unique<AdditionalScan>(cfg, c, dtype, be);
  load_method(dir, "additional_scan", *as, be);
  return as;
}

}  // namespace ssmtune
