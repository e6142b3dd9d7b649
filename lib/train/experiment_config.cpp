// The experiment config reader; docs/config.md is its reference page. One Section reader per
// JSON object reads each key (type- and range-checked through JsonFields) and records the value
// it settled on, default included, in the effective config. The keys a Section was asked for are
// that section's valid keys, so the parser, the unknown-key check and the effective config written
// to a run directory cannot drift apart.
#include "train/experiment_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "io/json_fields.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Upper bounds keep products such as batch_size * grad_accum * max_length far from int64
// overflow in the code that allocates from them; no real run comes near them.
constexpr std::int64_t kMaxSize = std::int64_t(1) << 20;   // lengths, batch sizes, ranks
constexpr std::int64_t kMaxCount = std::int64_t(1) << 40;  // steps, example counts
constexpr std::int64_t kMaxThreads = 4096;
constexpr std::int64_t kMaxSeed = std::numeric_limits<std::int64_t>::max();

// An interval for a real-valued key and how messages word it.
struct Range {
  double lo, hi;
  bool lo_open, hi_open;
  const char* wording;
};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Range kPositive{0, kInf, true, true, "a positive number"};
constexpr Range kNonNegative{0, kInf, false, true, "a non-negative number"};
constexpr Range kUnitOpen{0, 1, false, true, "a number in [0, 1)"};
constexpr Range kUnitClosed{0, 1, false, false, "a number in [0, 1]"};

bool in_range(const json& v, const Range& r) {
  if (!v.is_number()) return false;
  const double x = v.get<double>();
  return std::isfinite(x) && (r.lo_open ? x > r.lo : x >= r.lo) &&
         (r.hi_open ? x < r.hi : x <= r.hi);
}

// Enum names in the enums' declaration order, so an enum's value indexes its name.
const std::vector<std::string> kFormatNames = {"auto", "text", "prompt_completion", "tokens",
                                               "classification"};
const std::vector<std::string> kTooLongNames = {"error", "truncate"};
const std::vector<std::string> kScheduleNames = {"constant", "linear", "cosine"};
const std::vector<std::string> kMetricNames = {"loss", "perplexity", "accuracy", "exact_match"};

// Lexically normal, without a trailing separator, so "m/", "./m" and "m" name one model in the
// effective config and the resume hash.
std::string resolve_path(const std::string& base_dir, const std::string& path) {
  fs::path p = (fs::path(base_dir) / path).lexically_normal();
  if (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
  return p.string();
}

const json& empty_object() {
  static const json empty = json::object();
  return empty;
}

// Reads one JSON object of the config and records what it read into `out` (an object in the
// effective config). An absent section (nullptr) reads every key as its default.
class Section {
 public:
  Section(const json* object, const std::string& file, const std::string& prefix, json& out)
      : object_(object ? *object : empty_object()),
        file_(file),
        prefix_(prefix),
        fields_(object_, file, prefix),
        out_(out) {
    out_ = json::object();
  }

  bool has(const std::string& key) const { return object_.contains(key); }
  const json& raw(const std::string& key) const { return object_.at(key); }
  std::string where(const std::string& key) const { return fields_.where(key); }
  [[noreturn]] void fail(const std::string& key, const std::string& expected) const {
    fields_.fail(key, expected);
  }
  // Marks `key` valid and returns its value, or nullptr when absent.
  const json* take(const std::string& key) {
    known_.push_back(key);
    return has(key) ? &raw(key) : nullptr;
  }
  void record(const std::string& key, json value) { out_[key] = std::move(value); }

  std::int64_t integer(const std::string& key, std::int64_t min, std::int64_t max,
                       std::int64_t def) {
    take(key);
    const std::int64_t v = fields_.get_int(key, min, max).value_or(def);
    record(key, v);
    return v;
  }

  double number(const std::string& key, const Range& range, double def) {
    const json* v = take(key);
    if (v && !in_range(*v, range)) fail(key, range.wording);
    const double x = v ? v->get<double>() : def;
    record(key, x);
    return x;
  }

  bool boolean(const std::string& key, bool def) {
    take(key);
    const bool v = fields_.get_bool(key).value_or(def);
    record(key, v);
    return v;
  }

  // Any string.
  std::string string(const std::string& key, const std::string& def) {
    take(key);
    const std::string v = fields_.get_string(key).value_or(def);
    record(key, v);
    return v;
  }

  // A string among `choices` (worded as JsonFields::get_choice does).
  std::string choice(const std::string& key, const std::vector<std::string>& choices,
                     const std::string& def) {
    take(key);
    const std::string v = fields_.get_string(key).value_or(def);
    if (std::find(choices.begin(), choices.end(), v) == choices.end())
      fail(key, join_quoted(choices, " or "));
    record(key, v);
    return v;
  }

  // An enum by its name in `names` (declaration order).
  template <class E>
  E pick(const std::string& key, const std::vector<std::string>& names, E def) {
    const std::string chosen = choice(key, names, names[std::size_t(def)]);
    return E(std::find(names.begin(), names.end(), chosen) - names.begin());
  }

  // A path resolved against base_dir; absent, null and "" mean none ("", recorded as null),
  // which is an error when `required`.
  std::string path(const std::string& key, const std::string& base_dir, bool required) {
    const json* v = take(key);
    const bool none =
        !v || v->is_null() || (v->is_string() && v->get_ref<const std::string&>().empty());
    if (v && !v->is_null() && !v->is_string()) fail(key, "a path (a string)");
    if (none && required)
      throw UsageError(where(key) + ": missing; expected a path (a non-empty string)");
    if (none) {
      record(key, nullptr);
      return "";
    }
    const std::string resolved = resolve_path(base_dir, v->get<std::string>());
    record(key, resolved);
    return resolved;
  }

  // An array of distinct non-empty strings, each among `choices` unless that is empty.
  std::vector<std::string> strings(const std::string& key, const std::vector<std::string>& def,
                                   bool allow_empty, const std::vector<std::string>& choices = {}) {
    const json* v = take(key);
    std::vector<std::string> out = v ? std::vector<std::string>{} : def;
    if (v) {
      if (!v->is_array()) fail(key, "an array of strings");
      if (v->empty() && !allow_empty)
        throw UsageError(where(key) + ": expected at least one entry, got an empty array");
      for (std::size_t i = 0; i < v->size(); ++i) {
        const json& e = (*v)[i];
        const std::string at = key + "[" + std::to_string(i) + "]";
        if (!e.is_string() || e.get_ref<const std::string&>().empty())
          element_error(at, choices.empty() ? "a non-empty string" : join_quoted(choices, " or "),
                        e);
        const std::string& s = e.get_ref<const std::string&>();
        if (!choices.empty() && std::find(choices.begin(), choices.end(), s) == choices.end())
          element_error(at, join_quoted(choices, " or "), e);
        if (std::find(out.begin(), out.end(), s) != out.end())
          throw UsageError(where(at) + ": " + quote_str(s) + " is listed twice");
        out.push_back(s);
      }
    }
    record(key, out);
    return out;
  }

  // An object of numbers in `range` keyed by names (absent: empty).
  std::map<std::string, double> number_map(const std::string& key, const Range& range) {
    const json* v = take(key);
    std::map<std::string, double> out;
    if (v && !v->is_object()) fail(key, "an object of numbers");
    if (v)
      for (auto it = v->begin(); it != v->end(); ++it) {
        if (!in_range(it.value(), range))
          element_error(key + "." + it.key(), range.wording, it.value());
        out[it.key()] = it.value().get<double>();
      }
    record(key, out);
    return out;
  }

  // A nested object; absent reads as every default. It records into out[key].
  Section section(const std::string& key) {
    const json* v = take(key);
    if (v && !v->is_object()) fail(key, "an object");
    return Section(v, file_, prefix_ + key + ".", out_[key]);
  }

  [[noreturn]] void element_error(const std::string& at, const std::string& expected,
                                  const json& found) const {
    throw UsageError(where(at) + ": expected " + expected + ", got " + describe_json_value(found));
  }

  // Every key of the object must have been read: the first that was not is reported with the
  // closest valid key, or with the list of valid keys.
  void finish() const {
    for (auto it = object_.begin(); it != object_.end(); ++it) {
      if (std::find(known_.begin(), known_.end(), it.key()) != known_.end()) continue;
      std::string msg = file_ + ": unknown field " + quote_str(prefix_ + it.key());
      const std::string best = closest_key(it.key(), known_);
      if (!best.empty()) {
        msg += " (did you mean " + quote_str(prefix_ + best) + "?)";
      } else {
        const std::string which =
            prefix_.empty() ? "top-level fields"
                            : "fields of " + quote_str(prefix_.substr(0, prefix_.size() - 1));
        msg += " (valid " + which + ": " + join_quoted(known_, ", ") + ")";
      }
      throw UsageError(msg);
    }
  }

  static std::string join_quoted(const std::vector<std::string>& items, const char* sep) {
    std::string s;
    for (const auto& item : items) s += (s.empty() ? "" : sep) + quote_str(item);
    return s;
  }

 private:
  const json& object_;
  std::string file_;
  std::string prefix_;
  JsonFields fields_;
  json& out_;
  std::vector<std::string> known_;
};

DataConfig read_data(Section s, const std::string& base_dir) {
  const DataConfig def;
  DataConfig d;
  d.train = s.path("train", base_dir, false);
  d.eval = s.path("eval", base_dir, false);
  d.format = s.pick("format", kFormatNames, def.format);
  d.max_length = s.integer("max_length", 2, kMaxSize, def.max_length);
  d.too_long = s.pick("too_long", kTooLongNames, def.too_long);
  d.packing = s.boolean("packing", def.packing);
  d.shuffle = s.boolean("shuffle", def.shuffle);
  d.add_eos = s.boolean("add_eos", def.add_eos);
  d.labels = s.strings("labels", def.labels, true);
  s.finish();
  return d;
}

LoraConfig read_lora(Section s) {
  const LoraConfig def;
  LoraConfig l;
  // Whether each target names a module of the model is checked by the PEFT code.
  l.targets = s.strings("targets", def.targets, false);
  l.rank = s.integer("rank", 1, kMaxSize, def.rank);
  l.alpha = s.number("alpha", kPositive, def.alpha);
  l.dropout = s.number("dropout", kUnitOpen, def.dropout);
  l.rslora = s.boolean("rslora", def.rslora);
  l.scale = s.number("scale", kNonNegative, def.scale);
  l.init = s.choice("init", {"kaiming", "gaussian"}, def.init);
  l.dora = s.boolean("dora", def.dora);
  s.finish();
  return l;
}

PartialConfig read_partial(Section s) {
  const PartialConfig def;
  PartialConfig p;
  p.tensors = s.strings("tensors", def.tensors, false);
  p.mode = s.choice("mode", {"direct", "delta"}, def.mode);
  p.lr_multipliers = s.number_map("lr_multipliers", kPositive);
  p.weight_decay_multipliers = s.number_map("weight_decay_multipliers", kNonNegative);
  s.finish();
  if (p.tensors.empty())
    throw UsageError(s.where("tensors") + ": missing; expected the tensors to tune, e.g. "
                                          "[\"A_log\", \"D\"]");
  return p;
}

SdtConfig read_sdt(Section s) {
  const SdtConfig def;
  SdtConfig d;
  d.warmup_steps = s.integer("warmup_steps", 1, kMaxCount, def.warmup_steps);
  d.channel_freeze_fraction = s.number("channel_freeze_fraction", kUnitOpen, def.channel_freeze_fraction);
  d.state_freeze_fraction = s.number("state_freeze_fraction", kUnitOpen, def.state_freeze_fraction);
  s.finish();
  return d;
}

ParallelAdapterConfig read_parallel_adapter(Section s) {
  const ParallelAdapterConfig def;
  ParallelAdapterConfig c;
  c.rank = s.integer("rank", 1, kMaxSize, def.rank);
  c.scale = s.number("scale", kPositive, def.scale);
  c.dropout = s.number("dropout", kUnitOpen, def.dropout);
  s.finish();
  return c;
}

AdditionalScanConfig read_additional_scan(Section s) {
  const AdditionalScanConfig def;
  AdditionalScanConfig c;
  c.states = s.integer("states", 1, 1024, def.states);
  c.init = s.choice("init", {"copy", "s4d"}, def.init);
  s.finish();
  return c;
}

// peft.prompt / peft.prefix / peft.affix: {"tokens": T}; prompt also {"init_text": "..."}.
std::int64_t read_tokens(Section s, std::int64_t def, std::string* init_text = nullptr) {
  const std::int64_t t = s.integer("tokens", 1, 1 << 16, def);
  if (init_text) *init_text = s.string("init_text", "");
  s.finish();
  return t;
}

// An optional method section: absent or null = off (recorded as null), an object = on.
template <class C, class Read>
std::optional<C> read_optional(Section& s, const std::string& key, Read read) {
  if (s.has(key) && !s.raw(key).is_null()) return read(s.section(key));
  s.take(key);
  s.record(key, nullptr);
  return std::nullopt;
}

// Without a "peft" section the methods are the defaults (LoRA); a "peft" section names exactly
// the methods it turns on.
PeftConfig read_peft(Section& root, const std::string& base_dir) {
  const bool given = root.has("peft");
  Section s = root.section("peft");
  const PeftConfig def;
  PeftConfig p;
  const bool lora_on = !given || (s.has("lora") && !s.raw("lora").is_null());
  if (lora_on) {
    p.lora = read_lora(s.section("lora"));
  } else {
    s.take("lora");
    s.record("lora", nullptr);
  }
  p.full = s.boolean("full", def.full);
  p.partial = read_optional<PartialConfig>(s, "partial", read_partial);
  p.bitfit = s.boolean("bitfit", def.bitfit);
  p.sdt = read_optional<SdtConfig>(s, "sdt", read_sdt);
  p.parallel_adapter =
      read_optional<ParallelAdapterConfig>(s, "parallel_adapter", read_parallel_adapter);
  p.additional_scan =
      read_optional<AdditionalScanConfig>(s, "additional_scan", read_additional_scan);
  VirtualTokensConfig& vt = p.virtual_tokens;
  vt.prompt_tokens = read_optional<std::int64_t>(s, "prompt", [&](Section sec) {
                       return read_tokens(sec, 20, &vt.prompt_init_text);
                     }).value_or(0);
  vt.prefix_tokens =
      read_optional<std::int64_t>(s, "prefix", [](Section sec) { return read_tokens(sec, 10); })
          .value_or(0);
  vt.affix_tokens =
      read_optional<std::int64_t>(s, "affix", [](Section sec) { return read_tokens(sec, 3); })
          .value_or(0);
  p.initial_state = s.boolean("initial_state", def.initial_state);
  p.initial_conv_state = s.boolean("initial_conv_state", def.initial_conv_state);
  p.state_offset = s.choice("state_offset", {"", "h", "y"}, def.state_offset);
  p.init_from = s.path("init_from", base_dir, false);
  s.finish();
  if (!p.lora && !p.full && !p.partial && !p.bitfit && !p.sdt && !p.parallel_adapter &&
      !p.additional_scan && !vt.any() && !p.initial_state && !p.initial_conv_state &&
      p.state_offset.empty())
    throw UsageError(root.where("peft") +
                     ": no method is enabled; set \"peft.lora\" (an object, {} for LoRA's "
                     "defaults), \"peft.full\": true, \"peft.partial\", \"peft.bitfit\": "
                     "true, \"peft.sdt\", \"peft.parallel_adapter\", "
                     "\"peft.additional_scan\", \"peft.prompt\", \"peft.prefix\", "
                     "\"peft.affix\" (objects), \"peft.initial_state\": true or "
                     "\"peft.state_offset\": \"h\" or \"y\"");
  return p;
}

OptimizerConfig read_optimizer(Section s) {
  const OptimizerConfig def;
  OptimizerConfig o;
  o.lr = s.number("lr", kPositive, def.lr);
  if (const json* betas = s.take("betas")) {
    if (!betas->is_array() || betas->size() != 2)
      s.fail("betas", "an array of two numbers [beta1, beta2]");
    for (std::size_t i = 0; i < 2; ++i)
      if (!in_range((*betas)[i], kUnitOpen))
        s.element_error("betas[" + std::to_string(i) + "]", kUnitOpen.wording, (*betas)[i]);
    o.beta1 = (*betas)[0].get<double>();
    o.beta2 = (*betas)[1].get<double>();
  }
  s.record("betas", {o.beta1, o.beta2});
  o.eps = s.number("eps", kPositive, def.eps);
  o.weight_decay = s.number("weight_decay", kNonNegative, def.weight_decay);
  o.no_decay = s.strings("no_decay", def.no_decay, true);
  o.grad_clip = s.number("grad_clip", kNonNegative, def.grad_clip);
  s.finish();
  return o;
}

ScheduleConfig read_schedule(Section s) {
  const ScheduleConfig def;
  ScheduleConfig c;
  c.type = s.pick("type", kScheduleNames, def.type);
  c.warmup_steps = s.integer("warmup_steps", 0, kMaxCount, def.warmup_steps);
  c.warmup_ratio = s.number("warmup_ratio", kUnitOpen, def.warmup_ratio);
  c.min_lr_ratio = s.number("min_lr_ratio", kUnitClosed, def.min_lr_ratio);
  s.finish();
  // Silently preferring one would surprise whoever --set the other.
  if (c.warmup_steps > 0 && c.warmup_ratio > 0)
    throw UsageError(s.where("warmup_ratio") +
                     ": set warmup_steps or warmup_ratio, not both (warmup_steps is " +
                     std::to_string(c.warmup_steps) + ")");
  return c;
}

TrainingConfig read_training(Section s) {
  const TrainingConfig def;
  TrainingConfig t;
  t.steps = s.integer("steps", 0, kMaxCount, def.steps);
  t.epochs = s.integer("epochs", 1, kMaxCount, def.epochs);
  t.batch_size = s.integer("batch_size", 1, kMaxSize, def.batch_size);
  t.grad_accum = s.integer("grad_accum", 1, kMaxSize, def.grad_accum);
  t.log_every = s.integer("log_every", 1, kMaxCount, def.log_every);
  t.scan_chunk = s.integer("scan_chunk", 1, kMaxSize, def.scan_chunk);
  t.threads = s.integer("threads", 0, kMaxThreads, def.threads);
  t.device = s.choice("device", {"cpu", "cuda"}, def.device);
  t.matmul = s.choice("matmul", {"fp32", "bf16"}, def.matmul);
  t.frozen_weights = s.choice("frozen_weights", {"fp32", "bf16"}, def.frozen_weights);
  t.recompute = s.choice("recompute", {"none", "mixers"}, def.recompute);
  s.finish();
  return t;
}

EvalConfig read_eval(Section s, const DataConfig& data) {
  const EvalConfig def;
  EvalConfig e;
  e.every = s.integer("every", 0, kMaxCount, def.every);
  e.batch_size = s.integer("batch_size", 1, kMaxSize, def.batch_size);
  e.max_examples = s.integer("max_examples", 0, kMaxCount, def.max_examples);
  e.metrics = s.strings("metrics", def.metrics, false, kMetricNames);
  e.max_new_tokens = s.integer("max_new_tokens", 1, kMaxSize, def.max_new_tokens);
  Section es = s.section("early_stopping");
  EarlyStoppingConfig& stop = e.early_stopping;
  stop.metric = es.choice("metric", kMetricNames, def.early_stopping.metric);
  stop.patience = es.integer("patience", 0, kMaxCount, def.early_stopping.patience);
  stop.min_delta = es.number("min_delta", kNonNegative, def.early_stopping.min_delta);
  es.finish();
  s.finish();
  if (stop.patience > 0) {
    if (std::find(e.metrics.begin(), e.metrics.end(), stop.metric) == e.metrics.end())
      throw UsageError(es.where("metric") + ": " + quote_str(stop.metric) +
                       " is not computed; add it to \"eval.metrics\" (now " +
                       Section::join_quoted(e.metrics, ", ") + ")");
    if (data.eval.empty())
      throw UsageError(es.where("patience") + ": early stopping needs an eval set (\"data.eval\")");
  }
  return e;
}

CheckpointConfig read_checkpoint(Section s) {
  const CheckpointConfig def;
  CheckpointConfig c;
  c.every = s.integer("every", 0, kMaxCount, def.every);
  c.keep = s.integer("keep", 0, kMaxSize, def.keep);
  s.finish();
  return c;
}

ExperimentConfig parse(const json& j, const std::string& file, const std::string& base_dir) {
  if (!j.is_object())
    throw UsageError(file + ": expected a JSON object (an experiment config), got " +
                     describe_json_value(j));
  ExperimentConfig cfg;
  cfg.source = file;
  Section root(&j, file, "", cfg.json);
  cfg.model = root.path("model", base_dir, true);
  // Outputs go where the user runs the command, not next to the config: one shared base.json
  // swept with --set output_dir=... writes under the current directory.
  cfg.output_dir = root.path("output_dir", "", false);
  if (cfg.output_dir.empty()) {
    const std::string stem = fs::path(file).stem().string();
    cfg.output_dir = "runs/" + (stem.empty() ? std::string("experiment") : stem);
  }
  root.record("output_dir", cfg.output_dir);
  cfg.seed = std::uint64_t(root.integer("seed", 0, kMaxSeed, 0));
  cfg.data = read_data(root.section("data"), base_dir);
  cfg.peft = read_peft(root, base_dir);
  cfg.optimizer = read_optimizer(root.section("optimizer"));
  cfg.schedule = read_schedule(root.section("schedule"));
  cfg.training = read_training(root.section("training"));
  cfg.eval = read_eval(root.section("eval"), cfg.data);
  cfg.checkpoint = read_checkpoint(root.section("checkpoint"));
  root.finish();
  return cfg;
}

// Levenshtein distance with a swap of adjacent characters counted as one edit (the "optimal
// string alignment" variant): "alhpa" is one typo away from "alpha", not two.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> before(b.size() + 1), prev(b.size() + 1), row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      row[j] = std::min({prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        row[j] = std::min(row[j], before[j - 2] + 1);
    }
    std::swap(before, prev);
    std::swap(prev, row);
  }
  return prev[b.size()];
}

void erase_in(json& j, const char* section, const char* key) {
  const auto it = j.find(section);
  if (it != j.end() && it->is_object()) it->erase(key);
}

// JsonFields reports with Error (exit 1, right for model files); in an experiment config the
// same mistakes are configuration errors (exit 2).
template <class F>
auto as_config_error(F&& parse) {
  try {
    return parse();
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

}  // namespace

PeftConfig parse_peft_section(const json& j, const std::string& file,
                              const std::string& base_dir) {
  if (!j.is_object())
    throw UsageError(file + ": expected a JSON object (an experiment config), got " +
                     describe_json_value(j));
  json peft_only = json::object();
  if (j.contains("peft")) peft_only["peft"] = j["peft"];
  return as_config_error([&] {
    json effective;
    Section root(&peft_only, file, "", effective);
    PeftConfig p = read_peft(root, base_dir);
    root.finish();
    return p;
  });
}

ExperimentConfig parse_experiment_config(const nlohmann::json& j, const std::string& file,
                                         const std::string& base_dir) {
  return as_config_error([&] { return parse(j, file, base_dir); });
}

ExperimentConfig load_experiment_config(const std::string& path,
                                        const std::vector<std::string>& overrides) {
  // A file that cannot be read is a runtime error (exit 1); one that is not JSON is the
  // user's configuration mistake (exit 2).
  const std::string text = read_json_text(path);
  nlohmann::json j;
  try {
    j = parse_json_text(text, path);
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  // A file that is not an object gets parse's message, which names the file.
  if (j.is_object())
    for (const auto& o : overrides) apply_override(j, o);
  std::error_code ec;
  fs::path dir = fs::absolute(fs::path(path), ec).parent_path();
  if (ec) dir = fs::path(path).parent_path();
  return parse_experiment_config(j, path, dir.string());
}

void apply_override(nlohmann::json& j, const std::string& assignment) {
  const std::string shown = "--set " + quote_str(assignment);
  const std::size_t eq = assignment.find('=');
  if (eq == std::string::npos)
    throw UsageError(shown + ": expected KEY=VALUE, e.g. --set optimizer.lr=3e-4");
  const std::string key = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  for (std::size_t start = 0;;) {
    const std::size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  if (std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); }))
    throw UsageError(shown + ": the key " + quote_str(key) +
                     " has an empty part; expected a dotted name such as peft.lora.rank");
  if (!j.is_object()) throw UsageError(shown + ": the config is not a JSON object");
  json* node = &j;
  std::string path;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    path += (i ? "." : "") + parts[i];
    json& child = (*node)[parts[i]];
    // null reads as absent everywhere in the config ("peft.lora": null = LoRA off), so
    // setting a key inside it creates the object.
    if (child.is_null()) child = json::object();
    if (!child.is_object())
      throw UsageError(shown + ": cannot set " + quote_str(key) + " because " + quote_str(path) +
                       " is " + describe_json_value(child) + ", not an object");
    node = &child;
  }
  json parsed;
  try {
    parsed = value.empty() ? json("") : parse_json_text(value, shown);
  } catch (const Error& e) {
    // A number beyond a double (1e999) is a number the user meant, not a path: say so rather
    // than let the key's type check report a string.
    if (std::string_view(e.what()).find("number overflow") != std::string_view::npos)
      throw UsageError(shown + ": " + quote_str(value) + " is too large for a number");
    parsed = value;  // not JSON: a plain string such as a path
  }
  (*node)[parts.back()] = std::move(parsed);
}

std::string closest_key(const std::string& key, const std::vector<std::string>& candidates) {
  const std::size_t limit = std::max<std::size_t>(1, key.size() / 3);
  std::string best;
  std::size_t best_distance = limit + 1;
  for (const auto& c : candidates) {
    // The distance is at least the length difference; skipping those bounds the work on a
    // hostile multi-megabyte key.
    const std::size_t length_gap =
        c.size() > key.size() ? c.size() - key.size() : key.size() - c.size();
    if (length_gap > limit) continue;
    const std::size_t d = edit_distance(key, c);
    if (d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

std::string experiment_config_hash(const ExperimentConfig& cfg) {
  check(cfg.json.is_object(),
        "experiment_config_hash: the config has no effective JSON (use parse_experiment_config)");
  nlohmann::json j = cfg.json;
  // Where results go, how often they are logged and saved, and the thread count and device
  // (which move results only by float rounding, and may differ on the machine that resumes) do
  // not count.
  j.erase("output_dir");
  j.erase("checkpoint");
  erase_in(j, "training", "log_every");
  erase_in(j, "training", "threads");
  erase_in(j, "training", "device");
  // Recomputing activations gives the same bits (tests/recompute_test.cpp).
  erase_in(j, "training", "recompute");
  // bf16 products train something measurably different, so they count; fp32 (the default, and
  // all there was before the key existed) hashes as if absent, so old checkpoints still resume.
  if (j.contains("training") && j["training"].value("matmul", "fp32") == "fp32")
    erase_in(j, "training", "matmul");
  // Likewise bf16 frozen weights (an fp32 checkpoint's weights are rounded); fp32 as if absent.
  if (j.contains("training") && j["training"].value("frozen_weights", "fp32") == "fp32")
    erase_in(j, "training", "frozen_weights");
  // Evaluation changes the trained weights only by stopping early; without early stopping the
  // eval settings and the eval set are free to change between a run and its resume.
  if (cfg.eval.early_stopping.patience > 0) {
    erase_in(j, "eval", "batch_size");
  } else {
    j.erase("eval");
    erase_in(j, "data", "eval");
  }
  // Methods added after the first release hash only when on, so a checkpoint written before they
  // existed still resumes (its config hashes as it did then).
  if (j.contains("peft") && j["peft"].is_object()) {
    nlohmann::json& peft = j["peft"];
    for (const char* key : {"partial", "sdt", "parallel_adapter", "additional_scan", "prompt",
                            "prefix", "affix"})
      if (peft.contains(key) && peft[key].is_null()) peft.erase(key);
    for (const char* key : {"bitfit", "initial_conv_state"})
      if (peft.contains(key) && peft[key] == false) peft.erase(key);
  }
  // FNV-1a 64 of the canonical dump (nlohmann::json sorts keys). Paths from the file system may
  // hold invalid UTF-8: replaced rather than thrown on.
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char c : j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

}  // namespace ssmtune
