#include "peft/virtual_tokens.h"

#include "core/error.h"
#include "core/memory_budget.h"
#include "core/rng.h"
#include "io/json_fields.h"
#include "peft/init_util.h"
#include "peft/method_file.h"

namespace ssmtune {

namespace {

// rows[i] = table[ids[i]]   table: (V, D) base embedding   rows: (T, D)
void copy_embedding_rows(Backend& be, const Tensor& table, const std::vector<std::int64_t>& ids,
                         Tensor& rows) {
  Tensor ids_host = Tensor::empty({std::int64_t(ids.size())}, DType::I64);
  std::copy(ids.begin(), ids.end(), ids_host.data<std::int64_t>());
  Tensor ids_dev = be.empty(ids_host.shape(), DType::I64);
  be.copy(ids_host, ids_dev);
  be.embedding_forward(ids_dev, table, rows);
}

// T token ids: the text's ids repeated to length T (cut at T), or T random ids of the vocabulary.
std::vector<std::int64_t> init_ids(std::int64_t T, const std::vector<std::int64_t>& text_ids,
                                   std::int64_t vocab, Rng& rng) {
  std::vector<std::int64_t> ids;
  for (std::int64_t t = 0; t < T; ++t)
    ids.push_back(text_ids.empty() ? std::int64_t(rng.below(std::uint64_t(vocab)))
                                   : text_ids[std::size_t(t) % text_ids.size()]);
  return ids;
}

}  // namespace

VirtualTokens::VirtualTokens(const ModelConfig& cfg, const VirtualTokensConfig& config, DType dtype,
                             Backend& be)
    : config_(config), be_(be) {
  // An affix step is in_proj's output without z: x~ (E) on Mamba-1, xBC and dt_in on Mamba-2.
  const std::int64_t D = cfg.d_model;
  const std::int64_t W = cfg.is_mamba2() ? cfg.conv_dim() + cfg.ssm_heads : cfg.d_inner;
  const std::uint64_t n_mamba = ssm_layers(cfg).size();
  check_trainables_fit("peft.prompt.tokens = " + std::to_string(config.prompt_tokens) +
                           ", peft.prefix.tokens = " + std::to_string(config.prefix_tokens) +
                           ", peft.affix.tokens = " + std::to_string(config.affix_tokens),
                       std::uint64_t(config.prompt_tokens * D) +
                           n_mamba * std::uint64_t(config.prefix_tokens * D +
                                                   config.affix_tokens * W),
                       dtype_size(dtype), be.free_device_bytes());
  if (config.prompt_tokens > 0) {
    prompt_ = be_.zeros({config.prompt_tokens, D}, dtype);
    dprompt_ = be_.zeros({config.prompt_tokens, D}, dtype);
  }
  // Undefined at attention layers (virtual_tokens.h); affix tuning's vectors enter a mixer's
  // conv (and on Mamba-2 its dt too).
  if (config.prefix_tokens > 0)
    zeros_per_layer(cfg, ssm_layers(cfg), be_, {config.prefix_tokens, D}, dtype, prefix_,
                    dprefix_);
  if (config.affix_tokens > 0)
    zeros_per_layer(cfg, ssm_layers(cfg), be_, {config.affix_tokens, W}, dtype, affix_, daffix_);
}

void VirtualTokens::init(const ModelWeights& base, std::uint64_t seed) {
  const std::int64_t V = base.embedding.dim(0);
  if (prompt_.defined()) {
    Rng rng = Rng::for_stream(seed, stream_id("prompt"));
    copy_embedding_rows(be_, base.embedding,
                        init_ids(prompt_.dim(0), config_.prompt_init_ids, V, rng), prompt_);
  }
  for (std::size_t i = 0; i < prefix_.size(); ++i) {
    if (!prefix_[i].defined()) continue;  // an attention layer
    Rng rng = Rng::for_stream(seed, stream_id(("prefix:" + std::to_string(i)).c_str()));
    copy_embedding_rows(be_, base.embedding, init_ids(prefix_[i].dim(0), {}, V, rng), prefix_[i]);
  }
  for (Tensor& a : affix_)
    if (a.defined()) a.fill_zero();
}

void VirtualTokens::append_trainables(std::vector<TrainableParam>& out) {
  if (prompt_.defined()) out.push_back({"prompt.embeddings", prompt_, dprompt_});
  for (std::size_t i = 0; i < prefix_.size(); ++i)
    if (prefix_[i].defined())
      out.push_back({"prefix.layers." + std::to_string(i) + ".tokens", prefix_[i], dprefix_[i]});
  for (std::size_t i = 0; i < affix_.size(); ++i)
    if (affix_[i].defined())
      out.push_back({"affix.layers." + std::to_string(i) + ".x", affix_[i], daffix_[i]});
}

Tensor VirtualTokens::prefix(std::int64_t layer) {
  return prefix_.empty() ? Tensor() : prefix_.at(std::size_t(layer));
}
Tensor VirtualTokens::affix(std::int64_t layer) {
  return affix_.empty() ? Tensor() : affix_.at(std::size_t(layer));
}
void VirtualTokens::prompt_backward(const Tensor& d) {
  if (prompt_.defined()) be_.add(d, dprompt_);
}
void VirtualTokens::prefix_backward(std::int64_t layer, const Tensor& d) {
  if (!prefix_.empty()) be_.add(d, dprefix_.at(std::size_t(layer)));
}
void VirtualTokens::affix_backward(std::int64_t layer, const Tensor& d) {
  if (!affix_.empty()) be_.add(d, daffix_.at(std::size_t(layer)));
}

void VirtualTokens::save(const std::filesystem::path& dir, const AdapterInfo& info) {
  write_virtual_tokens(dir, *this, info.metadata);
}

void VirtualTokens::load(const std::filesystem::path& dir) {
  load_trained_method(dir, "virtual_tokens", *this, be_);
}

std::string VirtualTokens::unmergeable_reason() const {
  return method_file_name("virtual_tokens") +
         " holds virtual tokens (prompt / prefix / affix tuning), which lengthen every sequence";
}

std::vector<std::string> VirtualTokens::summary() {
  const auto numel = [](const std::vector<Tensor>& ts) {
    std::int64_t n = 0;
    for (const Tensor& t : ts)
      if (t.defined()) n += t.numel();
    return std::to_string(n);
  };
  std::vector<std::string> lines;
  if (config_.prompt_tokens)
    lines.push_back("prompt tuning: " + std::to_string(config_.prompt_tokens) + " tokens, " +
                    std::to_string(prompt_.numel()) + " parameters");
  if (config_.prefix_tokens)
    lines.push_back("prefix tuning: " + std::to_string(config_.prefix_tokens) +
                    " tokens per Mamba layer, " + numel(prefix_) + " parameters");
  if (config_.affix_tokens)
    lines.push_back("affix tuning: " + std::to_string(config_.affix_tokens) +
                    " tokens per Mamba layer, " + numel(affix_) + " parameters");
  return lines;
}

void write_virtual_tokens(const std::filesystem::path& dir, VirtualTokens& vt,
                          const std::map<std::string, std::string>& metadata) {
  const VirtualTokensConfig& c = vt.config();
  save_method(dir, "virtual_tokens", vt,
                    {{"prompt_tokens", c.prompt_tokens},
                     {"prefix_tokens", c.prefix_tokens},
                     {"affix_tokens", c.affix_tokens}},
                    metadata);
}

std::unique_ptr<VirtualTokens> read_virtual_tokens(const std::filesystem::path& dir,
                                                   const ModelConfig& cfg, DType dtype,
                                                   Backend& be) {
  const std::optional<nlohmann::json> settings = read_method_config(dir, "virtual_tokens");
  if (!settings) return nullptr;
  const JsonFields f(*settings, (dir / method_file_name("virtual_tokens")).string() +
                                    ": metadata ssmtune.method_config");
  VirtualTokensConfig c;
  constexpr std::int64_t kMaxTokens = 1 << 16;
  c.prompt_tokens = f.get_int("prompt_tokens", 0, kMaxTokens).value_or(0);
  c.prefix_tokens = f.get_int("prefix_tokens", 0, kMaxTokens).value_or(0);
  c.affix_tokens = f.get_int("affix_tokens", 0, kMaxTokens).value_or(0);
  if (!c.any()) f.fail("prompt_tokens", "at least one of prompt/prefix/affix_tokens > 0");
  auto vt = std::make_unique<VirtualTokens>(cfg, c, dtype, be);
  load_method(dir, "virtual_tokens", *vt, be);
  return vt;
}

}  // namespace ssmtune
