// Reading tokenizer.json into a BpeModel, refusing what the encoder cannot reproduce exactly.
// Field meanings follow the tokenizers serialisation (docs/models.md "tokenizer.json").
#include <limits>
#include <set>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "io/json_fields.h"
#include "io/json_file.h"

namespace ssmtune {

namespace {

using nlohmann::json;

std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
  return (std::uint64_t(std::uint32_t(left)) << 32) | std::uint32_t(right);
}

// The id of a vocab entry when it is an integer in [0, n).
std::optional<std::int32_t> vocab_id(const json& v, std::size_t n) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u < n) return std::int32_t(u);
  } else if (v.is_number_integer()) {
    const auto i = v.get<std::int64_t>();
    if (i >= 0 && std::uint64_t(i) < n) return std::int32_t(i);
  }
  return std::nullopt;
}

void read_vocab(const JsonFields& model, BpeModel& m) {
  if (!model.has("vocab")) throw Error(model.where("vocab") + ": missing");
  const json& vocab = model.raw("vocab");
  if (!vocab.is_object()) model.fail("vocab", "an object mapping token to id");
  const std::size_t n = vocab.size();
  if (n == 0 || n > std::size_t(std::numeric_limits<std::int32_t>::max()))
    throw Error(model.where("vocab") + ": expected 1 to 2^31-1 entries, got " + std::to_string(n));
  std::vector<const std::string*> owner(n, nullptr);
  m.vocab.reserve(n);
  for (const auto& [token, v] : vocab.items()) {
    const auto id = vocab_id(v, n);
    if (!id)
      throw Error(model.where("vocab") + ": token " + quote_str(token) +
                  ": expected an integer id from 0 to " + std::to_string(n - 1) +
                  " (ids must be 0..n-1 for n entries), got " + describe_json_value(v));
    const auto [it, inserted] = m.vocab.emplace(token, *id);
    if (owner[std::size_t(*id)])
      throw Error(model.where("vocab") + ": id " + std::to_string(*id) + " is given to both " +
                  quote_str(*owner[std::size_t(*id)]) + " and " + quote_str(token));
    owner[std::size_t(*id)] = &it->first;
  }
}

void read_merges(const JsonFields& model, BpeModel& m) {
  if (!model.has("merges")) throw Error(model.where("merges") + ": missing");
  const json& merges = model.raw("merges");
  if (!merges.is_array()) model.fail("merges", "an array");
  if (merges.size() > std::size_t(std::numeric_limits<std::int32_t>::max()))
    throw Error(model.where("merges") + ": too many merges");
  m.merges.reserve(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const json& entry = merges[i];
    const std::string where = model.where("merges") + "[" + std::to_string(i) + "]";
    std::string left, right;
    // Two spellings: "left right" (tokenizers < 0.20, split at the one space) and
    // ["left", "right"] (tokenizers >= 0.20).
    if (entry.is_string()) {
      const auto& s = entry.get_ref<const std::string&>();
      const auto space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        throw Error(where + ": expected \"left right\" (two tokens and one space), got " +
                    describe_json_value(entry));
      left = s.substr(0, space), right = s.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      left = entry[0].get<std::string>(), right = entry[1].get<std::string>();
    } else {
      throw Error(where + ": expected \"left right\" or [\"left\", \"right\"], got " +
                  describe_json_value(entry));
    }
    std::int32_t ids[3];
    const std::string parts[3] = {left, right, left + right};
    for (int k = 0; k < 3; ++k) {
      const auto it = m.vocab.find(parts[k]);
      if (it == m.vocab.end())
        throw Error(where + ": " + (k == 2 ? "merged token " : "token ") + quote_str(parts[k]) +
                    " is not in model.vocab");
      ids[k] = it->second;
    }
    // A pair listed twice keeps its last rank: tokenizers collects the merges into a map.
    m.merges[pair_key(ids[0], ids[1])] = {std::int32_t(i), ids[2]};
  }
}

void read_model(const JsonFields& top, BpeModel& m) {
  const auto model = top.get_object("model");
  if (!model) throw Error(top.where("model") + ": missing");
  const auto type = model->get_string("type");
  if (!type) throw Error(model->where("type") + ": missing (expected \"BPE\")");
  if (*type != "BPE") model->fail("type", "\"BPE\" (the only tokenizer model supported)");
  read_vocab(*model, m);
  read_merges(*model, m);
  if (model->has("dropout") && !model->raw("dropout").is_null()) {
    const auto dropout = model->get_number("dropout");
    if (*dropout != 0) model->fail("dropout", "null or 0 (BPE dropout is random)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!model->has(key) || model->raw(key).is_null()) continue;
    if (!model->get_string(key)->empty()) model->fail(key, "null (not supported)");
  }
  if (model->has("unk_token") && !model->raw("unk_token").is_null()) {
    // tokenizers only complains about an unk_token outside the vocab when it needs it.
    m.unk_token = *model->get_string("unk_token");
    const auto it = m.vocab.find(*m.unk_token);
    if (it != m.vocab.end()) m.unk_id = it->second;
  }
  m.fuse_unk = model->get_bool("fuse_unk").value_or(false);
  m.byte_fallback = model->get_bool("byte_fallback").value_or(false);
  m.ignore_merges = model->get_bool("ignore_merges").value_or(false);
}

// A component that must be {"type": "ByteLevel", ...}.
JsonFields byte_level_component(const JsonFields& top, const char* key) {
  const auto part = top.has(key) && !top.raw(key).is_null() ? top.get_object(key) : std::nullopt;
  if (!part) throw Error(top.where(key) + ": missing (expected a ByteLevel " + key + ")");
  const auto type = part->get_string("type");
  if (!type) throw Error(part->where("type") + ": missing (expected \"ByteLevel\")");
  if (*type != "ByteLevel") part->fail("type", "\"ByteLevel\" (the only one supported)");
  return *part;
}

void read_pipeline(const JsonFields& top, BpeModel& m) {
  if (top.has("normalizer") && !top.raw("normalizer").is_null()) {
    const auto normalizer = top.get_object("normalizer");
    const auto type = normalizer->get_string("type");
    if (!type) throw Error(normalizer->where("type") + ": missing");
    if (*type != "NFC")
      normalizer->fail("type", "\"NFC\" or a null normalizer (the only ones supported)");
    m.nfc = true;
  }
  const JsonFields pre = byte_level_component(top, "pre_tokenizer");
  m.add_prefix_space = pre.get_bool("add_prefix_space").value_or(true);  // ByteLevel::default
  m.use_regex = pre.get_bool("use_regex").value_or(true);
  byte_level_component(top, "decoder");
}

// tokenizers' AddedVocabulary::add_tokens, one token at a time as its deserializer does: a
// token already in the vocab keeps that id, a new one gets the next id after the model vocab
// and the added tokens so far. A file whose "id" disagrees is refused rather than guessed at.
void read_added_tokens(const JsonFields& top, const std::string& file, BpeModel& m) {
  if (!top.has("added_tokens") || top.raw("added_tokens").is_null()) return;
  const json& list = top.raw("added_tokens");
  if (!list.is_array()) top.fail("added_tokens", "an array");
  const std::int64_t n_vocab = std::int64_t(m.vocab.size());
  std::set<std::string> contents;
  std::optional<std::int64_t> max_added;
  std::vector<BpeAddedToken> special, plain;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const JsonFields entry(list[i], file, "added_tokens[" + std::to_string(i) + "].");
    BpeAddedToken t;
    const auto id = entry.get_int("id", 0, std::numeric_limits<std::int32_t>::max());
    const auto content = entry.get_string("content");
    if (!id || !content || content->empty())
      throw Error(entry.where(!id ? "id" : "content") + ": missing or empty");
    t.content = *content;
    t.single_word = entry.get_bool("single_word").value_or(false);
    t.lstrip = entry.get_bool("lstrip").value_or(false);
    t.rstrip = entry.get_bool("rstrip").value_or(false);
    t.normalized = entry.get_bool("normalized").value_or(true);
    t.special = entry.get_bool("special").value_or(false);
    if (!contents.insert(t.content).second)
      throw Error(entry.where("content") + ": " + quote_str(t.content) +
                  " is listed twice in added_tokens");
    const auto in_vocab = m.vocab.find(t.content);
    if (in_vocab != m.vocab.end()) {
      t.id = in_vocab->second;
    } else {
      t.id = !max_added ? n_vocab : *max_added >= n_vocab ? *max_added + 1 : n_vocab;
    }
    if (t.id != *id)
      throw Error(entry.where("id") + ": " + std::to_string(*id) + " for " + quote_str(t.content) +
                  ", but the tokenizers library gives it id " + std::to_string(t.id) +
                  (in_vocab != m.vocab.end() ? " (its id in model.vocab)"
                                             : " (the next id after model.vocab and the added "
                                               "tokens before it)"));
    max_added = std::max(max_added.value_or(t.id), t.id);
    (t.special ? special : plain).push_back(std::move(t));
  }
  m.added_tokens = std::move(special);
  m.added_tokens.insert(m.added_tokens.end(), plain.begin(), plain.end());
}

}  // namespace

BpeModel load_bpe_model(const std::filesystem::path& tokenizer_json) {
  const std::string file = tokenizer_json.string();
  const json j = read_json_file(tokenizer_json);
  const JsonFields top(j, file);
  if (top.has("version") && top.get_string("version") != "1.0") top.fail("version", "\"1.0\"");
  BpeModel m;
  read_model(top, m);
  read_pipeline(top, m);
  read_added_tokens(top, file, m);
  m.vocab_size = std::int64_t(m.vocab.size());
  for (const auto& t : m.added_tokens) m.vocab_size = std::max(m.vocab_size, t.id + 1);
  return m;
}

}  // namespace ssmtune
