// Helpers for the io/ and model-loading tests: scratch directories, raw file bytes, and
// checks that an ssmtune::Error carries the expected fragments of its message.
#pragma once

#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <cstring>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "core/error.h"

namespace ssmtune::test {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<unsigned> counter{0};
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("ssmtune-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
             std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline std::string u64_le(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a header text and data bytes; the header is space-padded to a
// multiple of 8 like the reference writer's.
inline std::string safetensors_bytes(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return u64_le(header.size()) + header + data;
}

// Overwrites element `index` of the F32 tensor `name` of the safetensors file at `path` with
// `value`: how tests make files holding NaN or Inf, which write_safetensors refuses to write.
inline void poke_f32(const std::filesystem::path& path, const std::string& name,
                     std::int64_t index, float value) {
  std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() >= 8);
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | std::uint8_t(bytes[i]);
  const auto header = nlohmann::json::parse(bytes.substr(8, header_len));
  REQUIRE(header.contains(name));
  REQUIRE(header[name]["dtype"] == "F32");
  const std::size_t at =
      8 + header_len + header[name]["data_offsets"][0].get<std::size_t>() + 4 * std::size_t(index);
  REQUIRE(at + 4 <= bytes.size());
  std::memcpy(bytes.data() + at, &value, 4);
  write_bytes(path, bytes);
}

// Runs `fn`; it must throw ssmtune::Error whose message contains every fragment.
inline void require_error(const std::function<void()>& fn,
                          std::initializer_list<std::string> fragments) {
  try {
    fn();
  } catch (const ssmtune::Error& e) {
    const std::string msg = e.what();
    INFO("error message: " << msg);
    for (const auto& f : fragments) CHECK_THAT(msg, Catch::Contains(f));
    CHECK(msg.find('\n') == std::string::npos);  // one line, as main prints it
    return;
  }
  FAIL("expected an ssmtune::Error containing \"" << *fragments.begin() << "\"");
}

}  // namespace ssmtune::test
