// What the fuzz targets found (tests/fuzz, docs/reliability.md "Fuzzing"), kept fixed in the
// g++ suite. Each input is also kept under tests/fuzz/regressions/<target>/, which .ci/fuzz
// replays through the target.
#include <catch2/catch.hpp>
#include <fstream>
#include <iterator>
#include <string>

#include "data/sentencepiece_tokenizer.h"
#include "io_test_util.h"
#include "model/model_config.h"

namespace {

const std::string kRegressions = std::string(SSMTUNE_FIXTURES_DIR) + "/../fuzz/regressions";

// The error that loading regressions/config_json/<file> as a model's config.json gives.
std::string config_json_error(const std::string& file) {
  ssmtune::test::TempDir dir;
  std::filesystem::copy_file(kRegressions + "/config_json/" + file, dir / "config.json");
  try {
    (void)ssmtune::load_model_config(dir.path().string());
  } catch (const ssmtune::Error& e) {
    return e.what();
  }
  FAIL("the config loaded");
  return "";
}

}  // namespace

TEST_CASE("a check on a defaulted field of config.json that is absent is an Error naming it",
          "[model][config][fuzz]") {
  // fuzz_config_json: a Jamba config without num_attention_heads (default 32) and hidden_size
  // 61 failed the divisor check, whose message read the absent field: an uncaught
  // nlohmann::json out_of_range instead of ssmtune::Error.
  const std::string what = config_json_error("jamba-absent-num-attention-heads.json");
  CHECK(what.find("config.json: field \"num_attention_heads\"") != std::string::npos);
  CHECK(what.find("a divisor of hidden_size = 61") != std::string::npos);
  CHECK(what.find("the field is absent") != std::string::npos);
}

TEST_CASE("a Mamba-2 expand too large for int(expand * hidden_size) is an Error naming it",
          "[model][config][fuzz]") {
  // fuzz_config_json: a Mamba-2 config.json with expand 2.3e90 made int(expand * hidden_size)
  // convert a double past int64's range (undefined behaviour, UBSan's report) before the range
  // check on expand ran; Mamba and Jamba checked expand first already.
  const std::string what = config_json_error("mamba2-expand-past-int64.json");
  CHECK(what.find("config.json: field \"expand\"") != std::string::npos);
  CHECK(what.find("a positive number no larger than 64") != std::string::npos);
}

TEST_CASE("a SentencePiece model whose trie builder throws is an Error naming the file",
          "[tokenizer][fuzz]") {
  // fuzz_sentencepiece: a 32-byte tokenizer.model with a piece starting with a NUL byte, which
  // libsentencepiece's Darts builder reads as an empty key and throws its own exception for,
  // not an ssmtune::Error. The saved input is tokenizer.model, the separator, then more files.
  std::ifstream in(kRegressions + "/sentencepiece/piece-starting-with-nul.bin", std::ios::binary);
  const std::string input((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t model_end = input.find("\n--ssmtune-fuzz-file--\n");
  REQUIRE(model_end == 32);
  ssmtune::test::TempDir dir;
  const std::filesystem::path model = dir / "tokenizer.model";
  std::ofstream(model, std::ios::binary) << input.substr(0, model_end);
  try {
    (void)ssmtune::SentencePieceTokenizer(model);
    FAIL("the model loaded");
  } catch (const ssmtune::Error& e) {
    const std::string what = e.what();
    CHECK(what.find(model.string() + ": not a valid SentencePiece model") != std::string::npos);
  }
}
