#include "fuzz_files.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace ssmtune::fuzz {

namespace fs = std::filesystem;

std::vector<std::string_view> split_files(const std::uint8_t* data, std::size_t size,
                                          std::size_t max_parts) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const std::size_t at = rest.find(kFileSeparator);
    if (at == std::string_view::npos) break;
    parts.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kFileSeparator.size());
  }
  parts.push_back(rest);
  return parts;
}

std::string join_files(const std::vector<std::string>& parts) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i) out += kFileSeparator;
    out += parts[i];
  }
  return out;
}

ScratchDir::ScratchDir() {
  std::string tmpl = (fs::temp_directory_path() / "ssmtune-fuzz-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed under " + tmpl);
  path_ = tmpl;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void ScratchDir::write(const std::vector<std::string>& names,
                       const std::vector<std::string_view>& parts) {
  for (const auto& entry : fs::directory_iterator(path_)) fs::remove_all(entry.path());
  for (std::size_t i = 0; i < names.size() && i < parts.size(); ++i) {
    if (parts[i].empty()) continue;
    std::ofstream out(path_ / names[i], std::ios::binary);
    out.write(parts[i].data(), std::streamsize(parts[i].size()));
    if (!out) throw std::runtime_error("cannot write " + (path_ / names[i]).string());
  }
}

fs::path fixtures_dir() {
  if (const char* env = std::getenv("SSMTUNE_FIXTURES_DIR")) return env;
  return SSMTUNE_FIXTURES_DIR;
}

}  // namespace ssmtune::fuzz
