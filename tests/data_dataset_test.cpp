// JSONL datasets (formats, masking, EOS, classification, truncation, packing, bad input),
// padded batches and the deterministic epoch sampler.
#include <algorithm>
#include <catch2/catch.hpp>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "data/batcher.h"
#include "data/jsonl_dataset.h"
#include "io_test_util.h"

using namespace ssmtune;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;
using Ids = std::vector<std::int64_t>;

namespace {

// A tokenizer small enough to predict by hand: every byte is its own id, except that a space
// followed by a non-space byte c is one token 256 + c (so " positive" starts with a token of
// its own, as in GPT-2's BPE, and " pos" / " positive" collide). EOS = 512.
class FakeTokenizer : public Tokenizer {
 public:
  explicit FakeTokenizer(bool has_eos = true) : has_eos_(has_eos) {}
  std::vector<std::int64_t> encode(std::string_view text) const override {
    Ids ids;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (text[i] == ' ' && i + 1 < text.size() && text[i + 1] != ' ') {
        ids.push_back(256 + static_cast<unsigned char>(text[++i]));
      } else {
        ids.push_back(static_cast<unsigned char>(text[i]));
      }
    }
    return ids;
  }
  std::string decode(const Ids& ids, bool) const override {
    std::string s;
    for (auto id : ids) {
      if (id >= 256 && id < 512) s += ' ';
      if (id < 512) s += char(id & 255);
    }
    return s;
  }
  std::int64_t vocab_size() const override { return 513; }
  std::optional<std::int64_t> eos_id() const override {
    return has_eos_ ? std::optional<std::int64_t>(kEos) : std::nullopt;
  }
  std::int64_t pad_id() const override { return kEos; }
  const std::string& source() const override { return source_; }
  std::vector<std::string> files() const override { return {}; }

  static constexpr std::int64_t kEos = 512;

 private:
  bool has_eos_;
  std::string source_ = "fake";
};

Ids bytes(const std::string& s) { return Ids(s.begin(), s.end()); }
Ids concat(Ids a, const Ids& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
Ids ignored(std::size_t n) { return Ids(n, kIgnoreLabel); }

struct Fixture {
  TempDir dir;
  FakeTokenizer tok;
  DataConfig cfg;
  std::string path = (dir / "train.jsonl").string();

  Dataset load(const std::string& contents, const std::vector<std::string>& classes = {}) {
    write_bytes(path, contents);
    return load_jsonl_dataset(path, cfg, tok, classes);
  }
  // Loading `contents` must fail with every fragment in the message.
  void fails(const std::string& contents, std::initializer_list<std::string> fragments) {
    write_bytes(path, contents);
    require_error([&] { load_jsonl_dataset(path, cfg, tok); }, fragments);
  }
};

}  // namespace

TEST_CASE("text lines train on every token and end with EOS", "[dataset]") {
  Fixture f;
  // A blank line, CRLF endings, a UTF-8 BOM and a last line without "\n" are all accepted.
  const Dataset ds =
      f.load("\xEF\xBB\xBF{\"text\": \"ab\"}\r\n\n  \n{\"text\": \"c d\", \"id\": 7}");
  CHECK(ds.format == DataFormat::Text);
  REQUIRE(ds.examples.size() == 2);
  CHECK(ds.examples[0].input_ids == Ids{'a', 'b', FakeTokenizer::kEos});
  CHECK(ds.examples[0].labels == ds.examples[0].input_ids);  // HF: the model shifts them
  CHECK(ds.examples[0].line == 1);
  CHECK(ds.examples[1].input_ids == Ids{'c', 256 + 'd', FakeTokenizer::kEos});
  CHECK(ds.examples[1].line == 4);
  CHECK(ds.examples[1].prompt_length == 0);
  CHECK(ds.examples[1].class_index == -1);

  f.cfg.add_eos = false;
  CHECK(f.load("{\"text\": \"ab\"}\n").examples[0].input_ids == Ids{'a', 'b'});
}

TEST_CASE("prompt/completion masks the prompt and learns the EOS", "[dataset]") {
  Fixture f;
  const Dataset ds = f.load("{\"prompt\": \"Q:\", \"completion\": \"yes\"}\n");
  CHECK(ds.format == DataFormat::PromptCompletion);
  REQUIRE(ds.examples.size() == 1);
  const Example& ex = ds.examples[0];
  CHECK(ex.input_ids == concat(bytes("Q:yes"), {FakeTokenizer::kEos}));
  CHECK(ex.labels == concat(ignored(2), concat(bytes("yes"), {FakeTokenizer::kEos})));
  CHECK(ex.prompt_length == 2);
  CHECK(count_loss_tokens(ex.labels) == 4);

  f.cfg.add_eos = false;
  CHECK(f.load(R"({"prompt": "Q:", "completion": "yes"})").examples[0].labels ==
        concat(ignored(2), bytes("yes")));
}

TEST_CASE("pre-tokenised lines are taken verbatim, labels default to the inputs", "[dataset]") {
  Fixture f;
  const Dataset ds = f.load(
      "{\"input_ids\": [5, 6, 7]}\n"
      "{\"input_ids\": [1, 2, 3, 4], \"labels\": [-100, -100, 3, 512]}\n");
  CHECK(ds.format == DataFormat::Tokens);
  REQUIRE(ds.examples.size() == 2);
  CHECK(ds.examples[0].input_ids == Ids{5, 6, 7});  // no EOS added to pre-tokenised data
  CHECK(ds.examples[0].labels == Ids{5, 6, 7});
  CHECK(ds.examples[1].labels == Ids{-100, -100, 3, 512});
  CHECK(ds.examples[1].prompt_length == 2);
}

TEST_CASE("classification scores the label word's first token after the prompt", "[dataset]") {
  Fixture f;
  const Dataset ds = f.load(
      "{\"prompt\": \"good\", \"label\": \"positive\"}\n"
      "{\"text\": \"bad\", \"label\": \"negative\"}\n"
      "{\"prompt\": \"ok\", \"label\": \"positive\"}\n");
  CHECK(ds.format == DataFormat::Classification);
  // Sorted unique labels of the file; the first token of encode(" " + label) of each.
  CHECK(ds.class_names == std::vector<std::string>{"negative", "positive"});
  CHECK(ds.class_token_ids == Ids{256 + 'n', 256 + 'p'});
  REQUIRE(ds.examples.size() == 3);
  const Example& ex = ds.examples[0];
  CHECK(ex.class_index == 1);
  CHECK(ds.examples[1].class_index == 0);
  CHECK(ex.prompt_length == 4);
  // No EOS: loss only on the label word's tokens.
  const Ids label_ids = concat({256 + 'p'}, bytes("ositive"));
  CHECK(ex.input_ids == concat(bytes("good"), label_ids));
  CHECK(ex.labels == concat(ignored(4), label_ids));
  CHECK(ex.input_ids[ex.prompt_length] == ds.class_token_ids[ex.class_index]);

  // An eval set keeps the train set's class order, even for labels it does not use.
  const Dataset eval =
      f.load("{\"prompt\": \"x\", \"label\": \"positive\"}\n", {"positive", "negative", "other"});
  CHECK(eval.class_names == std::vector<std::string>{"positive", "negative", "other"});
  CHECK(eval.examples[0].class_index == 0);
  CHECK(eval.class_token_ids == Ids{256 + 'p', 256 + 'n', 256 + 'o'});

  f.cfg.labels = {"positive", "negative"};  // data.labels fixes the order
  CHECK(f.load("{\"prompt\": \"x\", \"label\": \"negative\"}\n").examples[0].class_index == 1);
}

TEST_CASE("auto format follows the first line's keys; data.format overrides it", "[dataset]") {
  Fixture f;
  CHECK(f.load(R"({"text": "a", "prompt": "p", "completion": "c"})").format ==
        DataFormat::PromptCompletion);
  CHECK(f.load(R"({"input_ids": [1, 2], "text": "a", "label": "x"})").format == DataFormat::Tokens);
  f.cfg.format = DataFormat::Text;
  const Dataset ds = f.load(R"({"text": "ab", "prompt": "p", "completion": "c"})");
  CHECK(ds.format == DataFormat::Text);
  CHECK(ds.examples[0].input_ids == Ids{'a', 'b', FakeTokenizer::kEos});
}

TEST_CASE("malformed lines name the file, the line and the field", "[dataset]") {
  Fixture f;
  const std::string p = f.path;
  f.fails("{\"text\": \"a\"}\n{\"text\": \"b\",}\n", {p + ":2: invalid JSON at column 14"});
  f.fails("{\"text\": \"ab\"}\n{\"text\": \"a\", \"text\": \"b\"}\n",
          {p + ":2: duplicate key \"text\""});
  f.fails("{\"prompt\": \"a\", \"completion\": 3}\n",
          {p + ":1: field \"completion\": expected a string, got number 3"});
  f.fails("{\"text\": \"ab\"}\n\n{\"txt\": \"a\"}\n",
          {p + ":3: missing field \"text\" (format \"text\", detected from line 1)"});
  // Mixed formats: the later line lacks the first line's fields.
  f.fails("{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"text\": \"ab\"}\n",
          {p + ":2: missing field \"prompt\"", "prompt_completion"});
  f.fails("[1, 2]\n", {p + ":1: expected a JSON object, got an array"});
  f.fails("{\"foo\": 1, \"bar\": 2}\n",
          {p + ":1: cannot tell the data format from the keys \"bar\", \"foo\""});
  f.fails("{\"prompt\": \"a\", \"label\": 1}\n",
          {p + ":1: field \"label\": expected a string, got number 1"});
  f.fails("{\"label\": \"x\"}\n", {p + ":1: missing field \"prompt\" (or \"text\")"});
  f.fails("{\"input_ids\": [1, 513]}\n",
          {p + ":1: field \"input_ids\"[1]: expected a token id from 0 to 512, got number 513"});
  f.fails("{\"input_ids\": [1, -100]}\n", {p + ":1: field \"input_ids\"[1]", "got number -100"});
  f.fails("{\"input_ids\": [1, \"2\"]}\n", {"field \"input_ids\"[1]", "got string \"2\""});
  f.fails("{\"input_ids\": [1, 2], \"labels\": [1, -7]}\n",
          {p + ":1: field \"labels\"[1]: expected -100 or a token id", "got number -7"});
  f.fails("{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n",
          {p + ":1: field \"labels\": expected one label per input id (3), got 2 labels"});
  f.fails("{\"input_ids\": []}\n", {p + ":1: field \"input_ids\": expected at least one"});
  f.fails("{\"input_ids\": 5}\n",
          {p + ":1: field \"input_ids\": expected an array of token ids, got number 5"});
}

TEST_CASE("empty files, missing files and directories are refused by name", "[dataset]") {
  Fixture f;
  f.fails("", {f.path + ": no examples"});
  f.fails("\n  \n\n", {f.path + ": no examples"});
  const std::string missing = (f.dir / "nope.jsonl").string();
  require_error([&] { load_jsonl_dataset(missing, f.cfg, f.tok); }, {missing + ": cannot open"});
  const std::string dir = f.dir.path().string();
  require_error([&] { load_jsonl_dataset(dir, f.cfg, f.tok); }, {dir + ": not a regular file"});
}

TEST_CASE("a line past the size limit is refused without reading it whole", "[dataset]") {
  Fixture f;
  // A file with no newline at all: 16 MiB + 1 byte of one line.
  f.fails("{\"text\": \"a\"}\n" + std::string(kMaxJsonlLineBytes + 1, ' '),
          {f.path + ":2: line is longer than 16 MiB"});
}

TEST_CASE("classification label problems name the labels", "[dataset]") {
  Fixture f;
  f.fails("{\"prompt\": \"a\", \"label\": \"pos\"}\n{\"prompt\": \"b\", \"label\": \"positive\"}\n",
          {f.path + ": label words \"pos\" and \"positive\" both start with token 368"});
  const std::vector<std::string> train_classes = {"yes", "no"};
  write_bytes(f.path,
              "{\"prompt\": \"a\", \"label\": \"yes\"}\n{\"prompt\": \"b\", \"label\": \"no\"}\n"
              "{\"prompt\": \"c\", \"label\": \"maybe\"}\n");
  require_error([&] { load_jsonl_dataset(f.path, f.cfg, f.tok, train_classes); },
                {f.path + ":3: field \"label\": \"maybe\" is not one of the class names (\"yes\", "
                          "\"no\") from the train set's labels"});
  f.fails("{\"prompt\": \"a\", \"label\": \"yes\"}\n{\"prompt\": \"b\", \"label\": \"yes\"}\n",
          {f.path + ": every example has the label \"yes\"", "at least two classes"});
  f.fails("{\"prompt\": \"\", \"label\": \"yes\"}\n",
          {f.path + ":1: field \"prompt\": the prompt encodes to no tokens"});
  f.fails("{\"prompt\": \"a\", \"label\": \"\"}\n", {f.path + ":1: field \"label\""});
  f.cfg.labels = {"yes", "no", "yes"};
  write_bytes(f.path, "{\"prompt\": \"a\", \"label\": \"yes\"}\n");
  CHECK_THROWS_AS(load_jsonl_dataset(f.path, f.cfg, f.tok), UsageError);
}

TEST_CASE("too long examples are an error or are truncated", "[dataset]") {
  Fixture f;
  f.cfg.max_length = 4;
  const std::string line = "{\"prompt\": \"ab\", \"completion\": \"cde\"}\n";  // 2 + 3 + EOS
  f.fails(line, {f.path + ":1: example is 6 tokens, more than data.max_length = 4",
                 "data.too_long = \"truncate\""});
  f.cfg.too_long = TooLong::Truncate;
  const Dataset ds = f.load("{\"prompt\": \"a\", \"completion\": \"b\"}\n" + line);
  CHECK(ds.n_truncated == 1);
  CHECK(ds.examples[0].input_ids == Ids{'a', 'b', FakeTokenizer::kEos});  // fits: untouched
  CHECK(ds.examples[1].input_ids == bytes("abcd"));  // the first max_length tokens, no EOS
  CHECK(ds.examples[1].labels == concat(ignored(2), bytes("cd")));
  // A prompt that fills max_length would leave no completion to learn from.
  f.fails("{\"prompt\": \"abcd\", \"completion\": \"e\"}\n",
          {f.path + ":1: the prompt alone is 4 tokens", "cut all of the completion"});
  f.cfg.max_length = 1;
  write_bytes(f.path, "{\"text\": \"ab\"}\n");
  CHECK_THROWS_AS(load_jsonl_dataset(f.path, f.cfg, f.tok), UsageError);
}

TEST_CASE("examples without a single loss token are refused", "[dataset]") {
  Fixture f;
  f.cfg.add_eos = false;
  f.fails("{\"text\": \"ab\"}\n{\"prompt\": \"a\", \"completion\": \"\"}\n",
          {f.path + ":2: missing field \"text\""});
  f.fails("{\"prompt\": \"a\", \"completion\": \"\"}\n",
          {f.path + ":1: example has no tokens to learn from", "completion is empty"});
  f.fails("{\"text\": \"ab\"}\n{\"text\": \"a\"}\n", {f.path + ":2: example has no tokens"});
  f.fails("{\"input_ids\": [1, 2], \"labels\": [1, -100]}\n",
          {f.path + ":1: example has no tokens to learn from"});
}

TEST_CASE("config mistakes are usage errors", "[dataset]") {
  Fixture f;
  write_bytes(f.path, "{\"prompt\": \"a\", \"completion\": \"b\"}\n");
  f.cfg.packing = true;
  CHECK_THROWS_AS(load_jsonl_dataset(f.path, f.cfg, f.tok), UsageError);
  require_error([&] { load_jsonl_dataset(f.path, f.cfg, f.tok); },
                {"data.packing is only for the \"text\" and \"tokens\" formats", f.path});
  f.cfg.packing = false;
  const FakeTokenizer no_eos(false);
  CHECK_THROWS_AS(load_jsonl_dataset(f.path, f.cfg, no_eos), UsageError);
  f.cfg.add_eos = false;
  CHECK(load_jsonl_dataset(f.path, f.cfg, no_eos).examples.size() == 1);
}

TEST_CASE("packing cuts the token stream into max_length blocks", "[dataset]") {
  Fixture f;
  f.cfg.packing = true;
  f.cfg.max_length = 4;
  // Stream: a b c EOS | d EOS | e f g h i EOS  = 12 tokens -> 3 full blocks of 4.
  const std::int64_t E = FakeTokenizer::kEos;
  Dataset ds = f.load("{\"text\": \"abc\"}\n{\"text\": \"d\"}\n\n{\"text\": \"efghi\"}\n");
  REQUIRE(ds.examples.size() == 3);
  CHECK(ds.examples[0].input_ids == Ids{'a', 'b', 'c', E});
  CHECK(ds.examples[1].input_ids == Ids{'d', E, 'e', 'f'});
  CHECK(ds.examples[2].input_ids == Ids{'g', 'h', 'i', E});
  CHECK(ds.examples[1].labels == ds.examples[1].input_ids);
  CHECK(ds.examples[0].line == 1);
  CHECK(ds.examples[1].line == 2);  // the block starts in line 2
  CHECK(ds.examples[2].line == 4);
  CHECK(ds.n_truncated == 0);  // packing never truncates: long lines span blocks

  // Pre-tokenised: labels travel with their tokens; a 1-token tail is dropped, 2 are kept.
  ds = f.load("{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\n{\"input_ids\": [4, 5, 6]}\n");
  REQUIRE(ds.examples.size() == 2);
  CHECK(ds.examples[0].input_ids == Ids{1, 2, 3, 4});
  CHECK(ds.examples[0].labels == Ids{-100, 2, 3, 4});
  CHECK(ds.examples[1].input_ids == Ids{5, 6});
  CHECK(f.load("{\"input_ids\": [1, 2, 3, 4, 5]}\n").examples.size() == 1);
  f.fails(
      "{\"input_ids\": [1, 2]}\n{\"input_ids\": [3, 4, 5, 6], \"labels\": [-100, -100, -100, "
      "-100]}\n",
      {f.path + ":2: the packed block starting at this line has no tokens to learn from"});
}

TEST_CASE("batches are right-padded and count the shifted loss tokens", "[dataset]") {
  Fixture f;
  const Dataset ds = f.load(
      "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\n"
      "{\"input_ids\": [4, 5]}\n"
      "{\"input_ids\": [6, 7, 8, 9, 10], \"labels\": [6, -100, 8, 9, 10]}\n");
  const Batch b = make_batch(ds, {2, 0, 1}, 99);
  REQUIRE(b.input_ids.shape() == Shape{3, 5});
  REQUIRE(b.labels.shape() == Shape{3, 5});
  CHECK(b.input_ids.dtype() == DType::I64);
  const std::int64_t* ids = b.input_ids.data<std::int64_t>();
  const std::int64_t* labels = b.labels.data<std::int64_t>();
  CHECK(Ids(ids, ids + 15) == Ids{6, 7, 8, 9, 10, 1, 2, 3, 99, 99, 4, 5, 99, 99, 99});
  CHECK(Ids(labels, labels + 15) ==
        Ids{6, -100, 8, 9, 10, -100, 2, 3, -100, -100, 4, 5, -100, -100, -100});
  // Position 0's label is never a target after the shift: 3 + 2 + 1.
  CHECK(b.n_loss_tokens == 6);
  CHECK(b.example_indices == Ids{2, 0, 1});
  CHECK(make_batch(ds, {1}, 99).input_ids.shape() == Shape{1, 2});
  require_error([&] { make_batch(ds, {0, 3}, 99); }, {"example index 3 out of range [0, 3)"});
  require_error([&] { make_batch(ds, {}, 99); }, {"at least one example"});
}

namespace {
Ids draw_epoch(EpochSampler& s, std::int64_t batch_size) {
  Ids all;
  const std::int64_t epoch = s.epoch();
  while (s.epoch() == epoch) all = concat(all, s.next(batch_size));
  return all;
}
Ids iota_ids(std::int64_t n) {
  Ids v(std::size_t(n), 0);
  std::iota(v.begin(), v.end(), 0);
  return v;
}
}  // namespace

TEST_CASE("the sampler's order is a function of seed and epoch", "[dataset]") {
  EpochSampler a(50, 7, true), b(50, 7, true), c(50, 8, true);
  const Ids a0 = draw_epoch(a, 8), a1 = draw_epoch(a, 8);
  CHECK(draw_epoch(b, 8) == a0);  // same seed, same order
  CHECK(draw_epoch(b, 8) == a1);
  const Ids c0 = draw_epoch(c, 8);
  CHECK(c0 != a0);                         // another seed (chance of equality 1/50!)
  CHECK(a1 != a0);                         // another epoch
  for (const Ids& order : {a0, a1, c0}) {  // every epoch visits each example once
    Ids sorted = order;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == iota_ids(50));
  }
  CHECK(a0 == a.epoch_order(0));
  EpochSampler plain(5, 7, false);
  CHECK(draw_epoch(plain, 2) == iota_ids(5));
  CHECK(draw_epoch(plain, 2) == iota_ids(5));
}

TEST_CASE("the shuffle is Fisher-Yates on the documented stream", "[dataset]") {
  // Expected orders from data_scripts/shuffle_reference.py, an independent Python
  // re-implementation of core/rng.cpp (splitmix64
  // seeding, for_stream, xoshiro256**, below) and of the Fisher-Yates loop documented in
  // docs/datasets.md. A change here would make old checkpoints resume onto other batches.
  EpochSampler s(10, 42, true);
  CHECK(s.epoch_order(0) == (Ids{6, 0, 5, 3, 2, 1, 9, 8, 7, 4}));
  CHECK(s.epoch_order(1) == (Ids{4, 7, 6, 8, 0, 9, 5, 3, 2, 1}));
}

TEST_CASE("an epoch ends with a short batch and never mixes epochs", "[dataset]") {
  EpochSampler s(10, 3, true);
  std::vector<std::size_t> sizes;
  Ids epochs;
  for (int i = 0; i < 6; ++i) {
    epochs.push_back(s.epoch());
    sizes.push_back(s.next(4).size());
  }
  CHECK(sizes == std::vector<std::size_t>{4, 4, 2, 4, 4, 2});
  CHECK(epochs == Ids{0, 0, 0, 1, 1, 1});
  CHECK(s.epoch() == 2);
  CHECK(s.position().index == 0);
  CHECK(EpochSampler(3, 0, true).next(100).size() == 3);
}

TEST_CASE("a sampler restored from its position draws the same batches", "[dataset]") {
  EpochSampler run(23, 11, true);
  for (int i = 0; i < 9; ++i) run.next(5);  // into epoch 1, mid-epoch
  const EpochSampler::Position pos = run.position();
  CHECK(pos.epoch == 1);
  CHECK(pos.index == 20);
  EpochSampler resumed(23, 11, true);
  resumed.set_position(pos);
  for (int i = 0; i < 20; ++i) {
    INFO("batch " << i);
    REQUIRE(resumed.next(5) == run.next(5));
  }
  require_error(
      [&] {
        resumed.set_position({0, 23});
      },
      {"data position (epoch 0, index 23) is outside a dataset of 23 examples"});
  require_error([&] { resumed.set_position({-1, 0}); }, {"data position"});
  require_error([&] { EpochSampler(0, 1, true); }, {"no examples"});
  require_error([&] { resumed.next(0); }, {"batch size must be positive"});
}
