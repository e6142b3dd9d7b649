// JSON input files: parse errors with line:column, duplicate keys, nesting and size limits.
#include <catch2/catch.hpp>

#include "io/json_fields.h"
#include "io/json_file.h"
#include "io_test_util.h"

using namespace ssmtune;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;

TEST_CASE("a JSON syntax error names the source, line and column", "[io][json]") {
  // The stray '}' is line 3, column 3.
  require_error([] { parse_json_text("{\n  \"a\": 1,\n  }", "cfg.json"); },
                {"cfg.json:3:3: invalid JSON", "expected string literal"});
  require_error([] { parse_json_text("", "empty.json"); }, {"empty.json:1:1: invalid JSON"});
  require_error([] { parse_json_text("{\"a\": \"\xff\"}", "bad-utf8.json"); },
                {"bad-utf8.json:1:", "invalid JSON", "UTF-8"});
}

TEST_CASE("a NUL byte anywhere in JSON text is an error with line and column", "[io][json]") {
  // nlohmann's parser would take the NUL for the end of the input and accept what came before.
  using namespace std::string_literals;
  require_error([] { parse_json_text("{\"a\": 1}\n\0\0\0"s, "nul.json"); },
                {"nul.json:2:1: invalid JSON: a NUL byte (0x00)"});
  require_error([] { parse_json_text("{\"a\": 1}\0{\"b\": 2}"s, "nul.json"); },
                {"nul.json:1:9: invalid JSON: a NUL byte"});
  require_error([] { parse_json_text("{\"a\": \"x\0y\"}"s, "nul.json"); },
                {"nul.json:1:9: invalid JSON: a NUL byte"});
}

TEST_CASE("a number too large for a double is an error with line and column", "[io][json]") {
  // nlohmann reports this one (out_of_range.406) without a position; the column is the number's.
  require_error([] { parse_json_text("{\n  \"lr\": 1e999\n}", "cfg.json"); },
                {"cfg.json:2:9: invalid JSON: number overflow parsing '1e999'"});
  require_error([] { parse_json_text("[1, -2e400]", "a.json"); },
                {"a.json:1:5: invalid JSON: number overflow parsing '-2e400'"});
  // An integer past 64 bits is a double, not an error (as in nlohmann and Python).
  CHECK(parse_json_text("[123456789012345678901234567890]", "a.json")[0].is_number_float());
}

TEST_CASE("duplicate JSON keys are errors that name the key and its object", "[io][json]") {
  require_error([] { parse_json_text(R"({"lr": 1, "lr": 2})", "c.json"); },
                {"c.json: duplicate key \"lr\" in the top-level object"});
  require_error([] { parse_json_text(R"({"opt": {"b": 1, "b": 2}})", "c.json"); },
                {"duplicate key \"b\" in object \"opt\""});
  require_error([] { parse_json_text(R"({"x": [{}, {"k": 1, "k": 1}]})", "c.json"); },
                {"duplicate key \"k\" in object \"x\"[1]"});
  // The same key in sibling objects is fine.
  const auto j =
      parse_json_text(R"({"a": {"k": 1}, "b": {"k": 2}, "c": [{"k": 3}, {"k": 4}]})", "c.json");
  CHECK(j["c"][1]["k"] == 4);
}

TEST_CASE("JSON nested past the depth limit is an error, not a stack overflow", "[io][json]") {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  require_error([&] { parse_json_text(deep, "deep.json"); },
                {"deep.json: JSON nested deeper than 64"});
  CHECK_NOTHROW(parse_json_text(std::string(64, '[') + std::string(64, ']'), "ok.json"));
}

TEST_CASE("read_json_file refuses missing, oversized and non-regular files", "[io][json]") {
  TempDir dir;
  require_error([&] { read_json_file(dir / "nope.json"); }, {"nope.json: cannot open"});
  require_error([&] { read_json_file(dir.path()); }, {"not a regular file"});
  write_bytes(dir / "big.json", "[" + std::string(2000, ' ') + "]");
  require_error([&] { read_json_file(dir / "big.json", 1000); },
                {"big.json: file is 2002 bytes, more than the 1000-byte limit"});
  write_bytes(dir / "ok.json", "{\"a\": [1, 2]}\n");
  CHECK(read_json_file(dir / "ok.json")["a"][1] == 2);
  write_bytes(dir / "bad.json", "{\"a\": 1,,}");
  require_error([&] { read_json_file(dir / "bad.json"); }, {"bad.json:1:9: invalid JSON"});
}

TEST_CASE("values in messages are described by type and cut and escaped", "[io][json]") {
  CHECK(describe_json_value(nlohmann::json("16")) == "string \"16\"");
  CHECK(describe_json_value(nlohmann::json(-3)) == "number -3");
  CHECK(describe_json_value(nlohmann::json(1.5)) == "number 1.5");
  CHECK(describe_json_value(nlohmann::json(true)) == "boolean true");
  CHECK(describe_json_value(nlohmann::json(nullptr)) == "null");
  CHECK(describe_json_value(nlohmann::json::array()) == "an array");
  CHECK(quote_str("a\nb\"c") == "\"a\\x0ab\\\"c\"");
  CHECK(quote_str(std::string(500, 'x'), 10) == "\"xxxxxxxxxx...\"");
}

TEST_CASE("JsonFields reads typed fields and names file and field in errors", "[io][json]") {
  const auto j = nlohmann::json::parse(
      R"({"n": 16, "s": "16", "f": 16.0, "b": true, "neg": -1, "big": 18446744073709551615,
          "sub": {"k": "x"}})");
  const JsonFields f(j, "m/config.json");
  CHECK(f.get_int("n", 1, 100) == 16);
  CHECK(!f.get_int("absent", 1, 100));
  require_error([&] { f.get_int("s", 1, 100); },
                {"m/config.json: field \"s\": expected a positive integer, got string \"16\""});
  require_error([&] { f.get_int("f", 1, 100); },
                {"field \"f\": expected a positive integer, got number 16.0"});
  require_error([&] { f.get_int("n", 1, 8); },
                {"field \"n\": expected a positive integer no larger than 8, got number 16"});
  require_error([&] { f.get_int("neg", 0, 8); },
                {"expected a non-negative integer no larger than 8, got number -1"});
  require_error([&] { f.get_int("big", 1, 1000); },
                {"field \"big\"", "got number 18446744073709551615"});
  require_error([&] { f.get_bool("n"); }, {"field \"n\": expected true or false, got number 16"});
  require_error(
      [&] {
        f.get_choice("s", {"silu", "swish"});
      },
      {"field \"s\": expected \"silu\" or \"swish\", got string \"16\""});
  const auto sub = f.get_object("sub");
  REQUIRE(sub);
  require_error([&] { sub->get_int("k", 1, 4); }, {"field \"sub.k\": expected a positive integer"});
  require_error([&] { f.get_object("n"); }, {"field \"n\": expected an object, got number 16"});
  require_error([] { JsonFields(nlohmann::json::array(), "x.json"); },
                {"x.json: expected a JSON object, got an array"});
}
