#include "peft/lora_adapter_io.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>
#include <tuple>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_fields.h"
#include "io/json_file.h"
#include "io/finite_tensors.h"
#include "io/safetensors.h"
#include "peft/method_file.h"
#include "peft/param_tuning.h"
#include "peft/state_tuning.h"

namespace fs = std::filesystem;

namespace ssmtune {

namespace {

const char* kPrefix = "base_model.model.";
const char* kTermsKey = "ssmtune.lora_terms";

// PEFT's scale for a module of rank r with alpha a (LoraLayer.update_layer).
double peft_scale(double alpha, std::int64_t r, bool rslora) {
  return rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
}
// The alpha PEFT needs so that its scale for rank r equals `scale`.
double alpha_for_scale(double scale, std::int64_t r, bool rslora) {
  return rslora ? scale * std::sqrt(double(r)) : scale * double(r);
}

// dst rows [r0, r0 + src rows), columns [c0, c0 + src cols) = src. dst: (R, C) src: (r, c).
void copy_block(const Tensor& device_src, Tensor& dst, std::int64_t r0, std::int64_t c0) {
  const Tensor src = device_src.host_readable();
  const std::size_t es = dtype_size(src.dtype());
  const std::int64_t rows = src.dim(0), cols = src.dim(1), C = dst.dim(1);
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst.raw()) + ((r0 + r) * C + c0) * es,
                static_cast<const char*>(src.raw()) + r * cols * es, cols * es);
}
// The inverse: dst (r, c) = src[r0 : r0 + r, c0 : c0 + c].
void take_block(const Tensor& src, Tensor& dst, std::int64_t r0, std::int64_t c0) {
  const std::size_t es = dtype_size(src.dtype());
  const std::int64_t rows = dst.dim(0), cols = dst.dim(1), C = src.dim(1);
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst.raw()) + r * cols * es,
                static_cast<const char*>(src.raw()) + ((r0 + r) * C + c0) * es, cols * es);
}

Tensor transpose2d(const Tensor& device_t) {
  const Tensor t = device_t.host_readable();
  Tensor out = Tensor::empty({t.dim(1), t.dim(0)}, t.dtype());
  const std::size_t es = dtype_size(t.dtype());
  for (std::int64_t i = 0; i < t.dim(0); ++i)
    for (std::int64_t j = 0; j < t.dim(1); ++j)
      std::memcpy(static_cast<char*>(out.raw()) + (j * t.dim(0) + i) * es,
                  static_cast<const char*>(t.raw()) + (i * t.dim(1) + j) * es, es);
  return out;
}

// The linear site a module name denotes, or the embedding (as a linear map: in = V, out = D).
struct ModuleShape {
  LinearSite site;
  bool embedding = false;
  std::int64_t out = 0, in = 0;
};

// "backbone.layers.3.mixer.in_proj" / "backbone.embeddings" (Jamba: "model.embed_tokens") ->
// its site and shape, or nullopt.
std::optional<ModuleShape> module_shape(const ModelConfig& c,
                                        const std::vector<LinearSite>& sites,
                                        const std::string& module) {
  if (module == embedding_module(c)) return ModuleShape{LinearSite{}, true, c.d_model, c.vocab_size};
  for (const LinearSite& s : sites)
    if (s.module == module) return ModuleShape{s, false, s.out, s.in};
  return std::nullopt;
}

// PEFT's check_target_module_exists for a list: a target names a module equal to it or ending
// in ".<target>".
bool targets_module(const std::string& target, const std::string& module) {
  return module == target ||
         (module.size() > target.size() &&
          module.compare(module.size() - target.size(), target.size(), target) == 0 &&
          module[module.size() - target.size() - 1] == '.');
}

// PEFT's pattern lookup (get_pattern_key): a key applies to a module equal to it or ending in
// ".<key>". Keys are taken literally, not as regular expressions.
template <class V>
std::optional<V> pattern_value(const nlohmann::json& pattern, const std::string& module) {
  for (auto it = pattern.begin(); it != pattern.end(); ++it) {
    if (targets_module(it.key(), module)) return it.value().get<V>();
  }
  return std::nullopt;
}

// adapter_config.json's target_modules must agree with the modules that have tensors: a
// target that matches none of them, or tensors that no target covers, means the two files do
// not belong together. Absent or null: not checked (PEFT then uses its defaults for the model).
// A string is a regular expression to PEFT (re.fullmatch); only one without special characters
// is checked, as a module name: matching a hostile pattern could take exponential time.
void check_target_modules(const JsonFields& f, const std::vector<std::string>& modules,
                          const std::string& st_file) {
  if (!f.has("target_modules") || f.raw("target_modules").is_null()) return;
  const nlohmann::json& v = f.raw("target_modules");
  const std::string where = f.where("target_modules");
  std::vector<std::string> targets;
  if (v.is_string()) {
    const std::string& pattern = v.get_ref<const std::string&>();
    if (pattern.find_first_of("\\^$.|?*+()[]{}") != std::string::npos) return;
    targets.push_back(pattern);
  } else if (v.is_array()) {
    for (const nlohmann::json& t : v) {
      if (!t.is_string())
        throw Error(where + ": expected a list of module names, got an entry that is " +
                    describe_json_value(t));
      targets.push_back(t.get<std::string>());
    }
  } else {
    f.fail("target_modules", "a list of module names or a string");
  }
  for (const std::string& t : targets)
    if (std::none_of(modules.begin(), modules.end(),
                     [&](const std::string& m) { return targets_module(t, m); }))
      throw Error(where + ": " + quote_str(t) + " matches no module with LoRA tensors in " +
                  st_file + " (expected every target to have tensors)");
  for (const std::string& m : modules)
    if (std::none_of(targets.begin(), targets.end(),
                     [&](const std::string& t) { return targets_module(t, m); }))
      throw Error(where + ": no entry matches module " + quote_str(m) +
                  ", which has LoRA tensors in " + st_file +
                  " (expected a target for every module with tensors)");
}

}  // namespace

bool is_adapter_dir(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir / "adapter_config.json", ec) ||
      fs::is_regular_file(dir / kStateTuningFile, ec) ||
      fs::is_regular_file(dir / kParamTuningFile, ec))
    return true;
  for (const char* method : kMethodFileMethods)
    if (fs::is_regular_file(dir / method_file_name(method), ec)) return true;
  return false;
}

void write_lora_adapter(const fs::path& dir, const LoraModel& lora, const std::string& base_model,
                        const std::map<std::string, std::string>& metadata) {
  const LoraConfig& lc = lora.config();
  // Group the terms by module, in order of first appearance.
  std::vector<std::string> modules;
  std::map<std::string, std::vector<const LoraTerm*>> by_module;
  for (const LoraTerm& t : lora.terms()) {
    if (!by_module.count(t.module)) modules.push_back(t.module);
    by_module[t.module].push_back(&t);
  }
  std::vector<NamedTensor> tensors;
  nlohmann::json rank_pattern = nlohmann::json::object(), alpha_pattern = nlohmann::json::object();
  nlohmann::json terms_meta = nlohmann::json::array();
  std::map<const LoraTerm*, std::size_t> order;
  for (const LoraTerm& t : lora.terms()) order[&t] = order.size();
  for (const std::string& module : modules) {
    const std::vector<const LoraTerm*>& terms = by_module[module];
    const LoraTerm& first = *terms.front();
    std::int64_t r_total = 0;
    for (const LoraTerm* t : terms) {
      check(t->scale == first.scale, "LoRA terms of one module with different scales");
      terms_meta.push_back({{"name", t->name},
                            {"module", module},
                            {"row0", t->row0},
                            {"rows", t->rows},
                            {"rank0", r_total},
                            {"rank", t->rank},
                            {"order", order[t]}});
      r_total += t->rank;
    }
    if (first.embedding) {
      check(terms.size() == 1, "two LoRA terms on the embedding");
      tensors.push_back({kPrefix + module + ".lora_embedding_A", transpose2d(first.A)});
      tensors.push_back({kPrefix + module + ".lora_embedding_B", first.B.clone()});
    } else {
      // Stack: A = [A_1; A_2; ...] (sum r_i, in); B (out, sum r_i) holds B_i in its slice's rows
      // and its own columns. B A = sum_i (B_i in rows of slice i) A_i, exactly the terms' sum.
      Tensor A = Tensor::zeros({r_total, first.in}, first.A.dtype());
      Tensor B = Tensor::zeros({first.module_rows, r_total}, first.B.dtype());
      std::int64_t rank0 = 0;
      for (const LoraTerm* t : terms) {
        copy_block(t->A, A, rank0, 0);
        copy_block(t->B, B, t->row0, rank0);
        rank0 += t->rank;
      }
      tensors.push_back({kPrefix + module + ".lora_A.weight", A});
      tensors.push_back({kPrefix + module + ".lora_B.weight", B});
      if (first.dora()) {  // PEFT's key: no ".weight", no adapter name (save_and_load.py)
        check(terms.size() == 1 && first.rows == first.module_rows,
              "a DoRA term on part of " + module);
        tensors.push_back({kPrefix + module + ".lora_magnitude_vector", first.magnitude.clone()});
      }
    }
    if (r_total != lc.rank) rank_pattern[module] = r_total;
    if (peft_scale(lc.alpha, r_total, lc.rslora) != first.scale)
      alpha_pattern[module] = alpha_for_scale(first.scale, r_total, lc.rslora);
  }

  nlohmann::json cfg = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model},
      {"r", lc.rank},
      {"lora_alpha", lc.alpha},
      {"lora_dropout", lc.dropout},
      {"use_rslora", lc.rslora},
      {"use_dora", lc.dora},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"init_lora_weights", true},
      {"inference_mode", true},
      {"target_modules", modules},
      {"rank_pattern", rank_pattern},
      {"alpha_pattern", alpha_pattern},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"revision", nullptr},
  };
  std::map<std::string, std::string> meta = metadata;
  meta[kTermsKey] = terms_meta.dump();
  write_safetensors(dir / "adapter_model.safetensors", tensors, meta);
  write_file_atomic(dir / "adapter_config.json", cfg.dump(2) + "\n");
}

std::unique_ptr<LoraModel> read_lora_adapter(const fs::path& dir, const ModelConfig& c, DType dtype,
                                             Backend& be) {
  const fs::path cfg_path = dir / "adapter_config.json";
  const std::string cfg_file = cfg_path.string();
  const nlohmann::json j = read_json_file(cfg_path);
  const JsonFields f(j, cfg_file);
  const std::string peft_type = f.get_string("peft_type").value_or("");
  if (peft_type != "LORA")
    throw Error(cfg_file +
                ": field \"peft_type\": expected \"LORA\" (the only PEFT adapter type "
                "ssmtune reads), got " +
                quote_str(peft_type));
  if (f.get_bool("fan_in_fan_out").value_or(false))
    throw Error(cfg_file +
                ": field \"fan_in_fan_out\": expected false (Mamba has no Conv1D "
                "projections)");
  const std::string bias = f.get_string("bias").value_or("none");
  if (bias != "none") f.fail("bias", "\"none\" (LoRA bias training is not supported)");
  LoraConfig lc;
  lc.rank = f.get_int("r", 1, 1 << 20).value_or(8);
  lc.alpha = f.get_number("lora_alpha").value_or(8.0);
  if (!(lc.alpha > 0)) f.fail("lora_alpha", "a positive number");
  lc.rslora = f.get_bool("use_rslora").value_or(false);
  lc.dora = f.get_bool("use_dora").value_or(false);
  lc.dropout = f.get_number("lora_dropout").value_or(0.0);
  if (lc.dropout < 0 || lc.dropout >= 1) f.fail("lora_dropout", "a number in [0, 1)");
  const nlohmann::json empty = nlohmann::json::object();
  const nlohmann::json& rank_pattern =
      f.has("rank_pattern") && f.raw("rank_pattern").is_object() ? f.raw("rank_pattern") : empty;
  const nlohmann::json& alpha_pattern =
      f.has("alpha_pattern") && f.raw("alpha_pattern").is_object() ? f.raw("alpha_pattern") : empty;
  for (auto it = rank_pattern.begin(); it != rank_pattern.end(); ++it)
    if (!it.value().is_number_integer() || it.value().get<std::int64_t>() < 1)
      throw Error(cfg_file + ": field \"rank_pattern." + it.key() +
                  "\": expected a positive integer, got " + describe_json_value(it.value()));
  for (auto it = alpha_pattern.begin(); it != alpha_pattern.end(); ++it)
    if (!it.value().is_number() || !(it.value().get<double>() > 0))
      throw Error(cfg_file + ": field \"alpha_pattern." + it.key() +
                  "\": expected a positive number, got " + describe_json_value(it.value()));

  const fs::path st_path = dir / "adapter_model.safetensors";
  const std::string st_file = st_path.string();
  const SafetensorsFile st = SafetensorsFile::open(st_path);
  check_finite_tensors(st);

  // Pair the tensors by module.
  struct Pair {
    std::string a_name, b_name, m_name;  // m: DoRA's magnitude
    bool embedding = false;
  };
  std::map<std::string, Pair> pairs;
  std::vector<std::string> modules;
  static const std::regex re(
      R"(base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B|lora_magnitude_vector))");
  for (const SafetensorsEntry& e : st.entries()) {
    std::smatch m;
    if (!std::regex_match(e.name, m, re))
      throw Error(st_file + ": tensor " + quote_str(e.name) +
                  ": not a LoRA tensor (expected base_model.model.<module>.lora_A.weight, "
                  ".lora_B.weight, .lora_embedding_A, .lora_embedding_B or "
                  ".lora_magnitude_vector)");
    const std::string module = m[1], kind = m[2];
    if (!pairs.count(module)) modules.push_back(module);
    Pair& p = pairs[module];
    const bool is_a = kind == "lora_A.weight" || kind == "lora_embedding_A";
    const bool is_m = kind == "lora_magnitude_vector";
    if (is_m && !lc.dora)
      throw Error(st_file + ": tensor " + quote_str(e.name) + ": a DoRA magnitude, but " +
                  cfg_file + " has no \"use_dora\": true");
    std::string& slot = is_m ? p.m_name : is_a ? p.a_name : p.b_name;
    const std::string what = is_m ? "magnitude vector" : is_a ? "A matrix" : "B matrix";
    if (!slot.empty())
      throw Error(st_file + ": tensor " + quote_str(e.name) + ": a second " + what +
                  " for module " + module);
    slot = e.name;
    if (!is_m) p.embedding = kind.rfind("lora_embedding", 0) == 0;
  }
  if (modules.empty()) throw Error(st_file + ": no LoRA tensors");
  check_target_modules(f, modules, st_file);

  // ssmtune's own files say how each module splits into slice terms.
  std::map<std::string, std::vector<nlohmann::json>> slices;
  if (st.metadata().count(kTermsKey)) {
    const nlohmann::json meta =
        parse_json_text(st.metadata().at(kTermsKey), st_file + ": metadata " + kTermsKey);
    if (!meta.is_array()) throw Error(st_file + ": metadata " + kTermsKey + ": expected an array");
    for (const nlohmann::json& t : meta) {
      const JsonFields tf(t, st_file + ": metadata " + kTermsKey);
      const std::string module = tf.get_string("module").value_or("");
      if (!pairs.count(module))
        throw Error(st_file + ": metadata " + kTermsKey + ": module " + quote_str(module) +
                    " has no tensors");
      slices[module].push_back(t);
    }
  }

  const std::vector<LinearSite> sites = linear_sites(c);
  std::vector<LoraTerm> terms;
  for (const std::string& module : modules) {
    const Pair& p = pairs[module];
    const auto shape = module_shape(c, sites, module);
    if (!shape || shape->embedding != p.embedding)
      throw Error(st_file + ": module " + quote_str(module) +
                  " is not a LoRA-able module of this model (" + std::to_string(c.n_layer) +
                  " layers; " + lora_target_names(sites, false) + ", embeddings)");
    if (p.a_name.empty() || p.b_name.empty())
      throw Error(st_file + ": module " + module + " has only one of its two LoRA matrices");
    if (lc.dora && p.embedding)
      throw Error(cfg_file + ": field \"use_dora\": DoRA on the embedding (" + module +
                  ") is not supported; ssmtune runs DoRA on " +
                  lora_target_names(sites, false));
    if (lc.dora && p.m_name.empty())
      throw Error(st_file + ": module " + module + " has no lora_magnitude_vector, but " +
                  cfg_file + " says \"use_dora\": true");
    const Tensor A_file = st.tensor(p.a_name).to(dtype), B_file = st.tensor(p.b_name).to(dtype);
    const std::int64_t r = p.embedding ? A_file.dim(0) : A_file.dim(0);
    const Shape a_expect = {r, shape->in}, b_expect = {shape->out, r};
    if (A_file.ndim() != 2 || A_file.shape() != a_expect)
      throw Error(st_file + ": tensor " + p.a_name + ": expected shape " + shape_str(a_expect) +
                  " (rank, in), got " + shape_str(A_file.shape()));
    if (B_file.shape() != b_expect)
      throw Error(st_file + ": tensor " + p.b_name + ": expected shape " + shape_str(b_expect) +
                  " (out, rank), got " + shape_str(B_file.shape()));
    const std::int64_t r_declared =
        pattern_value<std::int64_t>(rank_pattern, module).value_or(lc.rank);
    if (r_declared != r)
      throw Error(st_file + ": module " + module + " has rank " + std::to_string(r) + " but " +
                  cfg_file + " declares " + std::to_string(r_declared));
    const double alpha = pattern_value<double>(alpha_pattern, module).value_or(lc.alpha);
    const double scale = peft_scale(alpha, r, lc.rslora);

    LoraTerm base;
    base.module = module;
    base.layer = shape->site.layer;
    base.site = shape->site;
    base.embedding = shape->embedding;
    base.module_rows = shape->out;
    base.in = shape->in;
    base.scale = scale;
    if (p.embedding) {
      LoraTerm t = base;
      t.name = "embeddings";
      t.rows = shape->out;
      t.rank = r;
      t.A = transpose2d(A_file);
      t.B = B_file.clone();
      terms.push_back(std::move(t));
      continue;
    }
    std::vector<nlohmann::json> parts = slices[module];
    if (parts.empty()) {  // a plain PEFT module: one term over the whole weight
      parts.push_back({{"name", "layers." + std::to_string(shape->site.layer) + "." +
                                    shape->site.name},
                       {"row0", 0},
                       {"rows", shape->out},
                       {"rank0", 0},
                       {"rank", r}});
    }
    for (const nlohmann::json& part : parts) {
      const std::string where = st_file + ": metadata " + kTermsKey;
      const JsonFields pf(part, where);
      LoraTerm t = base;
      t.name = pf.get_string("name").value_or("");
      t.row0 = pf.get_int("row0", 0, shape->out - 1).value_or(-1);
      t.rows = pf.get_int("rows", 1, shape->out).value_or(0);
      const std::int64_t rank0 = pf.get_int("rank0", 0, r - 1).value_or(-1);
      t.rank = pf.get_int("rank", 1, r).value_or(0);
      if (t.name.empty() || t.row0 < 0 || t.rows == 0 || rank0 < 0 || t.rank == 0 ||
          t.row0 + t.rows > shape->out || rank0 + t.rank > r)
        throw Error(where + ": entry for " + module + " is incomplete or out of range");
      t.A = Tensor::empty({t.rank, shape->in}, dtype);
      t.B = Tensor::empty({t.rows, t.rank}, dtype);
      take_block(A_file, t.A, rank0, 0);
      take_block(B_file, t.B, t.row0, rank0);
      if (lc.dora) {
        if (t.row0 != 0 || t.rows != shape->out || parts.size() != 1)
          throw Error(where + ": " + t.name + " is part of " + module +
                      ", but DoRA terms cover whole modules");
        t.magnitude = st.tensor(p.m_name).to(dtype);
        if (t.magnitude.shape() != Shape{shape->out})
          throw Error(st_file + ": tensor " + p.m_name + ": expected shape " +
                      shape_str({shape->out}) + " (out), got " + shape_str(t.magnitude.shape()));
      }
      terms.push_back(std::move(t));
    }
  }
  // The order terms were planned in (ssmtune's metadata), else model order.
  std::map<std::string, std::size_t> planned;
  for (const auto& [module, parts] : slices)
    for (const nlohmann::json& part : parts)
      if (part.contains("name") && part["name"].is_string() && part.contains("order") &&
          part["order"].is_number_unsigned())
        planned[part["name"].get<std::string>()] = part["order"].get<std::size_t>();
  auto model_order = [](const LoraTerm& t) {
    return std::make_tuple(!t.embedding, t.site.index, t.row0);
  };
  std::stable_sort(terms.begin(), terms.end(), [&](const LoraTerm& a, const LoraTerm& b) {
    if (planned.count(a.name) && planned.count(b.name)) return planned[a.name] < planned[b.name];
    return model_order(a) < model_order(b);
  });
  return std::make_unique<LoraModel>(c, lc, std::move(terms), be);
}

}  // namespace ssmtune
