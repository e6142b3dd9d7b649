// What the fuzz targets share (docs/reliability.md "Fuzzing"): a simple framing that lets one
// fuzz input stand for several files (an adapter directory, a checkpoint), so libFuzzer mutates
// each file's bytes, and a scratch directory the readers, which take paths, read them from.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace ssmtune::fuzz {

// Separates the files of one input. Text, so corpus files stay readable; long enough that no
// seed file holds it by chance (tests/fuzz/*.dict lists it, so mutations keep it too).
inline constexpr std::string_view kFileSeparator = "\n--ssmtune-fuzz-file--\n";

// The parts of `data` between separators, at most max_parts (the last one keeps the rest).
std::vector<std::string_view> split_files(const std::uint8_t* data, std::size_t size,
                                          std::size_t max_parts);
// The inverse, for the seed maker.
std::string join_files(const std::vector<std::string>& parts);

// One directory per process under $TMPDIR (the fuzzer runs one input at a time), emptied
// before each input is written into it. Removed when the process exits normally.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::filesystem::path& path() const { return path_; }
  // Empties the directory, then writes each non-empty part under its name: an empty part
  // stands for an absent file, so the fuzzer can also try directories without it.
  void write(const std::vector<std::string>& names, const std::vector<std::string_view>& parts);

 private:
  std::filesystem::path path_;
};

// The fixtures the targets read beside the fuzzed files (base models, the tokenizer), found
// from SSMTUNE_FIXTURES_DIR in the environment or the source tree's path compiled in.
std::filesystem::path fixtures_dir();

}  // namespace ssmtune::fuzz
