// Model directories: model.safetensors or shards + model.safetensors.index.json, and the
// checks that keep a hostile index inside the directory and consistent with its shards.
#include <catch2/catch.hpp>

#include "io/safetensors_checkpoint.h"
#include "io_test_util.h"

using namespace ssmtune;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;

namespace {

Tensor filled(const Shape& shape, float v) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = v + float(i);
  return t;
}

// Two shards: a.safetensors {x, y}, b.safetensors {z}, and an index naming them.
void write_sharded(const TempDir& dir, const std::string& weight_map) {
  write_safetensors(dir / "a.safetensors", {{"x", filled({2}, 1)}, {"y", filled({3}, 10)}});
  write_safetensors(dir / "b.safetensors", {{"z", filled({2, 2}, 20)}});
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata": {"total_size": 36}, "weight_map": )" + weight_map + "}");
}

const std::string kGoodMap =
    R"({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"})";

}  // namespace

TEST_CASE("a single-file checkpoint lists its tensors", "[io][checkpoint]") {
  TempDir dir;
  write_safetensors(dir / "model.safetensors", {{"b", filled({2}, 1)}, {"a", filled({1}, 5)}});
  const auto ckpt = SafetensorsCheckpoint::open(dir.path());
  CHECK(!ckpt.sharded());
  CHECK(ckpt.names() == std::vector<std::string>{"a", "b"});
  CHECK(ckpt.tensor("a").data<float>()[0] == 5.0f);
  require_error([&] { ckpt.tensor("c"); }, {dir.path().string() + ": no tensor \"c\""});
}

TEST_CASE("a sharded checkpoint reads each tensor from the shard the index names",
          "[io][checkpoint]") {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  const auto ckpt = SafetensorsCheckpoint::open(dir.path());
  CHECK(ckpt.sharded());
  CHECK(ckpt.files().size() == 2);
  CHECK(ckpt.names() == std::vector<std::string>{"x", "y", "z"});
  CHECK(ckpt.file_of("z").path() == dir / "b.safetensors");
  CHECK(ckpt.tensor("z").data<float>()[3] == 23.0f);
  CHECK(ckpt.entry("y").shape == Shape{3});
}

TEST_CASE("a directory without weights is an error naming it", "[io][checkpoint]") {
  TempDir dir;
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {dir.path().string() + ": no model.safetensors or model.safetensors.index.json"});
  write_bytes(dir / "pytorch_model.bin", "pickle");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"pytorch_model.bin is a pickle"});
  require_error([&] { SafetensorsCheckpoint::open(dir / "nowhere"); },
                {"nowhere: not a directory"});
}

TEST_CASE("shard names that leave the directory are refused", "[io][checkpoint]") {
  TempDir dir;
  for (const std::string shard :
       {"../a.safetensors", "/etc/passwd", "sub/a.safetensors", "..", "."}) {
    INFO(shard);
    write_sharded(dir, R"({"x": ")" + shard + R"(", "y": "a.safetensors", "z": "b.safetensors"})");
    require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                  {"model.safetensors.index.json: weight_map[\"x\"]: shard \"" + shard +
                   "\" must be a plain file name in the same directory"});
  }
}

TEST_CASE("sharded checkpoints: missing shards and misplaced tensors are errors",
          "[io][checkpoint]") {
  TempDir dir;
  write_sharded(dir, R"({"x": "a.safetensors", "y": "a.safetensors", "z": "c.safetensors"})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"model.safetensors.index.json: shard \"c.safetensors\" (holding tensor \"z\") "
                 "does not exist"});
  write_sharded(dir, R"({"x": "a.safetensors", "y": "b.safetensors", "z": "b.safetensors"})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"tensor \"y\" is mapped to shard \"b.safetensors\", which has no such tensor"});
  write_sharded(dir, R"({"x": "a.safetensors", "z": "b.safetensors"})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"a.safetensors: tensor \"y\" is not listed in model.safetensors.index.json"});
  write_sharded(dir, R"({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors", )"
                     R"("w": "b.safetensors"})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"tensor \"w\" is mapped to shard \"b.safetensors\", which has no such tensor"});
}

TEST_CASE("sharded checkpoints: a malformed index is an error naming the field",
          "[io][checkpoint]") {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  const auto index = dir / "model.safetensors.index.json";
  write_bytes(index, R"({"metadata": {}})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {index.string() + ": missing field \"weight_map\""});
  write_bytes(index, R"({"weight_map": ["a.safetensors"]})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"field \"weight_map\": expected an object {tensor: shard file}, got an array"});
  write_bytes(index, R"({"weight_map": {"x": 3}})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"weight_map[\"x\"]: expected a shard file name, got number 3"});
  write_bytes(index, R"({"metadata": 1, "weight_map": {}})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"field \"metadata\": expected an object, got number 1"});
  write_bytes(index, R"({"weight_map": {"x": "a.safetensors", "x": "b.safetensors"}})");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); },
                {"duplicate key \"x\" in object \"weight_map\""});
  // A shard that is itself corrupt fails the single-file checks, naming the shard.
  write_sharded(dir, kGoodMap);
  write_bytes(dir / "b.safetensors", "garbage!garbage");
  require_error([&] { SafetensorsCheckpoint::open(dir.path()); }, {"b.safetensors: header length"});
}
