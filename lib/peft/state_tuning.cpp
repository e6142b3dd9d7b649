#include "peft/state_tuning.h"

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/error.h"
#include "io/json_fields.h"
#include "io/json_file.h"
#include "io/finite_tensors.h"
#include "io/safetensors.h"
#include "peft/init_util.h"

namespace ssmtune {

StateTuning::StateTuning(const ModelConfig& cfg, bool initial_state, StateOffset offset,
                         DType dtype, Backend& be, bool conv_state)
    : cfg_(cfg), dtype_(dtype), be_(be), kind_(offset) {
  const std::int64_t E = cfg.d_inner, N = cfg.d_state;
  // Mamba-1: the state is (E, N) and the conv reads x (E channels); Mamba-2: (H, P, N) and
  // x|B|C (docs/methods.md section 10).
  const bool m2 = cfg.is_mamba2();
  const std::vector<std::int64_t> layers = m2 ? ssm_layers(cfg) : mamba_layers(cfg);
  const Shape state = m2 ? Shape{cfg.ssm_heads, cfg.ssm_head_dim, N} : Shape{E, N};
  if (conv_state && cfg.d_conv > 1)
    zeros_per_layer(cfg, layers, be_, {cfg.d_conv - 1, m2 ? cfg.conv_dim() : E}, dtype, conv_,
                    dconv_);
  if (initial_state) zeros_per_layer(cfg, layers, be_, state, dtype, h0_, dh0_);
  if (offset != StateOffset::None)
    zeros_per_layer(cfg, layers, be_, offset == StateOffset::H ? state : Shape{E}, dtype,
                    offset_, doffset_);
}

void StateTuning::append_trainables(std::vector<TrainableParam>& out) {
  const auto append = [&](const std::vector<Tensor>& v, const std::vector<Tensor>& dv,
                          const std::string& method, const std::string& what) {
    for (std::size_t i = 0; i < v.size(); ++i)
      if (v[i].defined())
        out.push_back({method + ".layers." + std::to_string(i) + what, v[i], dv[i]});
  };
  append(h0_, dh0_, "initial_state", ".h0");
  append(conv_, dconv_, "initial_state", ".conv");
  append(offset_, doffset_, "state_offset", kind_ == StateOffset::H ? ".h" : ".y");
}

Tensor StateTuning::initial_state(std::int64_t layer, std::int64_t batch) {
  if (h0_.empty() || !h0_.at(layer).defined()) return Tensor();
  // Every sequence of the batch starts from the same learned state.
  const Tensor& h0 = h0_.at(layer);
  Shape shape = h0.shape();
  shape.insert(shape.begin(), batch);
  Tensor out = be_.empty(shape, h0.dtype());
  for (std::int64_t b = 0; b < batch; ++b) {
    Tensor row = out.rows(b, b + 1).reshape(h0.shape());
    be_.copy(h0, row);
  }
  return out;
}

void StateTuning::initial_state_backward(std::int64_t layer, const Tensor& dh0) {
  if (h0_.empty()) return;
  for (std::int64_t b = 0; b < dh0.dim(0); ++b)  // the batch shares H0: gradients add
    be_.add(dh0.rows(b, b + 1).reshape(dh0_.at(layer).shape()), dh0_.at(layer));
}

Tensor StateTuning::initial_conv_state(std::int64_t layer) {
  if (conv_.empty() || !conv_.at(layer).defined()) return Tensor();
  const Tensor& c = conv_.at(layer);
  return c.reshape({1, c.dim(0), c.dim(1)});
}

void StateTuning::initial_conv_state_backward(std::int64_t layer, const Tensor& d) {
  if (conv_.empty()) return;
  be_.add(d.reshape(dconv_.at(layer).shape()), dconv_.at(layer));
}

// The h variant reads the offset out with C: y_t += h' C_t, per channel e of the state's
// (E, N) rows. On Mamba-2 with G groups, the channels of group g's heads, columns
// [g E/G, (g+1) E/G) of y, read C's group g, columns [g N, (g+1) N) of Cm (one GEMM per group
// on copies of those columns; one group: the columns are the whole tensors).
namespace {
struct GroupColumns {
  std::int64_t G, E, N;
  // columns [g n, (g+1) n) of t: (tokens, G n), copied out (t itself when G = 1)
  Tensor take(Backend& be, const Tensor& t, std::int64_t g, std::int64_t n) const {
    if (G == 1) return t;
    Tensor part = be.empty({t.dim(0), n}, t.dtype());
    be.split_columns(t, g * n, part);
    return part;
  }
  void put(Backend& be, const Tensor& part, std::int64_t g, std::int64_t n, Tensor& t) const {
    if (G > 1) be.merge_columns(part, g * n, t);
  }
};
}  // namespace

void StateTuning::output_forward(std::int64_t layer, const ScanIO& in, Tensor& y3, Tensor*) {
  const std::int64_t tokens = in.Cm.dim(0) * in.Cm.dim(1);
  const Tensor Cm = in.Cm.reshape({tokens, in.Cm.dim(2)});
  Tensor y = y3.reshape({tokens, y3.dim(2)});
  if (kind_ == StateOffset::Y) {
    be_.add_bias(y, offset_.at(layer));  // y += y'
    return;
  }
  if (kind_ != StateOffset::H) return;
  const GroupColumns cols{cfg_.is_mamba2() ? cfg_.n_groups : 1, cfg_.d_inner, cfg_.d_state};
  const std::int64_t Eg = cols.E / cols.G;
  const Tensor h = offset_.at(layer).reshape({cols.E, cols.N});
  for (std::int64_t g = 0; g < cols.G; ++g) {
    Tensor yg = cols.take(be_, y, g, Eg);
    be_.gemm(false, true, 1.0, cols.take(be_, Cm, g, cols.N), h.rows(g * Eg, (g + 1) * Eg), 1.0,
             yg);  // y += C h'^T
    cols.put(be_, yg, g, Eg, y);
  }
}

void StateTuning::output_backward(std::int64_t layer, const ScanIO& in, const Tensor& dy3,
                                  ScanIOGrads& grads) {
  const std::int64_t tokens = in.Cm.dim(0) * in.Cm.dim(1);
  const Tensor Cm = in.Cm.reshape({tokens, in.Cm.dim(2)});
  const Tensor dy = dy3.reshape({tokens, dy3.dim(2)});
  Tensor dCm = grads.dCm.reshape({tokens, in.Cm.dim(2)});
  if (kind_ == StateOffset::Y) {
    be_.bias_backward(dy, doffset_.at(layer));  // dy' += sum over tokens
    return;
  }
  if (kind_ != StateOffset::H) return;
  const GroupColumns cols{cfg_.is_mamba2() ? cfg_.n_groups : 1, cfg_.d_inner, cfg_.d_state};
  const std::int64_t Eg = cols.E / cols.G;
  const Tensor h = offset_.at(layer).reshape({cols.E, cols.N});
  Tensor dh = doffset_.at(layer).reshape({cols.E, cols.N});
  for (std::int64_t g = 0; g < cols.G; ++g) {
    const Tensor dyg = cols.take(be_, dy, g, Eg);
    Tensor dhg = dh.rows(g * Eg, (g + 1) * Eg);
    be_.gemm(true, false, 1.0, dyg, cols.take(be_, Cm, g, cols.N), 1.0, dhg);  // dh' += dy^T C
    Tensor dCg = cols.take(be_, dCm, g, cols.N);
    be_.gemm(false, false, 1.0, dyg, h.rows(g * Eg, (g + 1) * Eg), 1.0, dCg);  // dC += dy h'
    cols.put(be_, dCg, g, cols.N, dCm);
  }
}

void write_state_tuning(const std::filesystem::path& dir, StateTuning& st,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<TrainableParam> params;
  st.append_trainables(params);
  std::vector<NamedTensor> tensors;
  for (const TrainableParam& p : params) tensors.push_back({p.name, p.value});
  std::map<std::string, std::string> meta = metadata;
  const char* offset = st.offset() == StateOffset::H   ? "h"
                       : st.offset() == StateOffset::Y ? "y"
                                                       : "";
  meta["ssmtune.state_methods"] = nlohmann::json{
      {"initial_state", st.initial_state_on()},
      {"initial_conv_state", st.conv_state_on()},
      {"state_offset", offset}}.dump();
  write_safetensors(dir / kStateTuningFile, tensors, meta);
}

void StateTuning::init(const ModelWeights&, std::uint64_t) {
  std::vector<TrainableParam> params;
  append_trainables(params);
  for (TrainableParam& p : params) p.value.fill_zero();
}

void StateTuning::save(const std::filesystem::path& dir, const AdapterInfo& info) {
  write_state_tuning(dir, *this, info.metadata);
}

void StateTuning::load(const std::filesystem::path& dir) {
  const std::unique_ptr<StateTuning> saved = read_state_tuning(dir, cfg_, dtype_, be_);
  const std::string file = (dir / kStateTuningFile).string();
  if (!saved) throw Error(file + ": missing (this run trains state methods)");
  std::vector<TrainableParam> mine, theirs;
  append_trainables(mine);
  saved->append_trainables(theirs);
  if (mine.size() != theirs.size() || saved->offset() != offset() ||
      saved->initial_state_on() != initial_state_on() ||
      saved->conv_state_on() != conv_state_on())
    throw Error(file + ": holds other state methods than this run trains");
  for (std::size_t i = 0; i < mine.size(); ++i) be_.copy(theirs[i].value, mine[i].value);
}

std::string StateTuning::unmergeable_reason() const {
  return std::string(kStateTuningFile) +
         " holds initial-state / state-offset tuning, which acts through C_t or before the gate, "
         "not through a weight";
}

std::vector<std::string> StateTuning::summary() {
  std::vector<std::string> lines;
  const std::int64_t L = std::int64_t(
                         (cfg_.is_mamba2() ? ssm_layers(cfg_) : mamba_layers(cfg_)).size()),
                     E = cfg_.d_inner, N = cfg_.d_state;
  if (conv_state_on()) {
    const std::int64_t C = cfg_.is_mamba2() ? cfg_.conv_dim() : E;  // the conv's channels
    lines.push_back("initial-state tuning, conv state: (d_conv - 1) x " +
                    std::string(cfg_.is_mamba2() ? "conv channels" : "d_inner") + " per layer, " +
                    std::to_string(L * (cfg_.d_conv - 1) * C) + " parameters");
  }
  if (initial_state_on())
    lines.push_back("initial-state tuning: h0 (d_inner x d_state) per layer, " +
                    std::to_string(L * E * N) + " parameters");
  if (kind_ != StateOffset::None) {
    const std::int64_t per_layer = kind_ == StateOffset::H ? E * N : E;
    lines.push_back(std::string("state-offset tuning (") + (kind_ == StateOffset::H ? "h" : "y") +
                    "): " + std::to_string(L * per_layer) + " parameters");
  }
  return lines;
}

std::unique_ptr<StateTuning> read_state_tuning(const std::filesystem::path& dir,
                                               const ModelConfig& cfg, DType dtype, Backend& be) {
  const std::filesystem::path path = dir / kStateTuningFile;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return nullptr;
  const std::string file = path.string();
  const SafetensorsFile st = SafetensorsFile::open(path);
  check_finite_tensors(st);
  const auto it = st.metadata().find("ssmtune.state_methods");
  if (it == st.metadata().end())
    throw Error(file + ": metadata \"ssmtune.state_methods\" is missing");
  const nlohmann::json methods = parse_json_text(it->second, file + ": metadata");
  const JsonFields f(methods, file + ": metadata ssmtune.state_methods");
  const bool initial_state = f.get_bool("initial_state").value_or(false);
  const bool conv_state = f.get_bool("initial_conv_state").value_or(false);
  const std::string offset = f.get_choice("state_offset", {"", "h", "y"}).value_or("");
  auto out = std::make_unique<StateTuning>(cfg, initial_state,
                                           offset == "h"   ? StateOffset::H
                                           : offset == "y" ? StateOffset::Y
                                                           : StateOffset::None,
                                           dtype, be, conv_state);
  std::vector<TrainableParam> params;
  out->append_trainables(params);
  std::set<std::string> expected;
  for (TrainableParam& p : params) {
    expected.insert(p.name);
    if (!st.contains(p.name)) throw Error(file + ": missing tensor " + p.name);
    const Tensor t = st.tensor(p.name);
    if (t.shape() != p.value.shape())
      throw Error(file + ": tensor " + p.name + ": expected shape " + shape_str(p.value.shape()) +
                  ", got " + shape_str(t.shape()));
    const Tensor converted = t.to(dtype);
    be.copy(converted, p.value);
  }
  for (const SafetensorsEntry& e : st.entries())
    if (!expected.count(e.name))
      throw Error(file + ": unexpected tensor " + quote_str(e.name) + " (the model has " +
                  std::to_string(cfg.n_layer) + " layers)");
  return out;
}

}  // namespace ssmtune
