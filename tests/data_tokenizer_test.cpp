// Tokenizers against the reference libraries. Fixtures: tests/fixtures/tokenizers/, made by
// data_scripts/make_tokenizer_fixtures.py (Hugging Face tokenizers 0.19.1 and sentencepiece
// 0.1.97; see versions.json there): exact ids and decodes, so no tolerances.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "data/bpe_byte_level.h"
#include "data/bpe_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"
#include "data/unicode.h"
#include "data/unicode_nfc.h"
#include "data/unicode_tables.h"
#include "io/json_file.h"
#include "io_test_util.h"

using namespace ssmtune;
using nlohmann::json;
using ssmtune::test::read_bytes;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;

namespace {

const std::string kDir = SSMTUNE_FIXTURES_DIR "/tokenizers";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::vector<json> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  REQUIRE(!out.empty());
  return out;
}

const std::vector<json>& cases() {
  static const std::vector<json> c = read_jsonl(kDir + "/cases.jsonl");
  return c;
}

// The input of a case: its text, or the bytes of its "hex" (ill-formed UTF-8).
std::string input_of(const json& rec) {
  if (rec.contains("text")) return rec["text"].get<std::string>();
  const std::string hex = rec["hex"].get<std::string>();
  std::string bytes;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  return bytes;
}

std::vector<std::int64_t> ids_of(const json& j) {
  return j["ids"].get<std::vector<std::int64_t>>();
}

// Every case that has results for `key` encodes and decodes as the reference says.
void check_against_reference(const Tokenizer& tok, const std::string& key) {
  int checked = 0;
  for (const json& rec : cases()) {
    if (!rec.contains(key)) continue;
    INFO(key << " case " << rec["name"].get<std::string>());
    const std::string input = input_of(rec);
    const auto ids = ids_of(rec[key]);
    CHECK(tok.encode(input) == ids);
    CHECK(tok.decode(ids) == rec[key]["decoded"].get<std::string>());
    if (rec[key].contains("decoded_skip"))
      CHECK(tok.decode(ids, true) == rec[key]["decoded_skip"].get<std::string>());
    ++checked;
  }
  CHECK(checked >= 10);
}

json read_json(const std::string& path) { return json::parse(read_bytes(path)); }

}  // namespace

TEST_CASE("byte-level BPE matches the tokenizers library on every fixture case", "[tokenizer]") {
  const auto tok = load_tokenizer(kDir + "/bpe");
  REQUIRE(dynamic_cast<const BpeTokenizer*>(tok.get()));
  check_against_reference(*tok, "bpe");
  CHECK(tok->vocab_size() == 1010);  // 1000 trained + 10 added tokens
}

TEST_CASE("BPE options unk, fuse_unk, byte_fallback, ignore_merges, prefix space match",
          "[tokenizer]") {
  // tiny_unk: unk + fuse_unk, ignore_merges, add_prefix_space, a merge listed twice;
  // tiny_fallback: byte_fallback (with tokenizers' late flush of a pending unk), no regex.
  for (const char* variant : {"tiny_unk", "tiny_fallback"}) {
    const BpeTokenizer tok(kDir + "/" + variant + "/tokenizer.json");
    check_against_reference(tok, variant);
  }
}

TEST_CASE("BPE round trip gives the NFC of the text, and NFC matches the library", "[tokenizer]") {
  const BpeTokenizer tok(kDir + "/bpe/tokenizer.json");
  int round_trips = 0;
  for (const json& rec : cases()) {
    if (!rec.contains("text")) continue;
    INFO("case " << rec["name"].get<std::string>());
    const std::string text = rec["text"], expected_nfc = rec["nfc"];
    CHECK(nfc(text) == expected_nfc);
    // Not for the cases where the library does not round-trip either (lstrip/rstrip tokens
    // swallow spaces; added tokens with NFD content decode to it).
    if (!rec["bpe"]["round_trip"].get<bool>()) continue;
    CHECK(tok.decode(tok.encode(text)) == expected_nfc);
    ++round_trips;
  }
  CHECK(round_trips >= 40);
  for (const json& rec : read_jsonl(kDir + "/nfc.jsonl")) {
    INFO("nfc.jsonl " << rec["name"].get<std::string>());
    CHECK(nfc(rec["input"].get<std::string>()) == rec["nfc"].get<std::string>());
  }
}

TEST_CASE("the GPT-2 pattern splits as the ByteLevel pre-tokenizer does", "[tokenizer]") {
  int checked = 0;
  for (const json& rec : cases()) {
    if (!rec.contains("pieces")) continue;
    INFO("case " << rec["name"].get<std::string>());
    const std::string text = rec["text"];
    std::vector<std::string_view> pieces;
    byte_level::split_gpt2(text, pieces);
    std::vector<std::string> mapped;
    for (std::string_view p : pieces) {
      mapped.emplace_back();
      byte_level::append_byte_chars(p, mapped.back());
    }
    CHECK(mapped == rec["pieces"].get<std::vector<std::string>>());
    ++checked;
  }
  CHECK(checked >= 40);
}

TEST_CASE("ill-formed UTF-8 keeps its bytes through BPE and decodes lossily", "[tokenizer]") {
  const BpeTokenizer tok(kDir + "/bpe/tokenizer.json");
  const SentencePieceTokenizer sp(kDir + "/sp/tokenizer.model");
  Rng rng(7);
  const std::string alphabet = std::string("ab \n\t'1") + "\xc3\xa4\xe4\xb8\xad\xf0\x9f\x98\x80";
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const auto n = rng.below(40);
    for (std::uint64_t i = 0; i < n; ++i)
      s += rng.below(3) == 0 ? char(rng.below(256)) : alphabet[rng.below(alphabet.size())];
    INFO("input bytes " << ssmtune::quote_str(s));
    const auto ids = tok.encode(s);
    for (auto id : ids) CHECK((id >= 0 && id < tok.vocab_size()));
    // NFC may recompose valid parts; compare with the NFC of the input, bytes kept.
    CHECK(tok.decode_bytes(ids) == nfc(s));
    CHECK(tok.decode(ids) == unicode::utf8_lossy(nfc(s)));
    CHECK_NOTHROW(sp.decode(sp.encode(s)));
  }
  // Maximal-subpart replacement, as Rust's from_utf8_lossy and Python's "replace".
  const std::string fffd = "\xEF\xBF\xBD";
  CHECK(unicode::utf8_lossy(std::string("a\xff") + "b") == "a" + fffd + "b");
  CHECK(unicode::utf8_lossy("\xe4\xb8") == fffd);                    // truncated: one
  CHECK(unicode::utf8_lossy("\xed\xa0\x80") == fffd + fffd + fffd);  // surrogate: three
}

TEST_CASE("SentencePiece matches the sentencepiece library on every fixture case", "[tokenizer]") {
  const auto tok = load_tokenizer(kDir + "/sp");
  REQUIRE(dynamic_cast<const SentencePieceTokenizer*>(tok.get()));
  check_against_reference(*tok, "sp");  // ill-formed UTF-8 cases included
  CHECK(tok->vocab_size() == 500);
  CHECK(tok->eos_id() == 2);  // the model's own </s> and pad (pad_id=3 at training)
  CHECK(tok->pad_id() == 3);
  CHECK(tok->files() == std::vector<std::string>{kDir + "/sp/tokenizer.model"});
  require_error([&] { tok->decode({500}); }, {"tokenizer.model", "token id 500"});
  require_error([&] { tok->decode({-1}); }, {"token id -1"});
}

TEST_CASE("merges spelled as [\"a\", \"b\"] arrays give the same ids", "[tokenizer]") {
  TempDir dir;
  json j = read_json(kDir + "/bpe/tokenizer.json");
  for (json& m : j["model"]["merges"]) {
    const std::string s = m;
    m = json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  write_bytes(dir / "tokenizer.json", j.dump());
  const BpeTokenizer arrays((dir / "tokenizer.json").string());
  const BpeTokenizer strings(kDir + "/bpe/tokenizer.json");
  for (const json& rec : cases())
    CHECK(arrays.encode(input_of(rec)) == strings.encode(input_of(rec)));
}

TEST_CASE("a few MB of text encode consistently, in one piece or line by line", "[tokenizer]") {
  const BpeTokenizer tok(kDir + "/bpe/tokenizer.json");
  std::string line;
  for (const json& rec : cases())
    if (rec["name"] == "long_mixed") line = rec["text"].get<std::string>() + "\n";
  REQUIRE(!line.empty());
  const auto line_ids = tok.encode(line);
  std::string text;
  std::vector<std::int64_t> expected;
  while (text.size() < (std::size_t(3) << 20)) {
    text += line;
    expected.insert(expected.end(), line_ids.begin(), line_ids.end());
  }
  // The line starts and ends so that no piece or merge crosses a line boundary.
  CHECK(tok.encode(text) == expected);
}

TEST_CASE("load_tokenizer reads EOS and pad from the configs and lists the files", "[tokenizer]") {
  const auto tok = load_tokenizer(kDir + "/bpe");
  CHECK(tok->eos_id() == 0);  // "<|endoftext|>"
  CHECK(tok->pad_id() == 1);  // {"content": "<|padding|>", ...}
  CHECK(tok->source() == kDir + "/bpe/tokenizer.json");
  CHECK(tok->files() == std::vector<std::string>{kDir + "/bpe/tokenizer.json",
                                                 kDir + "/bpe/tokenizer_config.json"});
  require_error([&] { tok->decode({1010}); }, {"bpe/tokenizer.json", "token id 1010"});
  require_error([&] { tok->decode({0, -3}); }, {"token id -3"});

  TempDir dir;
  std::filesystem::copy_file(kDir + "/bpe/tokenizer.json", dir / "tokenizer.json");
  {  // No config: "<|endoftext|>" is the EOS and the pad falls back to it.
    const auto t = load_tokenizer(dir.path().string());
    CHECK(t->eos_id() == 0);
    CHECK(t->pad_id() == 0);
  }
  // special_tokens_map.json wins over tokenizer_config.json.
  write_bytes(dir / "tokenizer_config.json", R"({"eos_token": "<|im_end|>", "pad_token": null})");
  write_bytes(dir / "special_tokens_map.json", R"({"eos_token": {"content": "<|im_start|>"}})");
  {
    const auto t = load_tokenizer(dir.path().string());
    CHECK(t->eos_id() == 1005);
    CHECK(t->pad_id() == 1005);
    CHECK(t->files().size() == 3);
  }
  write_bytes(dir / "special_tokens_map.json", R"({"pad_token": "<nope>"})");
  require_error(
      [&] { load_tokenizer(dir.path().string()); },
      {"special_tokens_map.json: field \"pad_token\"", "\"<nope>\" is not in", "tokenizer.json"});
  write_bytes(dir / "special_tokens_map.json", R"({"eos_token": 7})");
  require_error([&] { load_tokenizer(dir.path().string()); },
                {"special_tokens_map.json: field \"eos_token\": expected a token string"});
}

TEST_CASE("load_tokenizer names the directory when it has no tokenizer", "[tokenizer]") {
  TempDir dir;
  require_error([&] { load_tokenizer(dir.path().string()); },
                {dir.path().string(), "no tokenizer.json or tokenizer.model"});
  require_error([&] { load_tokenizer((dir / "missing").string()); },
                {(dir / "missing").string(), "not a directory"});
}

TEST_CASE("malformed tokenizer.json files give errors naming the file and field", "[tokenizer]") {
  TempDir dir;
  const std::string path = (dir / "tokenizer.json").string();
  const json good = read_json(kDir + "/tiny_unk/tokenizer.json");  // 12 tokens, ids 0..11
  REQUIRE(good["model"]["vocab"].size() == 12);
  // Loading `good` changed by `edit` must fail with the path and `fragment` in the message.
  auto expect_error = [&](const std::function<void(json&)>& edit, const std::string& fragment) {
    json j = good;
    edit(j);
    write_bytes(path, j.dump(2));
    require_error([&] { BpeTokenizer t(path); }, {path + ": ", fragment});
  };
  write_bytes(path, good.dump(2).substr(0, 200));
  require_error([&] { BpeTokenizer t(path); }, {path + ":", "invalid JSON"});
  require_error([&] { BpeTokenizer t((dir / "nope.json").string()); },
                {"nope.json", "cannot open"});
  expect_error([](json& j) { j = json::array(); }, "expected a JSON object");
  expect_error([](json& j) { j["version"] = "2.0"; }, "field \"version\": expected \"1.0\"");
  expect_error([](json& j) { j["model"]["type"] = "WordPiece"; },
               "field \"model.type\": expected \"BPE\"");
  expect_error([](json& j) { j["model"].erase("vocab"); }, "field \"model.vocab\": missing");
  expect_error([](json& j) { j["model"]["vocab"]["a"] = "1"; },
               "field \"model.vocab\": token \"a\": expected an integer id from 0 to 11 (ids "
               "must be 0..n-1 for n entries), got string \"1\"");
  expect_error([](json& j) { j["model"]["vocab"]["a"] = 1.5; }, "got number 1.5");
  expect_error([](json& j) { j["model"]["vocab"]["a"] = 12; }, "from 0 to 11");
  expect_error([](json& j) { j["model"]["vocab"]["a"] = -1; }, "got number -1");
  expect_error([](json& j) { j["model"]["vocab"]["a"] = 2; }, "id 2 is given to both");
  expect_error([](json& j) { j["model"]["merges"][1] = "a zz"; },
               "field \"model.merges\"[1]: token \"zz\" is not in model.vocab");
  expect_error(
      [](json& j) {
        j["model"]["merges"][1] = json::array({"x", "b"});
      },
      "field \"model.merges\"[1]: merged token \"xb\" is not in model.vocab");
  expect_error([](json& j) { j["model"]["merges"][0] = "ab"; },
               "field \"model.merges\"[0]: expected \"left right\"");
  expect_error([](json& j) { j["model"]["merges"][0] = 5; }, "got number 5");
  expect_error([](json& j) { j["model"]["dropout"] = 0.1; }, "field \"model.dropout\"");
  expect_error(
      [](json& j) {
        j["normalizer"] = {{"type", "NFKC"}};
      },
      "field \"normalizer.type\": expected \"NFC\"");
  expect_error(
      [](json& j) {
        j["pre_tokenizer"] = {{"type", "Metaspace"}};
      },
      "field \"pre_tokenizer.type\": expected \"ByteLevel\"");
  expect_error([](json& j) { j["decoder"] = nullptr; }, "field \"decoder\": missing");
  expect_error([](json& j) { j["added_tokens"][0]["id"] = 3; },
               "field \"added_tokens[0].id\": 3 for \"<unk>\", but the tokenizers library gives "
               "it id 0");
  expect_error([](json& j) { j["added_tokens"][0] = "x"; },
               "field \"added_tokens[0]\": expected an object");
}

TEST_CASE("malformed SentencePiece models give errors naming the file", "[tokenizer]") {
  TempDir dir;
  const std::string path = (dir / "tokenizer.model").string();
  const std::string good = read_bytes(kDir + "/sp/tokenizer.model");
  for (const std::string& bytes :
       {std::string("this is not a model"), good.substr(0, good.size() / 2), std::string()}) {
    write_bytes(path, bytes);
    require_error([&] { SentencePieceTokenizer t(path); }, {path + ": "});
    require_error([&] { load_tokenizer(dir.path().string()); }, {path + ": "});
  }
  require_error([&] { SentencePieceTokenizer t((dir / "nope.model").string()); }, {"nope.model"});
}

TEST_CASE("Unicode tables: sorted ranges and the classes GPT-2 relies on", "[tokenizer]") {
  const auto& ranges = unicode_tables::kClassRanges;
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    CHECK(ranges[i].first <= ranges[i].last);
    if (i > 0) CHECK(ranges[i - 1].last < ranges[i].first);
  }
  CHECK(unicode::is_white_space(0x3000));   // ideographic space
  CHECK(unicode::is_white_space(0x85));     // NEL
  CHECK(!unicode::is_white_space(0x1C));    // Python's isspace() says yes, White_Space no
  CHECK(!unicode::is_white_space(0x180E));  // no longer a space since Unicode 6.3
  CHECK(unicode::is_letter(U'ß'));
  CHECK(unicode::is_letter(0x20000));  // CJK Extension B
  CHECK(unicode::is_number(0x663));    // ARABIC-INDIC DIGIT THREE
  CHECK(unicode::is_number(0x2167));   // ROMAN NUMERAL EIGHT (Nl)
  CHECK(!unicode::is_letter(0x1F600));
  CHECK(unicode::is_word_char(0x24B6));  // CIRCLED LATIN CAPITAL A: Other_Alphabetic
  CHECK(unicode::is_word_char(0x301));   // marks are \w
  CHECK(!unicode::is_letter(unicode::kInvalidByte | 0xFF));
  CHECK(unicode::combining_class(0x301) == 230);
  CHECK(unicode::combining_class(0x323) == 220);
}
