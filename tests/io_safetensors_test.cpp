// safetensors reader and writer: round trips of every dtype, zero-copy views, and every check of
// docs/models.md "safetensors" on hostile files (each error names the file, tensor and field).
#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "io/safetensors.h"
#include "io_test_util.h"

using namespace ssmtune;
using ssmtune::test::read_bytes;
using ssmtune::test::require_error;
using ssmtune::test::safetensors_bytes;
using ssmtune::test::TempDir;
using ssmtune::test::u64_le;
using ssmtune::test::write_bytes;

namespace {

// A tensor of `dtype` whose bytes are 1, 2, 3, ... (any bit pattern is a valid element).
Tensor patterned(const Shape& shape, DType dtype, unsigned seed) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<unsigned char*>(t.raw());
  for (std::size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(seed + 7 * i);
  if (dtype == DType::BOOL)
    for (std::size_t i = 0; i < t.nbytes(); ++i) p[i] &= 1;
  return t;
}

std::vector<NamedTensor> every_dtype() {
  return {
      {"f32", patterned({2, 3}, DType::F32, 1)},
      {"f64", patterned({3}, DType::F64, 2)},
      {"f16", patterned({2, 2}, DType::F16, 3)},
      {"bf16", patterned({5}, DType::BF16, 4)},
      {"i64", patterned({2}, DType::I64, 5)},
      {"i32", patterned({1, 3}, DType::I32, 6)},
      {"u8", patterned({7}, DType::U8, 7)},
      {"bool", patterned({3}, DType::BOOL, 8)},
      {"scalar", patterned({}, DType::F32, 9)},
      {"empty", patterned({0, 4}, DType::F32, 0)},
      {"empty_bf16", patterned({2, 0}, DType::BF16, 0)},
  };
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// `header` (JSON text) and `data` written as x.safetensors in `dir`; returns its path.
std::filesystem::path raw_file(const TempDir& dir, const std::string& header,
                               const std::string& data = "") {
  const auto path = dir / "x.safetensors";
  write_bytes(path, safetensors_bytes(header, data));
  return path;
}

void require_open_error(const std::filesystem::path& path,
                        std::initializer_list<std::string> fragments) {
  require_error([&] { SafetensorsFile::open(path); }, fragments);
}

}  // namespace

TEST_CASE("safetensors round trip keeps every dtype, scalars and empty tensors",
          "[io][safetensors]") {
  TempDir dir;
  const auto tensors = every_dtype();
  write_safetensors(dir / "m.safetensors", tensors, {{"note", "hi"}});
  const auto f = SafetensorsFile::open(dir / "m.safetensors");
  REQUIRE(f.entries().size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    INFO(name);
    REQUIRE(f.contains(name));
    CHECK(same_bytes(f.tensor(name), t));
    // Reference writer order: every offset is aligned for its dtype.
    CHECK(f.entry(name).begin % dtype_size(t.dtype()) == 0);
  }
  CHECK(f.tensor("scalar").ndim() == 0);
  CHECK(f.tensor("scalar").numel() == 1);
  CHECK(f.tensor("empty").numel() == 0);
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}});
  // Data order: dtype size descending, then name (safetensors' own writer).
  std::vector<std::string> order;
  for (const auto& e : f.entries())
    if (e.n_bytes()) order.push_back(e.name);
  CHECK(order == std::vector<std::string>{"f64", "i64", "f32", "i32", "scalar", "bf16", "f16",
                                          "bool", "u8"});
  // The header is space-padded so the data area starts 8-aligned.
  const std::string bytes = read_bytes(dir / "m.safetensors");
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);
  CHECK(bytes[8] == '{');
}

TEST_CASE("safetensors tensors view the mapping without copying and outlive the file object",
          "[io][safetensors]") {
  TempDir dir;
  const Tensor w = patterned({4, 4}, DType::F32, 3);
  write_safetensors(dir / "m.safetensors", {{"w", w}});
  Tensor view;
  {
    const auto f = SafetensorsFile::open(dir / "m.safetensors");
    view = f.tensor("w");
    CHECK(f.tensor("w").raw() == view.raw());  // same bytes of the mapping, not a copy
  }
  CHECK(same_bytes(view, w));  // the view keeps the mapping alive
  // Writing through the view is private (copy-on-write): the file does not change.
  view.data<float>()[0] = 123.0f;
  const auto again = SafetensorsFile::open(dir / "m.safetensors");
  CHECK(same_bytes(again.tensor("w"), w));
}

TEST_CASE("a safetensors tensor at an unaligned offset is copied, not misread",
          "[io][safetensors]") {
  TempDir dir;
  const float values[2] = {1.5f, -2.25f};
  std::string data = "\x07";
  data.append(reinterpret_cast<const char*>(values), 8);
  const auto path = raw_file(dir,
                             R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("w":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})",
                             data);
  const auto f = SafetensorsFile::open(path);
  const Tensor w = f.tensor("w");
  CHECK(reinterpret_cast<std::uintptr_t>(w.raw()) % alignof(float) == 0);
  CHECK(w.data<float>()[0] == 1.5f);
  CHECK(w.data<float>()[1] == -2.25f);
  CHECK(f.tensor("b").data<std::uint8_t>()[0] == 7);
  require_error([&] { f.tensor("nope"); }, {"x.safetensors: no tensor \"nope\""});
}

TEST_CASE("safetensors: a file too short, or a header length past the end or absurd, is refused",
          "[io][safetensors]") {
  TempDir dir;
  const auto path = dir / "x.safetensors";
  write_bytes(path, "abcde");
  require_open_error(path,
                     {path.string() + ": file is 5 bytes, too short for the 8-byte header length"});
  write_bytes(path, "");
  require_open_error(path, {"file is 0 bytes"});
  write_bytes(path, u64_le(100) + "{}");
  require_open_error(
      path, {path.string() + ": header length 100 runs past the end of the file (10 bytes)"});
  write_bytes(path, u64_le(std::uint64_t(1) << 63) + "{}");
  require_open_error(path,
                     {"header length 9223372036854775808 is more than the 100000000-byte limit"});
  write_bytes(path, u64_le(~std::uint64_t(0)) + "{}");
  require_open_error(path, {"header length 18446744073709551615 is more than"});
  write_bytes(path, u64_le(0));
  require_open_error(path,
                     {"header must be a JSON object starting with '{', found an empty header"});
  require_open_error(dir.path(), {"not a regular file"});
  require_open_error(dir / "missing.safetensors", {"missing.safetensors: cannot open"});
}

TEST_CASE("safetensors: a header that is not a JSON object is refused", "[io][safetensors]") {
  TempDir dir;
  require_open_error(
      raw_file(dir, "[1, 2]"),
      {"x.safetensors: header must be a JSON object starting with '{', found \"[1, 2]"});
  require_open_error(raw_file(dir, R"({"w": )"), {"x.safetensors: header:1:", "invalid JSON"});
  require_open_error(raw_file(dir, "{\"\xff\": 1}"), {"x.safetensors: header:1:", "invalid JSON"});
  require_open_error(raw_file(dir, "{} {}"), {"x.safetensors: header:1:4: invalid JSON"});
  require_open_error(
      raw_file(dir, R"({"w": 3})"),
      {"tensor \"w\": expected an object with dtype, shape and data_offsets, got number 3"});
  require_open_error(
      raw_file(dir, R"({"w": {"dtype": "F32", "shape": [[[[1]]]], "data_offsets": [0, 4]}})"),
      {"x.safetensors: header: JSON nested deeper than 4 levels"});
  // An empty object is a valid file with no tensors.
  CHECK(SafetensorsFile::open(raw_file(dir, "{}")).entries().empty());
}

TEST_CASE("safetensors: a header padded with NUL bytes instead of spaces is refused",
          "[io][safetensors]") {
  // nlohmann's parser stops at a NUL as if the input ended there; the format pads with spaces.
  TempDir dir;
  const auto path = dir / "x.safetensors";
  const std::string json = R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";  // 53 bytes
  write_bytes(path, u64_le(56) + json + std::string(3, '\0') + "\x07");
  require_open_error(path, {path.string() + ": header: byte 61 of the file is a NUL (0x00); "
                                            "expected JSON padded with spaces (0x20)"});
  // NUL and then anything: still refused.
  write_bytes(path, u64_le(61) + json + std::string(1, '\0') + "garbage\x07");
  require_open_error(path, {"header: byte 61 of the file is a NUL"});
  // The same header padded with spaces loads.
  write_bytes(path, u64_le(56) + json + "   \x07");
  CHECK(SafetensorsFile::open(path).tensor("w").data<std::uint8_t>()[0] == 7);
}

TEST_CASE("safetensors: entry fields are checked by name, type and value", "[io][safetensors]") {
  TempDir dir;
  const std::string four(4, '\0');
  auto entry = [](const std::string& fields) { return "{\"w\": {" + fields + "}}"; };
  require_open_error(raw_file(dir, entry(R"("dtype":"F7","shape":[1],"data_offsets":[0,4])"), four),
                     {"x.safetensors: tensor \"w\": dtype: unknown dtype \"F7\""});
  require_open_error(raw_file(dir, entry(R"("dtype":"I8","shape":[4],"data_offsets":[0,4])"), four),
                     {"tensor \"w\": dtype \"I8\" is not supported by ssmtune"});
  require_open_error(raw_file(dir, entry(R"("dtype":5,"shape":[1],"data_offsets":[0,4])"), four),
                     {"tensor \"w\": dtype: expected a string, got number 5"});
  require_open_error(
      raw_file(dir, entry(R"("dtype":"F32","shape":[2,-1],"data_offsets":[0,4])"), four),
      {"tensor \"w\": shape[1]: expected a non-negative integer, got number -1"});
  require_open_error(
      raw_file(dir, entry(R"("dtype":"F32","shape":[1.0],"data_offsets":[0,4])"), four),
      {"tensor \"w\": shape[0]: expected a non-negative integer, got number 1.0"});
  require_open_error(
      raw_file(dir, entry(R"("dtype":"F32","shape":4,"data_offsets":[0,4])"), four),
      {"tensor \"w\": shape: expected an array of non-negative integers, got number 4"});
  require_open_error(
      raw_file(dir, entry(R"("dtype":"F32","shape":[1],"data_offsets":[0])"), four),
      {"tensor \"w\": data_offsets: expected [begin, end], got an array of 1 elements"});
  require_open_error(
      raw_file(dir, entry(R"("dtype":"F32","shape":[1],"data_offsets":["0","4"])"), four),
      {"tensor \"w\": data_offsets[0]: expected a non-negative integer, got string \"0\""});
  require_open_error(
      raw_file(dir, entry(R"("dtype":"F32","shape":[0],"data_offsets":[4,0])"), four),
      {"tensor \"w\": data_offsets [4, 0]: begin is after end"});
  require_open_error(raw_file(dir, entry(R"("dtype":"F32","shape":[1])"), four),
                     {"tensor \"w\": missing field \"data_offsets\""});
  require_open_error(
      raw_file(dir, entry(R"("dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1)"), four),
      {"tensor \"w\": unexpected field \"x\""});
  require_open_error(
      raw_file(
          dir,
          entry(R"("dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4])"),
          four),
      {"tensor \"w\": shape [4294967296,4294967296,4294967296] x F32 has more bytes than fit in 64 "
       "bits"});
}

TEST_CASE("safetensors: shape x dtype must equal the offset span", "[io][safetensors]") {
  TempDir dir;
  require_open_error(
      raw_file(dir, R"({"x_proj.weight":{"dtype":"F32","shape":[3,4],"data_offsets":[0,40]}})",
               std::string(40, '\0')),
      {"x.safetensors: tensor \"x_proj.weight\": shape (3, 4) x F32 = 48 bytes, but data_offsets "
       "[0, 40] span 40 bytes"});
}

TEST_CASE("safetensors: offsets must tile the data area exactly", "[io][safetensors]") {
  TempDir dir;
  const std::string t8 = R"({"dtype":"F32","shape":[2],"data_offsets":)";
  require_open_error(
      raw_file(dir, "{\"w\":" + t8 + "[0,8]}}", std::string(4, '\0')),
      {"tensor \"w\": data_offsets [0, 8] run past the end of the data area (4 bytes)"});
  require_open_error(
      raw_file(dir, "{\"a\":" + t8 + "[0,8]},\"b\":" + t8 + "[4,12]}}", std::string(12, '\0')),
      {"x.safetensors: tensor \"b\" (bytes [4, 12]) overlaps tensor \"a\" (bytes [0, 8])"});
  require_open_error(
      raw_file(dir, "{\"a\":" + t8 + "[0,8]},\"b\":" + t8 + "[12,20]}}", std::string(20, '\0')),
      {"x.safetensors: bytes [8, 12] of the data area belong to no tensor (gap before tensor "
       "\"b\")"});
  require_open_error(raw_file(dir, "{\"b\":" + t8 + "[4,12]}}", std::string(12, '\0')),
                     {"bytes [0, 4] of the data area belong to no tensor"});
  require_open_error(raw_file(dir, "{\"a\":" + t8 + "[0,8]}}", std::string(9, '\0')),
                     {"x.safetensors: the data area is 9 bytes but the tensors cover only the "
                      "first 8 (trailing bytes)"});
  require_open_error(raw_file(dir, "{}", "x"),
                     {"data area is 1 bytes but the tensors cover only the first 0"});
  // Empty tensors take no bytes; they may sit at any tiling boundary.
  const auto ok = raw_file(
      dir,
      "{\"a\":" + t8 + "[0,8]},\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}",
      std::string(8, '\0'));
  CHECK(SafetensorsFile::open(ok).tensor("e").numel() == 0);
}

TEST_CASE("safetensors: duplicate tensor names and bad __metadata__ are refused",
          "[io][safetensors]") {
  TempDir dir;
  const std::string t = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  require_open_error(raw_file(dir, "{\"w\":" + t + ",\"w\":" + t + "}", std::string(4, '\0')),
                     {"x.safetensors: header: duplicate key \"w\" in the top-level object"});
  require_open_error(
      raw_file(dir, R"({"__metadata__": {"format": 1}})"),
      {"x.safetensors: \"__metadata__\": key \"format\": expected a string, got number 1"});
  require_open_error(raw_file(dir, R"({"__metadata__": ["pt"]})"),
                     {"\"__metadata__\": expected an object of strings, got an array"});
  CHECK(SafetensorsFile::open(raw_file(dir, R"({"__metadata__": null})")).metadata().empty());
}

TEST_CASE("safetensors: every truncation of a valid file is an error, never a crash",
          "[io][safetensors]") {
  TempDir dir;
  write_safetensors(dir / "ok.safetensors", every_dtype());
  const std::string bytes = read_bytes(dir / "ok.safetensors");
  const auto path = dir / "t.safetensors";
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    write_bytes(path, bytes.substr(0, n));
    INFO("truncated to " << n << " of " << bytes.size() << " bytes");
    require_open_error(path, {path.string() + ": "});
  }
  write_bytes(path, bytes + " ");
  require_open_error(path, {"trailing bytes"});
}

TEST_CASE("safetensors: random corruption either loads or throws ssmtune::Error",
          "[io][safetensors]") {
  TempDir dir;
  write_safetensors(dir / "ok.safetensors", every_dtype(), {{"k", "v"}});
  const std::string valid = read_bytes(dir / "ok.safetensors");
  std::uint64_t header_end = 0;
  std::memcpy(&header_end, valid.data(), 8);
  header_end += 8;
  std::mt19937_64 rng(20240611);  // fixed: the same 2000 files on every run
  const auto path = dir / "fuzz.safetensors";
  int n_loaded = 0, n_refused = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = valid;
    const int kind = int(rng() % 4);
    if (kind == 0) {  // truncate
      bytes.resize(rng() % bytes.size());
    } else {  // flip 1..4 bytes, mostly in the length prefix and header where parsing happens
      const int n_flips = 1 + int(rng() % 4);
      for (int k = 0; k < n_flips; ++k) {
        const std::size_t span = kind == 3 ? bytes.size() : header_end;
        bytes[rng() % span] =
            static_cast<char>(kind == 1 ? rng() % 256 : "{}[]\":,0123456789-. eE"[rng() % 22]);
      }
    }
    write_bytes(path, bytes);
    INFO("iteration " << iter);
    try {
      const auto f = SafetensorsFile::open(path);
      std::size_t checksum = 0;
      for (const auto& e : f.entries()) {
        const Tensor t = f.tensor(e.name);
        for (std::size_t i = 0; i < t.nbytes(); ++i)
          checksum += static_cast<const unsigned char*>(t.raw())[i];
      }
      (void)checksum;
      ++n_loaded;
    } catch (const ssmtune::Error&) {
      ++n_refused;
    }
  }
  INFO("loaded " << n_loaded << ", refused " << n_refused);
  CHECK(n_loaded > 0);  // data-byte flips stay valid files
  CHECK(n_refused > 1000);
}

TEST_CASE("write_safetensors refuses bad input and leaves the old file intact",
          "[io][safetensors]") {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  const Tensor t = patterned({2}, DType::F32, 1);
  write_safetensors(path, {{"w", t}});
  const std::string before = read_bytes(path);
  require_error(
      [&] {
        write_safetensors(path, {{"w", t}, {"w", t}});
      },
      {path.string() + ": tensor \"w\" given twice"});
  require_error(
      [&] {
        write_safetensors(path, {{"__metadata__", t}});
      },
      {"\"__metadata__\" is reserved"});
  require_error([&] { write_safetensors(path, {{"u", Tensor()}}); }, {"tensor \"u\" is undefined"});
  require_error([&] { write_safetensors(path, {{"bad\xff", t}}); }, {"not valid UTF-8"});
  require_error(
      [&] {
        write_safetensors(dir / "no" / "m.safetensors", {{"w", t}});
      },
      {"cannot create temporary file"});
  CHECK(read_bytes(path) == before);
  std::size_t n_files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++n_files;
  CHECK(n_files == 1);  // no temporary left behind
}
