// Fuzz target: an experiment config and its `--set` overrides, through load_experiment_config
// as `ssmtune train` and `ssmtune eval` call it, then the config hash --resume compares.
// Input: config JSON [separator override]... (fuzz_files.h; each override is `key.path=value`).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz_files.h"
#include "train/experiment_config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ssmtune::fuzz::ScratchDir dir;
  const auto parts = ssmtune::fuzz::split_files(data, size, 9);
  dir.write({"config.json"}, parts);
  const std::vector<std::string> overrides(parts.begin() + 1, parts.end());
  try {
    const auto cfg =
        ssmtune::load_experiment_config((dir.path() / "config.json").string(), overrides);
    (void)ssmtune::experiment_config_hash(cfg);
  } catch (const ssmtune::Error&) {  // the expected refusal (UsageError is one)
  }
  return 0;
}
