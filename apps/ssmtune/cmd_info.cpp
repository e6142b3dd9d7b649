// ssmtune info MODEL_DIR: what a model directory holds (architecture, sizes, storage, and
// parameter counts per module), read through the same validated loaders as training.
#include <spdlog/spdlog.h>

#include <map>
#include <set>

#include "apps/ssmtune/commands.h"
#include "apps/ssmtune/format.h"
#include "backend/backend.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io/safetensors_checkpoint.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/lora_adapter_io.h"
#include "peft/method_file.h"
#include "peft/param_tuning.h"
#include "peft/state_tuning.h"

namespace ssmtune {

namespace {

// "backbone.layers.3.mixer.in_proj.weight" -> "mixer.in_proj.weight" (Jamba: "model.layers.3.
// mamba.in_proj.weight" -> "mamba.in_proj.weight"); non-layer names unchanged.
std::string module_key(const std::string& name, bool* per_layer) {
  const std::string prefix =
      name.rfind("model.layers.", 0) == 0 ? "model.layers." : "backbone.layers.";
  *per_layer = name.rfind(prefix, 0) == 0;
  if (!*per_layer) return name;
  return name.substr(name.find('.', prefix.size()) + 1);
}

// The state methods of an adapter (ssmtune_state.safetensors): which, and how many parameters.
void print_state_methods(const std::filesystem::path& file) {
  const SafetensorsFile st = SafetensorsFile::open(file);
  const auto it = st.metadata().find("ssmtune.state_methods");
  std::printf("state methods %s\n",
              it == st.metadata().end() ? "(not recorded)" : it->second.c_str());
  std::int64_t total = 0;
  for (const auto& e : st.entries()) total += shape_numel(e.shape);
  std::printf("  %s tensors, %s parameters\n",
              with_commas(std::int64_t(st.entries().size())).c_str(), with_commas(total).c_str());
}

// Parameter tuning (partial, BitFit, SDT): each tuned tensor, its mode and its parameter count,
// read from the file alone (its metadata lists the entries).
void print_param_tuning(const std::filesystem::path& file) {
  const SafetensorsFile st = SafetensorsFile::open(file);
  const auto it = st.metadata().find("ssmtune.param_tuning");
  if (it == st.metadata().end())
    throw Error(file.string() + ": metadata \"ssmtune.param_tuning\" is missing");
  const nlohmann::json meta = parse_json_text(it->second, file.string() + ": metadata");
  if (meta.contains("sdt")) std::printf("sdt           %s\n", meta["sdt"].dump().c_str());
  if (!meta.contains("entries") || !meta["entries"].is_array())
    throw Error(file.string() + ": metadata ssmtune.param_tuning: no \"entries\" array");
  std::printf("\n%-52s %-7s %12s\n", "tuned tensor", "mode", "parameters");
  std::int64_t total = 0;
  for (const nlohmann::json& e : meta["entries"]) {
    const std::string name = e.value("name", ""), mode = e.value("mode", "");
    const std::int64_t n = st.contains(name) ? shape_numel(st.entry(name).shape) : 0;
    std::printf("  %-50s %-7s %12s\n", name.c_str(), mode.c_str(), with_commas(n).c_str());
    total += n;
  }
  std::printf("  %-50s %-7s %12s\n", "total", "", with_commas(total).c_str());
}

// The LoRA of an adapter: what it trains, on which modules, with how many parameters. Read with
// the same loader as training, checked against the base model it names when that loads.
void print_lora(const std::string& dir) {
  const nlohmann::json cfg = read_json_file(std::filesystem::path(dir) / "adapter_config.json");
  const std::string base =
      cfg.contains("base_model_name_or_path") && cfg["base_model_name_or_path"].is_string()
          ? cfg["base_model_name_or_path"].get<std::string>()
          : "";
  std::printf("base model    %s\n", base.empty() ? "(not recorded)" : base.c_str());
  if (base.empty() || !std::filesystem::exists(std::filesystem::path(base) / "config.json")) {
    // Without the base model the shapes cannot be checked; list the stored tensors.
    const SafetensorsFile st =
        SafetensorsFile::open(std::filesystem::path(dir) / "adapter_model.safetensors");
    std::int64_t total = 0;
    for (const auto& e : st.entries()) {
      std::printf("  %-70s %s\n", e.name.c_str(), shape_str(e.shape).c_str());
      total += shape_numel(e.shape);
    }
    std::printf("parameters    %s (base model not found: shapes not checked)\n",
                with_commas(total).c_str());
    return;
  }
  const ModelConfig mcfg = load_model_config(base);
  std::unique_ptr<Backend> be = make_cpu_backend();
  const auto lora = read_lora_adapter(dir, mcfg, DType::F32, *be);
  const LoraConfig& lc = lora->config();
  std::printf("method        %s, rank %lld, alpha %g%s, scale %g, dropout %g\n",
              lc.dora ? "DoRA" : "LoRA", (long long)lc.rank, lc.alpha, lc.rslora ? " (rsLoRA)" : "",
              lora->terms().front().scale, lc.dropout);
  std::int64_t total = 0;
  std::printf("\n%-40s %8s %12s\n", "term", "rank", "parameters");
  for (const LoraTerm& t : lora->terms()) {
    const std::int64_t n = t.A.numel() + t.B.numel() + (t.dora() ? t.magnitude.numel() : 0);
    std::printf("  %-38s %8lld %12s\n", t.name.c_str(), (long long)t.rank, with_commas(n).c_str());
    total += n;
  }
  std::printf("  %-38s %8s %12s\n", "total", "", with_commas(total).c_str());
}

// An adapter directory: its LoRA (adapter_config.json + adapter_model.safetensors) and/or its
// state methods (ssmtune_state.safetensors).
void run_adapter_info(const std::string& dir) {
  const std::filesystem::path path(dir);
  std::printf("adapter       %s\n", dir.c_str());
  if (std::filesystem::exists(path / "adapter_config.json")) print_lora(dir);
  if (std::filesystem::exists(path / kStateTuningFile))
    print_state_methods(path / kStateTuningFile);
  if (std::filesystem::exists(path / kParamTuningFile)) print_param_tuning(path / kParamTuningFile);
  for (const char* method : kMethodFileMethods)
    if (const auto settings = read_method_config(path, method)) {
      const SafetensorsFile st = SafetensorsFile::open(path / method_file_name(method));
      std::int64_t total = 0;
      for (const auto& e : st.entries()) total += shape_numel(e.shape);
      std::printf("%-13s %s, %s parameters\n", method, settings->dump().c_str(),
                  with_commas(total).c_str());
    }
}

// Jamba: the layer schedule (which layers are attention, which have experts) and the sizes.
void print_jamba_header(const ModelConfig& cfg) {
  std::printf("architecture  JambaForCausalLM (jamba), %lld layers\n", (long long)cfg.n_layer);
  std::string schedule;
  for (std::int64_t i = 0; i < cfg.n_layer; ++i) {
    const LayerKind k = layer_kind(cfg, i);
    schedule += (i ? ", " : "") + std::to_string(i) + " " +
                (k.mixer == MixerKind::Attention ? "attention" : "mamba") + "+" +
                (k.ffn == FeedForwardKind::MoE ? "moe" : "mlp");
  }
  std::printf("layers        %s\n", schedule.c_str());
  std::printf("sizes         hidden %lld, vocab %lld, ffn width %lld\n", (long long)cfg.d_model,
              (long long)cfg.vocab_size, (long long)cfg.d_ffn);
  std::printf("attention     %lld heads, %lld key/value heads, head dim %lld, no positions\n",
              (long long)cfg.n_heads, (long long)cfg.n_kv_heads, (long long)cfg.head_dim());
  std::printf("mamba         d_inner %lld, d_state %lld, d_conv %lld, dt_rank %lld, %s, %s\n",
              (long long)cfg.d_inner, (long long)cfg.d_state, (long long)cfg.d_conv,
              (long long)cfg.dt_rank, cfg.use_conv_bias ? "conv bias" : "no conv bias",
              cfg.use_bias ? "in/out_proj bias" : "no in/out_proj bias");
  std::printf("experts       %lld, top %lld, router loss coef %g (%s)\n",
              (long long)cfg.n_experts, (long long)cfg.experts_per_token,
              cfg.router_aux_loss_coef,
              cfg.output_router_logits ? "in the training loss" : "logged only");
  std::printf("options       %s embeddings, rms eps %g\n",
              cfg.tie_word_embeddings ? "tied" : "untied", cfg.layer_norm_epsilon);
}

// Jamba's parameter counts by layer kind: the Mamba mixers, the attention mixers, the dense
// MLPs, the experts and routers, the norms, the embedding and the head.
void print_counts_by_kind(const ModelConfig& cfg, ModelWeights& w) {
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> kinds;  // name -> layers, count
  std::vector<std::pair<std::string, std::int64_t>> model_counts;
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < cfg.n_layer; ++i) {
    const LayerKind k = layer_kind(cfg, i);
    const std::string mixer = k.mixer == MixerKind::Attention ? "attention" : "mamba mixers";
    const std::string ffn = k.ffn == FeedForwardKind::MoE ? "experts and routers" : "dense MLPs";
    kinds[mixer].first += 1;
    kinds[ffn].first += 1;
    kinds["norms"].first += 1;
  }
  for_each_param(cfg, w, [&](const std::string& name, Tensor& t) {
    total += t.numel();
    bool layered = false;
    const std::string key = module_key(name, &layered);
    if (!layered) {
      model_counts.emplace_back(name, t.numel());
      return;
    }
    const std::string kind = key.rfind("self_attn.", 0) == 0     ? "attention"
                             : key.rfind("mamba.", 0) == 0       ? "mamba mixers"
                             : key.find(".experts.") != std::string::npos ||
                                     key.find(".router.") != std::string::npos
                                 ? "experts and routers"
                             : key.rfind("feed_forward.", 0) == 0 ? "dense MLPs"
                                                                  : "norms";
    kinds[kind].second += t.numel();
  });
  std::printf("\n%-34s %14s %16s\n", "parameters", "layers", "count");
  for (const auto& [kind, lc] : kinds)
    std::printf("  %-32s %14lld %16s\n", kind.c_str(), (long long)lc.first,
                with_commas(lc.second).c_str());
  for (const auto& [key, count] : model_counts)
    std::printf("  %-32s %14s %16s\n", key.c_str(), "", with_commas(count).c_str());
  if (cfg.tie_word_embeddings) std::printf("  %-32s %14s %16s\n", "lm_head.weight (tied)", "", "0");
  std::printf("  %-32s %14s %16s\n", "total", "", with_commas(total).c_str());
}

void run_info(const std::string& model_dir) {
  if (is_adapter_dir(model_dir)) return run_adapter_info(model_dir);
  const ModelConfig cfg = load_model_config(model_dir);
  const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(model_dir);
  // Loading validates every tensor against the config: info never reports a broken model.
  ModelWeights w = load_model_weights(model_dir, cfg);

  std::set<std::string> dtypes;
  for (const auto& name : ckpt.names())
    dtypes.insert(std::string(dtype_name(ckpt.entry(name).dtype)));
  std::string dtype_list;
  for (const auto& d : dtypes) dtype_list += (dtype_list.empty() ? "" : ", ") + d;

  std::printf("model         %s\n", model_dir.c_str());
  if (cfg.is_jamba()) {
    print_jamba_header(cfg);
  } else if (cfg.is_mamba2()) {
    std::printf("architecture  Mamba2ForCausalLM (mamba2), %lld layers\n", (long long)cfg.n_layer);
    std::printf(
        "sizes         d_model %lld, d_inner %lld = %lld heads x %lld, n_groups %lld, d_state %lld, "
        "d_conv %lld, chunk %lld, vocab %lld\n",
        (long long)cfg.d_model, (long long)cfg.d_inner, (long long)cfg.ssm_heads,
        (long long)cfg.ssm_head_dim, (long long)cfg.n_groups, (long long)cfg.d_state,
        (long long)cfg.d_conv, (long long)cfg.chunk_size, (long long)cfg.vocab_size);
    std::printf("options       %s embeddings, %s, %s, rms eps %g, dt clamped to [%g, %g]\n",
                cfg.tie_word_embeddings ? "tied" : "untied",
                cfg.use_conv_bias ? "conv bias" : "no conv bias",
                cfg.use_bias ? "in/out_proj bias" : "no in/out_proj bias", cfg.layer_norm_epsilon,
                cfg.time_step_limit_min, cfg.time_step_limit_max);
  } else {
    std::printf("architecture  MambaForCausalLM (mamba), %lld layers\n", (long long)cfg.n_layer);
    std::printf(
        "sizes         d_model %lld, d_inner %lld, d_state %lld, d_conv %lld, dt_rank %lld, "
        "vocab %lld\n",
        (long long)cfg.d_model, (long long)cfg.d_inner, (long long)cfg.d_state,
        (long long)cfg.d_conv, (long long)cfg.dt_rank, (long long)cfg.vocab_size);
    std::printf("options       %s embeddings, %s, %s, rms eps %g\n",
                cfg.tie_word_embeddings ? "tied" : "untied",
                cfg.use_conv_bias ? "conv bias" : "no conv bias",
                cfg.use_bias ? "in/out_proj bias" : "no in/out_proj bias", cfg.layer_norm_epsilon);
  }
  std::printf("storage       %s, %zu tensors, stored as %s\n",
              ckpt.sharded() ? (std::to_string(ckpt.files().size()) + " shards").c_str()
                             : "model.safetensors",
              ckpt.names().size(), dtype_list.c_str());

  if (cfg.is_jamba()) return print_counts_by_kind(cfg, w);
  // Parameter counts: per module, summed over layers for the per-layer ones.
  std::map<std::string, std::int64_t> per_layer_counts;
  std::vector<std::pair<std::string, std::int64_t>> model_counts;
  std::int64_t total = 0;
  for_each_param(cfg, w, [&](const std::string& name, Tensor& t) {
    bool layered = false;
    const std::string key = module_key(name, &layered);
    if (layered)
      per_layer_counts[key] += t.numel();
    else
      model_counts.emplace_back(key, t.numel());
    total += t.numel();
  });
  std::printf("\n%-34s %14s %16s\n", "parameters", "per layer", "all layers");
  for (const auto& [key, count] : per_layer_counts)
    std::printf("  %-32s %14s %16s\n", key.c_str(), with_commas(count / cfg.n_layer).c_str(),
                with_commas(count).c_str());
  for (const auto& [key, count] : model_counts)
    std::printf("  %-32s %14s %16s\n", key.c_str(), "", with_commas(count).c_str());
  if (cfg.tie_word_embeddings) std::printf("  %-32s %14s %16s\n", "lm_head.weight (tied)", "", "0");
  std::printf("  %-32s %14s %16s\n", "total", "", with_commas(total).c_str());
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info",
                                 "Show what a model or adapter directory holds: sizes, "
                                 "dtypes, parameter counts per module.\n"
                                 "Example: ssmtune info tests/fixtures/mamba-tiny");
  static std::string model_dir;
  cmd->add_option("model_dir", model_dir,
                  "Hugging Face model directory (config.json + safetensors) or adapter directory")
      ->required();
  cmd->callback([] { run_info(model_dir); });
}

}  // namespace ssmtune
