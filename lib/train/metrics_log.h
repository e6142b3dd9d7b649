// metrics.jsonl: one JSON object a line, appended and flushed as training goes, so a crash
// loses at most the line being written. On resume, lines past the checkpoint's step are
// dropped (they will be written again by the resumed run), so the file reads as one run.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace ssmtune {

class MetricsLog {
 public:
  // Opens `path` for appending; with keep_up_to_step >= 0 first rewrites it (atomically)
  // keeping only complete lines whose "step" is <= keep_up_to_step. Throws Error naming the
  // file if it cannot be written.
  MetricsLog(std::filesystem::path path, std::int64_t keep_up_to_step = -1);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void write(const nlohmann::json& record);  // one line, flushed

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace ssmtune
