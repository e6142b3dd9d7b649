// load_tokenizer: which tokenizer a model directory holds, and its EOS / pad tokens.
#include <filesystem>
#include <functional>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"
#include "io/json_fields.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {

namespace fs = std::filesystem;

// A token named by a config file, and where (for messages).
struct NamedToken {
  std::string content;
  std::string where;  // `<file>: field "eos_token"`
};

struct SpecialTokenNames {
  std::optional<NamedToken> eos, pad;
};

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// eos_token / pad_token of tokenizer_config.json, then special_tokens_map.json, which wins
// where both name one (transformers' from_pretrained lets the map override the config).
// A token is a string or an AddedToken object {"content": ...}; null names none.
SpecialTokenNames read_special_token_names(const fs::path& dir) {
  SpecialTokenNames names;
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path path = dir / name;
    if (!is_file(path)) continue;
    const nlohmann::json j = read_json_file(path);
    const JsonFields fields(j, path.string());
    for (const char* key : {"eos_token", "pad_token"}) {
      if (!fields.has(key) || fields.raw(key).is_null()) continue;
      const nlohmann::json& v = fields.raw(key);
      std::optional<std::string> content;
      if (v.is_string()) {
        content = v.get<std::string>();
      } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
        content = v["content"].get<std::string>();
      }
      if (!content || content->empty())
        fields.fail(key, "a token string, an object with a \"content\" string, or null");
      NamedToken token{*content, fields.where(key)};
      (std::string(key) == "eos_token" ? names.eos : names.pad) = std::move(token);
    }
  }
  return names;
}

// The id of a named token, or an error naming the config field and the tokenizer file.
std::optional<std::int64_t> resolve(
    const std::optional<NamedToken>& token, const std::string& tokenizer_source,
    const std::function<std::optional<std::int64_t>(const std::string&)>& to_id) {
  if (!token) return std::nullopt;
  const auto id = to_id(token->content);
  if (!id)
    throw Error(token->where + ": token " + quote_str(token->content) + " is not in " +
                tokenizer_source);
  return id;
}

}  // namespace

std::vector<fs::path> tokenizer_files_in(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const char* name :
       {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"})
    if (is_file(dir / name)) files.push_back(dir / name);
  return files;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  const fs::path dir(model_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(model_dir + ": not a directory");
  std::vector<std::string> files;
  for (const fs::path& f : tokenizer_files_in(dir)) files.push_back(f.string());
  const fs::path json_path = dir / "tokenizer.json", sp_path = dir / "tokenizer.model";

  if (is_file(json_path)) {
    auto tok = std::make_unique<BpeTokenizer>(json_path);
    const SpecialTokenNames names = read_special_token_names(dir);
    auto to_id = [&](const std::string& t) { return tok->token_to_id(t); };
    auto eos = resolve(names.eos, tok->source(), to_id);
    // Without a config, "<|endoftext|>" ends a text: transformers' GPTNeoXTokenizerFast (the
    // class it uses for Mamba) and GPT-2's tokenizer default to it.
    if (!names.eos) eos = tok->token_to_id("<|endoftext|>");
    tok->set_special_ids(eos, resolve(names.pad, tok->source(), to_id));
    tok->set_files(std::move(files));
    return tok;
  }
  if (is_file(sp_path)) {
    auto tok = std::make_unique<SentencePieceTokenizer>(sp_path);
    const SpecialTokenNames names = read_special_token_names(dir);
    auto to_id = [&](const std::string& t) { return tok->piece_to_id(t); };
    tok->set_special_ids(resolve(names.eos, tok->source(), to_id),
                         resolve(names.pad, tok->source(), to_id));
    tok->set_files(std::move(files));
    return tok;
  }
  throw Error(model_dir + ": no tokenizer.json or tokenizer.model in this directory");
}

}  // namespace ssmtune
