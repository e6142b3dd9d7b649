// Recurrent decoding, sampling and generation (lib/infer). The decoder is checked against the
// full-sequence CausalLM forward on the fixture models that data_scripts/make_fixtures.py made
// (tests/fixtures/mamba-*); text handling uses a fake one-byte-per-id tokenizer.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>

#include "backend/backend.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "infer/decoder.h"
#include "infer/sampling.h"
#include "infer/text_stream.h"
#include "model/model_config.h"
#include "model/causal_lm.h"
#include "model/model_weights.h"

using namespace ssmtune;
namespace fs = std::filesystem;

namespace {

const char* const kFixtureModels[] = {"mamba-tiny", "mamba-odd", "mamba-sharded-bf16"};

// Ids 0..255 are the bytes (or the first vocab_size of them); decode concatenates them. With
// replace_invalid, bytes that do not form valid UTF-8 become U+FFFD, as Hugging Face's byte-level
// decode (errors="replace") does.
class ByteTokenizer final : public Tokenizer {
 public:
  explicit ByteTokenizer(std::optional<std::int64_t> eos = std::nullopt,
                         bool replace_invalid = false, std::int64_t vocab_size = 256)
      : eos_(eos), replace_invalid_(replace_invalid), vocab_size_(vocab_size) {}

  std::vector<std::int64_t> encode(std::string_view text) const override {
    std::vector<std::int64_t> ids;
    for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  }
  std::string decode(const std::vector<std::int64_t>& ids, bool) const override {
    std::string bytes;
    for (const std::int64_t id : ids) {
      if (id < 0 || id >= vocab_size_) throw Error("ByteTokenizer: id " + std::to_string(id));
      bytes += char(id);
    }
    return replace_invalid_ ? replace_invalid_utf8(bytes) : bytes;
  }
  std::int64_t vocab_size() const override { return vocab_size_; }
  std::optional<std::int64_t> eos_id() const override { return eos_; }
  std::int64_t pad_id() const override { return 0; }
  const std::string& source() const override { return source_; }
  std::vector<std::string> files() const override { return {}; }

 private:
  static std::string replace_invalid_utf8(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      const std::size_t need = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
      std::size_t len = 1;
      while (need > 1 && len < need && i + len < s.size() &&
             (static_cast<unsigned char>(s[i + len]) & 0xC0) == 0x80)
        ++len;
      if (need != 0 && len == need)
        out += s.substr(i, len);
      else
        out += "\xEF\xBF\xBD";
      i += len;
    }
    return out;
  }

  std::optional<std::int64_t> eos_;
  bool replace_invalid_;
  std::int64_t vocab_size_;
  std::string source_ = "fake byte tokenizer";
};

std::string fixture(const std::string& model) {
  return (fs::path(SSMTUNE_FIXTURES_DIR) / model).string();
}

struct Model {
  ModelConfig cfg;
  ModelWeights w;
  std::unique_ptr<Backend> be = make_cpu_backend();
};

std::unique_ptr<Model> load_model(const std::string& name, DType dtype = DType::F32) {
  auto m = std::make_unique<Model>();
  m->cfg = load_model_config(fixture(name));
  m->w = load_model_weights(fixture(name), m->cfg, dtype);
  return m;
}

// Full-sequence logits (L, V) of `ids` from CausalLM, the reference for the decoder.
Tensor full_forward(Model& m, const std::vector<std::int64_t>& ids) {
  Tensor t = Tensor::empty({1, std::int64_t(ids.size())}, DType::I64);
  std::copy(ids.begin(), ids.end(), t.data<std::int64_t>());
  CausalLM lm(m.cfg, m.w, *m.be);
  lm.forward(t);
  return lm.logits().reshape({std::int64_t(ids.size()), m.cfg.vocab_size}).to(DType::F64);
}

// max |a - ref| <= rtol * max |ref| + atol, normwise: entries near zero do not decide.
void require_close(const std::string& what, const Tensor& actual, const Tensor& ref, double rtol,
                   double atol) {
  REQUIRE(actual.numel() == ref.numel());
  const Tensor a = actual.to(DType::F64), r = ref.to(DType::F64);
  double max_ref = 0, max_err = 0;
  for (std::int64_t i = 0; i < r.numel(); ++i) {
    max_ref = std::max(max_ref, std::fabs(r.data<double>()[i]));
    max_err = std::max(max_err, std::fabs(a.data<double>()[i] - r.data<double>()[i]));
  }
  INFO(what << ": max |error| " << max_err << ", max |ref| " << max_ref);
  REQUIRE(max_ref > 0);
  REQUIRE(max_err <= rtol * max_ref + atol);
}

std::int64_t argmax(const Tensor& row) {
  const Tensor d = row.to(DType::F64);
  return std::max_element(d.data<double>(), d.data<double>() + d.numel()) - d.data<double>();
}

std::vector<std::int64_t> random_ids(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::int64_t> ids(n);
  for (auto& id : ids) id = std::int64_t(rng.below(std::uint64_t(vocab)));
  return ids;
}

Tensor logits_of(const std::vector<double>& v) {
  Tensor t = Tensor::empty({std::int64_t(v.size())}, DType::F32);
  for (std::size_t i = 0; i < v.size(); ++i) t.data<float>()[i] = float(v[i]);
  return t;
}

// Collects streamed pieces.
struct Pieces {
  std::vector<std::string> list;
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& p) { list.push_back(p); };
  }
  std::string joined() const {
    std::string s;
    for (const auto& p : list) s += p;
    return s;
  }
};

}  // namespace

TEST_CASE("decoder logits equal the full forward at every position, prefilled or stepped",
          "[generate]") {
  // float32 throughout; the decoder and CausalLM run the same backend ops, but one-row products
  // and blocked prefills sum in other orders than the full-sequence ones: a few ulps per op,
  // like the float32 parity tests (1e-5 of the largest logit).
  const double rtol = 1e-5, atol = 1e-6;
  for (const char* name : kFixtureModels) {
    DYNAMIC_SECTION(name) {
      auto m = load_model(name);
      const std::int64_t L = 23, V = m->cfg.vocab_size;
      const std::vector<std::int64_t> ids = random_ids(L, V, 7);
      const Tensor ref = full_forward(*m, ids);  // (L, V)
      const auto ref_row = [&](std::int64_t t) { return ref.rows(t, t + 1); };

      for (std::int64_t block : {256, 3, 1}) {
        Decoder dec(m->cfg, m->w, *m->be, block);
        for (std::int64_t t = 1; t <= L; ++t) {
          dec.reset();
          const Tensor& logits = dec.prefill({ids.begin(), ids.begin() + t});
          REQUIRE(logits.shape() == Shape{V});
          require_close(
              "prefill block " + std::to_string(block) + " of " + std::to_string(t) + " tokens",
              logits, ref_row(t - 1), rtol, atol);
          REQUIRE(dec.n_tokens() == t);
        }
      }

      Decoder dec(m->cfg, m->w, *m->be);
      for (std::int64_t t = 0; t < L; ++t)
        require_close("step " + std::to_string(t), dec.step(ids[t]), ref_row(t), rtol, atol);

      // Part prefilled (in two calls: the second continues from the first's state), then steps.
      Decoder mixed(m->cfg, m->w, *m->be, 4);
      mixed.prefill({ids.begin(), ids.begin() + 5});
      require_close("second prefill", mixed.prefill({ids.begin() + 5, ids.begin() + 14}),
                    ref_row(13), rtol, atol);
      for (std::int64_t t = 14; t < L; ++t)
        require_close("step after prefill " + std::to_string(t), mixed.step(ids[t]), ref_row(t),
                      rtol, atol);

      // The states the blocked path leaves are those of the token-by-token path.
      for (std::int64_t i = 0; i < m->cfg.n_layer; ++i) {
        REQUIRE(mixed.ssm_state(i).shape() == Shape{1, m->cfg.d_inner, m->cfg.d_state});
        REQUIRE(mixed.conv_state(i).shape() == Shape{1, m->cfg.d_conv - 1, m->cfg.d_inner});
        require_close("ssm state", mixed.ssm_state(i), dec.ssm_state(i), rtol, atol);
        require_close("conv state", mixed.conv_state(i), dec.conv_state(i), rtol, atol);
      }
    }
  }
}

TEST_CASE("decoder in float64 matches the float64 full forward to rounding", "[generate]") {
  auto m = load_model("mamba-odd", DType::F64);
  const std::vector<std::int64_t> ids = random_ids(17, m->cfg.vocab_size, 3);
  const Tensor ref = full_forward(*m, ids);
  Decoder dec(m->cfg, m->w, *m->be, 5);
  // float64: only summation order differs, ~1e-16 relative per op.
  require_close("prefill", dec.prefill({ids.begin(), ids.begin() + 11}), ref.rows(10, 11), 1e-12,
                1e-13);
  for (std::int64_t t = 11; t < 17; ++t)
    require_close("step", dec.step(ids[t]), ref.rows(t, t + 1), 1e-12, 1e-13);
}

TEST_CASE("decoder rejects bad token ids and empty prefills", "[generate]") {
  auto m = load_model("mamba-tiny");
  Decoder dec(m->cfg, m->w, *m->be);
  REQUIRE_THROWS_AS(dec.step(-1), Error);
  REQUIRE_THROWS_AS(dec.step(m->cfg.vocab_size), Error);
  REQUIRE_THROWS_AS(dec.prefill({}), UsageError);
  REQUIRE_THROWS_AS(dec.prefill({1, 2, m->cfg.vocab_size}), Error);
  REQUIRE(dec.n_tokens() == 0);  // nothing fed by the failed calls
  REQUIRE_THROWS_AS(Decoder(m->cfg, m->w, *m->be, 0), UsageError);
}

TEST_CASE("greedy generation equals the argmax of the full forward over prompt + output",
          "[generate]") {
  for (const char* name : {"mamba-tiny", "mamba-odd"}) {
    DYNAMIC_SECTION(name) {
      auto m = load_model(name);
      const ByteTokenizer tok;            // no EOS: runs to max_new_tokens
      const std::string prompt = " !#$";  // ids 32..36, inside both fixture vocabularies
      SamplingOptions opts;
      opts.max_new_tokens = 16;
      Decoder dec(m->cfg, m->w, *m->be);
      const GenerationResult r = generate(dec, tok, prompt, opts);
      REQUIRE(r.stop_reason == "length");
      REQUIRE(r.n_prompt_tokens == 4);
      REQUIRE(r.token_ids.size() == 16);
      REQUIRE(r.text == tok.decode(r.token_ids, false));

      std::vector<std::int64_t> seq = tok.encode(prompt);
      for (const std::int64_t id : r.token_ids) {
        const Tensor logits = full_forward(*m, seq);
        REQUIRE(id == argmax(logits.rows(seq.size() - 1, seq.size())));
        seq.push_back(id);
      }
    }
  }
}

TEST_CASE("generation stops at EOS and at stop strings, streaming only final text", "[generate]") {
  auto m = load_model("mamba-tiny");
  Decoder dec(m->cfg, m->w, *m->be);
  SamplingOptions opts;
  opts.max_new_tokens = 16;
  const GenerationResult full = generate(dec, ByteTokenizer(), "0123", opts);
  REQUIRE(full.token_ids.size() == 16);

  SECTION("EOS") {
    const std::int64_t eos = full.token_ids[4];
    const std::size_t first =
        std::find(full.token_ids.begin(), full.token_ids.end(), eos) - full.token_ids.begin();
    Pieces pieces;
    const GenerationResult r = generate(dec, ByteTokenizer(eos), "0123", opts, pieces.sink());
    REQUIRE(r.stop_reason == "eos");
    REQUIRE(r.token_ids ==
            std::vector<std::int64_t>(full.token_ids.begin(), full.token_ids.begin() + first + 1));
    REQUIRE(r.text == full.text.substr(0, first));
    REQUIRE(pieces.joined() == r.text);
  }
  SECTION("stop string spanning three tokens") {
    const std::string stop = full.text.substr(6, 3);
    const std::size_t at = full.text.find(stop);
    opts.stop = {stop};
    Pieces pieces;
    const GenerationResult r = generate(dec, ByteTokenizer(), "0123", opts, pieces.sink());
    REQUIRE(r.stop_reason == "stop");
    REQUIRE(r.text == full.text.substr(0, at));
    REQUIRE(r.token_ids.size() == at + 3);  // up to the token that completed the stop string
    REQUIRE(pieces.joined() == r.text);
  }
  SECTION("max_new_tokens 0") {
    opts.max_new_tokens = 0;
    const GenerationResult r = generate(dec, ByteTokenizer(), "0123", opts);
    REQUIRE(r.token_ids.empty());
    REQUIRE(r.text.empty());
    REQUIRE(r.stop_reason == "length");
  }
  SECTION("empty prompt") {
    REQUIRE_THROWS_AS(generate(dec, ByteTokenizer(), "", opts), UsageError);
  }
}

TEST_CASE("sampled generation: top_k 1 and tiny top_p are greedy, the seed decides the rest",
          "[generate]") {
  auto m = load_model("mamba-tiny");
  Decoder dec(m->cfg, m->w, *m->be);
  const ByteTokenizer tok;
  SamplingOptions opts;
  opts.max_new_tokens = 24;
  const std::vector<std::int64_t> greedy = generate(dec, tok, "0123", opts).token_ids;

  opts.temperature = 1;
  opts.top_k = 1;
  opts.seed = 5;
  REQUIRE(generate(dec, tok, "0123", opts).token_ids == greedy);
  opts.top_k = 0;
  opts.top_p = 1e-9;
  REQUIRE(generate(dec, tok, "0123", opts).token_ids == greedy);

  opts.top_p = 1;
  opts.seed = 1;
  const std::vector<std::int64_t> a = generate(dec, tok, "0123", opts).token_ids;
  REQUIRE(generate(dec, tok, "0123", opts).token_ids == a);
  opts.seed = 2;
  const std::vector<std::int64_t> b = generate(dec, tok, "0123", opts).token_ids;
  REQUIRE(a.size() == 24);
  REQUIRE(b.size() == 24);
  REQUIRE(a != b);
  REQUIRE(a != greedy);
}

TEST_CASE("generation samples only ids the tokenizer knows", "[generate]") {
  // The fixture's 64 logits against a 40-token tokenizer: as a checkpoint's padded vocabulary.
  auto m = load_model("mamba-tiny");
  Decoder dec(m->cfg, m->w, *m->be);
  const ByteTokenizer tok(std::nullopt, false, 40);
  SamplingOptions opts;
  opts.max_new_tokens = 12;
  const GenerationResult greedy = generate(dec, tok, "!#", opts);
  std::vector<std::int64_t> seq = tok.encode("!#");
  for (const std::int64_t id : greedy.token_ids) {
    const Tensor logits = full_forward(*m, seq);
    REQUIRE(
        id ==
        argmax(logits.rows(seq.size() - 1, seq.size()).reshape({m->cfg.vocab_size}).rows(0, 40)));
    seq.push_back(id);
  }
  opts.temperature = 1;
  opts.max_new_tokens = 64;
  for (const std::int64_t id : generate(dec, tok, "!#", opts).token_ids) REQUIRE(id < 40);
}

TEST_CASE("sample_token draws from the tempered, top-k and top-p filtered softmax", "[generate]") {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> z = {2, 1, 0, 3, 1, -inf};
  const Tensor logits = logits_of(z);
  // Expected probabilities, written out independently of the implementation.
  const auto softmax = [&](double T, const std::vector<int>& keep) {
    std::vector<double> p(z.size(), 0.0);
    double sum = 0;
    for (int i : keep) sum += std::exp(z[i] / T);
    for (int i : keep) p[i] = std::exp(z[i] / T) / sum;
    return p;
  };
  struct Case {
    const char* what;
    double temperature;
    std::int64_t top_k;
    double top_p;
    std::vector<double> expected;
  };
  const std::vector<Case> cases = {
      {"T=1", 1, 0, 1, softmax(1, {0, 1, 2, 3, 4})},
      {"T=2", 2, 0, 1, softmax(2, {0, 1, 2, 3, 4})},
      // top-3 is {3, 0, 1} (id 1 beats id 4 on the tie); its mass 0.665 + 0.245 reaches 0.9.
      {"T=1 top_k=3 top_p=0.9", 1, 3, 0.9, softmax(1, {3, 0})},
      {"T=1 top_k=3", 1, 3, 1, softmax(1, {3, 0, 1})},
      {"T=1 top_p=0.5", 1, 0, 0.5, softmax(1, {3})},
  };
  // 20000 draws: a frequency's standard deviation is at most 0.5 / sqrt(20000) = 0.0035, so
  // 0.015 is over 4 sigma (and the draws are deterministic for the fixed seed).
  const int n = 20000;
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.what) {
      SamplingOptions o;
      o.temperature = c.temperature;
      o.top_k = c.top_k;
      o.top_p = c.top_p;
      Rng rng(11);
      std::vector<int> count(z.size(), 0);
      for (int k = 0; k < n; ++k) ++count.at(sample_token(logits, o, rng));
      for (std::size_t i = 0; i < z.size(); ++i) {
        INFO("id " << i << " frequency " << double(count[i]) / n << " expected " << c.expected[i]);
        if (c.expected[i] == 0)
          REQUIRE(count[i] == 0);
        else
          REQUIRE(std::fabs(double(count[i]) / n - c.expected[i]) <= 0.015);
      }
    }
  }
}

TEST_CASE("sample_token: greedy breaks ties to the lower id; top_k 1 is greedy", "[generate]") {
  const Tensor logits = logits_of({1, 5, 5, 2});
  Rng rng(1);
  SamplingOptions o;
  REQUIRE(sample_token(logits, o, rng) == 1);
  o.temperature = 0.7;
  o.top_k = 1;
  for (int k = 0; k < 50; ++k) REQUIRE(sample_token(logits, o, rng) == 1);
  Rng r2(99);
  for (int k = 0; k < 20; ++k) {
    Tensor random = Tensor::empty({40}, DType::F32);
    for (std::int64_t i = 0; i < 40; ++i) random.data<float>()[i] = float(r2.normal());
    SamplingOptions greedy;
    REQUIRE(sample_token(random, o, rng) == sample_token(random, greedy, rng));
  }
}

TEST_CASE("sampling options and logits are validated", "[generate]") {
  const Tensor logits = logits_of({0, 1});
  Rng rng(0);
  const auto bad = [&](auto edit) {
    SamplingOptions o;
    o.temperature = 1;
    edit(o);
    REQUIRE_THROWS_AS(check_sampling_options(o), UsageError);
    REQUIRE_THROWS_AS(sample_token(logits, o, rng), UsageError);
  };
  bad([](SamplingOptions& o) { o.temperature = -0.5; });
  bad([](SamplingOptions& o) { o.temperature = std::nan(""); });
  bad([](SamplingOptions& o) { o.temperature = std::numeric_limits<double>::infinity(); });
  bad([](SamplingOptions& o) { o.top_k = -1; });
  bad([](SamplingOptions& o) { o.top_p = 0; });
  bad([](SamplingOptions& o) { o.top_p = 1.5; });
  bad([](SamplingOptions& o) { o.top_p = std::nan(""); });
  bad([](SamplingOptions& o) { o.max_new_tokens = -1; });
  bad([](SamplingOptions& o) { o.stop = {"ok", ""}; });

  SamplingOptions ok;
  REQUIRE_THROWS_AS(sample_token(logits_of({0, std::nan("")}), ok, rng), Error);
  REQUIRE_THROWS_AS(sample_token(logits_of({0, std::numeric_limits<double>::infinity()}), ok, rng),
                    Error);
  const double ninf = -std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(sample_token(logits_of({ninf, ninf}), ok, rng), Error);
  REQUIRE_THROWS_AS(sample_token(Tensor::empty({0}, DType::F32), ok, rng), Error);
}

TEST_CASE("utf8_stable_length holds back incomplete characters and U+FFFD", "[generate]") {
  REQUIRE(utf8_stable_length("abc") == 3);
  REQUIRE(utf8_stable_length("") == 0);
  REQUIRE(utf8_stable_length("a\xC3") == 1);
  REQUIRE(utf8_stable_length("a\xC3\xA9") == 3);
  REQUIRE(utf8_stable_length("a\xE2\x82") == 1);
  REQUIRE(utf8_stable_length("a\xE2\x82\xAC") == 4);
  REQUIRE(utf8_stable_length("a\xF0\x9F\x98") == 1);
  REQUIRE(utf8_stable_length("a\xF0\x9F\x98\x80") == 5);
  REQUIRE(utf8_stable_length("a\xEF\xBF\xBD\xEF\xBF\xBD") == 1);
  REQUIRE(utf8_stable_length("\x80\x80\x80\x80") == 4);  // invalid, nothing to wait for
}

TEST_CASE("text stream: stop strings split across tokens, held-back prefixes", "[generate]") {
  const ByteTokenizer tok;
  const auto push_all = [](TextStream& s, const std::string& bytes) {
    bool stopped = false;
    for (const char c : bytes) stopped = s.push(static_cast<unsigned char>(c));
    return stopped;
  };
  SECTION("a stop string arriving one byte at a time") {
    Pieces p;
    TextStream s(tok, {"END"}, p.sink());
    REQUIRE_FALSE(push_all(s, "abE"));
    REQUIRE(p.joined() == "ab");  // "E" may start "END"
    REQUIRE_FALSE(push_all(s, "N"));
    REQUIRE(p.joined() == "ab");
    REQUIRE_FALSE(push_all(s, "x"));
    REQUIRE(p.joined() == "abENx");  // it did not
    REQUIRE_FALSE(push_all(s, "EN"));
    REQUIRE(p.joined() == "abENx");
    REQUIRE(push_all(s, "D"));
    REQUIRE(s.text() == "abENx");
    REQUIRE(p.joined() == "abENx");
    REQUIRE_THROWS_AS(s.push('y'), Error);
  }
  SECTION("held-back text is passed on at the end") {
    Pieces p;
    TextStream s(tok, {"END"}, p.sink());
    REQUIRE_FALSE(push_all(s, "abEN"));
    REQUIRE(p.joined() == "ab");
    s.finish();
    REQUIRE(p.joined() == "abEN");
    REQUIRE(s.text() == "abEN");
  }
  SECTION("the earliest of several stop strings wins") {
    Pieces p;
    TextStream s(tok, {"cd", "b"}, p.sink());
    REQUIRE(push_all(s, "ab"));
    REQUIRE(s.text() == "a");
    REQUIRE(p.joined() == "a");
  }
  SECTION("a multi-byte stop string") {
    Pieces p;
    TextStream s(tok, {"\xE2\x82\xAC!"}, p.sink());  // "€!"
    REQUIRE_FALSE(push_all(s, "x\xE2\x82\xAC"));
    REQUIRE(p.joined() == "x");
    REQUIRE(push_all(s, "!"));
    REQUIRE(s.text() == "x");
    REQUIRE(p.joined() == "x");
  }
}

TEST_CASE("text stream: a multi-byte character split across tokens comes out whole", "[generate]") {
  for (const bool replace : {false, true}) {
    DYNAMIC_SECTION("decoder replaces invalid bytes: " << replace) {
      const ByteTokenizer tok(std::nullopt, replace);
      Pieces p;
      TextStream s(tok, {}, p.sink());
      const auto push = [&](unsigned char c) { REQUIRE_FALSE(s.push(c)); };
      push('a');
      push(0xC3);
      REQUIRE(p.joined() == "a");
      push(0xA9);  // é
      REQUIRE(p.joined() == "a\xC3\xA9");
      push(0xF0);
      push(0x9F);
      push(0x98);
      REQUIRE(p.joined() == "a\xC3\xA9");
      push(0x80);  // U+1F600
      REQUIRE(p.joined() == "a\xC3\xA9\xF0\x9F\x98\x80");
      REQUIRE(p.list.size() == 3);  // every piece is whole characters
      push(0xE2);
      s.finish();  // an incomplete tail is passed on as the tokenizer decodes it
      REQUIRE(p.joined() == s.text());
      REQUIRE(s.text() == tok.decode(s.ids(), false));
    }
  }
}
